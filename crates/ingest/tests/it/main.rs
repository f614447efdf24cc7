//! Integration tests of the ingest crate, one module per format.

mod formulary;
mod partd;
mod x12;
