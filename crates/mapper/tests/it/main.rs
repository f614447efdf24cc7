//! Integration tests of the mapper crate.

mod formulary;
mod partd;
