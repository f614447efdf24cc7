//! FHIR search over the Parquet lake with DataFusion.
