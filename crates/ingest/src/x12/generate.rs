//! placeholder
use std::io::{self, Write};
/// Generate.
pub fn generate_837(
    _w: &mut impl Write,
    _professional: bool,
    _claims: usize,
    _seed: u64,
) -> io::Result<u64> {
    Ok(0)
}
