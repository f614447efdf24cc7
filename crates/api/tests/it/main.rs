//! Integration tests of the api crate.

mod smart;
