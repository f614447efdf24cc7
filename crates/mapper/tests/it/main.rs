//! Integration tests of the mapper crate.

mod c4bb;
mod formulary;
mod partd;
