//! Recognising a file's layout by its own content.
//!
//! X12 by its `ISA` header, XML and JSON by their first byte, and a delimited file by matching
//! its header row against the `detect` columns of every mapping file. The most specific
//! mapping (the one that names the most columns) wins, so layouts that share columns
//! (beneficiary and beneficiary history) stay apart.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::delimited::read_header;
use crate::layout::Mapping;
use crate::Error;

/// What a file is.
#[derive(Debug, Clone)]
pub enum Format {
    /// An X12 interchange (837P/837I).
    X12,
    /// An XML document (formulary extract).
    Xml,
    /// A JSON document (CMS QHP formulary files).
    Json,
    /// A delimited file of a known mapping.
    Delimited(Arc<Mapping>),
}

/// Recognise `path` against `mappings`.
///
/// # Errors
/// When the file cannot be read, or nothing recognises it (the message says why).
pub fn detect(path: &Path, mappings: &[Arc<Mapping>]) -> Result<Format, Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let mut head = [0u8; 512];
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut n = 0;
    while n < head.len() {
        let k = file.read(&mut head[n..]).map_err(io)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let mut body = &head[..n];
    if let Some(rest) = body.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        body = rest;
    }
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let body = &body[start..];
    if body.starts_with(b"ISA") {
        return Ok(Format::X12);
    }
    if body.starts_with(b"<") {
        return Ok(Format::Xml);
    }
    if body.starts_with(b"[") || body.starts_with(b"{") {
        return Ok(Format::Json);
    }
    let mut best: Option<&Arc<Mapping>> = None;
    for m in mappings {
        let header = read_header(path, m.delimiter())?;
        if m.matches_header(&header)
            && best.is_none_or(|b| m.source.detect.len() > b.source.detect.len())
        {
            best = Some(m);
        }
    }
    best.map(|m| Format::Delimited(m.clone()))
        .ok_or_else(|| Error::UnknownFormat {
            path: path.display().to_string(),
            message:
                "not X12, XML or JSON, and its header matches no mapping file (use --mapping FILE)"
                    .into(),
        })
}
