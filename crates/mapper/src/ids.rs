//! Stable resource ids derived from business keys.
//!
//! A FHIR id is `[A-Za-z0-9\-\.]{1,64}`. A key that already fits is used as it is, so ids stay
//! readable (`professional-9991831999`); any other key becomes `h` + 40 hex digits of its
//! SHA-256, which is stable across runs and never collides with a readable id of the same
//! length class in practice.

use sha2::{Digest, Sha256};

/// Whether a key is a FHIR id as it is.
fn fits(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The FHIR id for a business key.
pub fn fhir_id(key: &str) -> String {
    fhir_id_of(&[key])
}

/// [`fhir_id`] of a key built from parts (concatenated once, kept when it fits as it is).
pub fn fhir_id_of(parts: &[&str]) -> String {
    let key = parts.concat();
    if fits(&key) {
        return key;
    }
    hashed(&key)
}

fn hashed(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(41);
    out.push('h');
    for b in &digest[..20] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A reference `{resource_type}/{id}` to the resource whose id is [`fhir_id_of`] `parts`,
/// built in one string.
pub fn reference_of(resource_type: &str, parts: &[&str]) -> String {
    let len = parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = String::with_capacity(resource_type.len() + 1 + len.max(41));
    out.push_str(resource_type);
    out.push('/');
    let at = out.len();
    for p in parts {
        out.push_str(p);
    }
    if !fits(&out[at..]) {
        let id = hashed(&out[at..]);
        out.truncate(at);
        out.push_str(&id);
    }
    out
}

/// The id of a resource filed under an identifier kind and value (or name): providers and
/// payers, as `npi-1234567893`, `tax-123456789`, `payer-FLHP`, `org-Harbor Clinic` (hashed).
pub fn keyed_id(kind: &str, key: &str) -> String {
    fhir_id_of(&[kind, "-", key])
}

/// The NPI a provider's id was made from ([`keyed_id`] with kind `npi`), when it was made from
/// one and is still readable (not hashed).
pub fn npi_in_id(id: &str) -> Option<&str> {
    id.strip_prefix("npi-")
}

/// `{resource_type}/` + [`keyed_id`], in one string.
pub fn keyed_ref(resource_type: &str, kind: &str, key: &str) -> String {
    reference_of(resource_type, &[kind, "-", key])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_type_and_id() {
        assert_eq!(
            keyed_ref("Organization", "tin", "12-3"),
            format!("Organization/{}", keyed_id("tin", "12-3"))
        );
        assert_eq!(
            keyed_ref("Practitioner", "npi", "1234567893"),
            "Practitioner/npi-1234567893"
        );
        assert_eq!(
            keyed_ref("Practitioner", "org", "Harbor Family Medicine"),
            format!("Practitioner/{}", keyed_id("org", "Harbor Family Medicine"))
        );
        for parts in [
            &["npi-", "1234567893"][..],
            &["org", "-", "Harbor Family Medicine"],
            &["x"; 70],
        ] {
            assert_eq!(
                reference_of("Organization", parts),
                format!("Organization/{}", fhir_id_of(parts))
            );
        }
    }

    #[test]
    fn readable_keys_stay_readable_and_others_hash() {
        assert_eq!(
            fhir_id("professional-9991831999"),
            "professional-9991831999"
        );
        assert_eq!(fhir_id("-567834"), "-567834");
        let h = fhir_id("member 12/34");
        assert_eq!(h.len(), 41);
        assert!(h.starts_with('h'));
        assert_eq!(h, fhir_id("member 12/34"));
        assert_ne!(h, fhir_id("member 12/35"));
        assert_eq!(fhir_id(&"x".repeat(65)).len(), 41);
        assert_eq!(fhir_id_of(&["member", " 12/34"]), h);
        assert_eq!(fhir_id_of(&["npi-", "123"]), "npi-123");
        assert_eq!(
            npi_in_id(&keyed_id("npi", "1234567893")),
            Some("1234567893")
        );
        assert_eq!(npi_in_id(&keyed_id("tax", "1234567893")), None);
    }
}
