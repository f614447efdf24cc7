//! End-to-end tests of the `fhirlake` binary: real files in, a real lake, a real server on a
//! real port, real signed tokens.

mod accounting;
mod common;
mod conformance;
mod delta;
mod direct_path;
mod e2e;
mod failures;
mod formulary_api;
mod history;
mod ingest_run;
mod nightly;
mod search_params;
