//! Opaque, integrity-protected paging cursors.
//!
//! A cursor is `base64url(json) "." base64url(hmac)`: the JSON says where the next page
//! starts (the sort key and id of the last row, the `$everything` phase), which snapshot and
//! which query it belongs to, and whom it was issued to (a hash of the token's patients). The
//! HMAC-SHA256 tag over it, keyed by a server secret, makes any alteration a 400.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::QueryError;

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Snapshot name the cursor was made in.
    pub snap: String,
    /// Hash of the query (type, filters, sort, page size) and of the caller's compartment.
    pub query: String,
    /// Sort value (epoch ms) of the last row returned, when sorting by a date.
    pub key: Option<i64>,
    /// Id of the last row returned.
    pub id: String,
    /// `$everything` phase index.
    pub phase: usize,
    /// Offset of the page (for display only; paging is by key).
    pub offset: u64,
    /// A `previous` cursor: `key`/`id` are the first row of the page after the one wanted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub back: bool,
}

type Mac256 = Hmac<Sha256>;

/// Sign a cursor.
pub fn seal(c: &Cursor, secret: &[u8]) -> String {
    let body = serde_json::to_vec(c).unwrap_or_default();
    let mut mac = Mac256::new_from_slice(secret).unwrap_or_else(|_| unreachable_mac());
    mac.update(&body);
    let tag = mac.finalize().into_bytes();
    format!("{}.{}", B64.encode(&body), B64.encode(&tag[..16]))
}

fn unreachable_mac() -> Mac256 {
    // HMAC accepts keys of any length; this is never reached.
    Mac256::new_from_slice(b"k").expect("HMAC takes any key length")
}

/// Check and decode a cursor.
///
/// # Errors
/// [`QueryError::InvalidCursor`] when it is malformed or its tag does not match.
pub fn open(text: &str, secret: &[u8]) -> Result<Cursor, QueryError> {
    let (body, tag) = text
        .split_once('.')
        .ok_or(QueryError::InvalidCursor("malformed"))?;
    let body = B64
        .decode(body)
        .map_err(|_| QueryError::InvalidCursor("malformed"))?;
    let tag = B64
        .decode(tag)
        .map_err(|_| QueryError::InvalidCursor("malformed"))?;
    let mut mac = Mac256::new_from_slice(secret).unwrap_or_else(|_| unreachable_mac());
    mac.update(&body);
    mac.verify_truncated_left(&tag)
        .map_err(|_| QueryError::InvalidCursor("signature mismatch"))?;
    serde_json::from_slice(&body).map_err(|_| QueryError::InvalidCursor("malformed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_cursors_round_trip_and_reject_tampering() {
        let c = Cursor {
            snap: "s1".into(),
            query: "q".into(),
            key: Some(5),
            id: "a".into(),
            phase: 0,
            offset: 10,
            back: false,
        };
        let t = seal(&c, b"secret");
        assert_eq!(open(&t, b"secret").unwrap(), c);
        assert!(open(&t, b"other").is_err());
        let (body, tag) = t.split_once('.').unwrap();
        let mut forged = c.clone();
        forged.id = "b".into();
        let forged_body = B64.encode(serde_json::to_vec(&forged).unwrap());
        assert!(open(&format!("{forged_body}.{tag}"), b"secret").is_err());
        assert!(open(body, b"secret").is_err());
        assert!(open("", b"secret").is_err());
    }
}
