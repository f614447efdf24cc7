//! SMART App Launch scopes, v1 (`patient/*.read`) and v2 (`patient/Coverage.rs`) syntax.
//!
//! Only `patient/` scopes grant access to member data: this is a Patient Access API, every
//! token is confined to its patient(s). `user/` and `system/` scopes are parsed but grant
//! nothing here. v2 scopes with a query suffix (`patient/Observation.rs?category=…`) narrow a
//! grant to a subset that this layer cannot enforce, so they grant nothing either (deny rather
//! than over-share).

use std::fmt;

/// Whose data a resource scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeContext {
    /// `patient/`: the token's patient(s).
    Patient,
    /// `user/`: whatever the user may see (not honoured by fhirlake).
    User,
    /// `system/`: backend services (not honoured by fhirlake).
    System,
}

/// One parsed resource scope such as `patient/Coverage.rs` or `patient/*.read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    /// `patient`, `user` or `system`.
    pub context: ScopeContext,
    /// The resource type, `None` for `*`.
    pub resource_type: Option<String>,
    /// `c` (v2) or part of `write` / `*` (v1).
    pub create: bool,
    /// `r` (v2) or `read` / `*` (v1).
    pub read: bool,
    /// `u` (v2) or part of `write` / `*` (v1).
    pub update: bool,
    /// `d` (v2) or part of `write` / `*` (v1).
    pub delete: bool,
    /// `s` (v2) or `read` / `*` (v1).
    pub search: bool,
    /// Written in v2 syntax.
    pub v2: bool,
    /// Had a `?query` restriction (v2 granular scope); grants nothing here.
    pub restricted: bool,
}

impl ResourceScope {
    /// Parses `context/Type.permissions`; `None` when the string is not a resource scope.
    pub fn parse(s: &str) -> Option<Self> {
        let (ctx, rest) = s.split_once('/')?;
        let context = match ctx {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return None,
        };
        let (ty, perm) = rest.split_once('.')?;
        let resource_type = if ty == "*" {
            None
        } else if is_resource_type(ty) {
            Some(ty.to_owned())
        } else {
            return None;
        };
        let (perm, restricted) = match perm.split_once('?') {
            Some((p, q)) if !q.is_empty() => (p, true),
            Some(_) => return None,
            None => (perm, false),
        };
        let mut sc = ResourceScope {
            context,
            resource_type,
            create: false,
            read: false,
            update: false,
            delete: false,
            search: false,
            v2: true,
            restricted,
        };
        match perm {
            "read" | "write" | "*" if !restricted => {
                sc.v2 = false;
                let (r, w) = match perm {
                    "read" => (true, false),
                    "write" => (false, true),
                    _ => (true, true),
                };
                sc.read = r;
                sc.search = r;
                sc.create = w;
                sc.update = w;
                sc.delete = w;
            }
            _ => {
                // v2: a non-empty subsequence of "cruds", in that order, no repeats.
                let order = "cruds";
                let mut last: Option<usize> = None;
                if perm.is_empty() {
                    return None;
                }
                for ch in perm.chars() {
                    let idx = order.find(ch)?;
                    if last.is_some_and(|l| idx <= l) {
                        return None;
                    }
                    last = Some(idx);
                    match ch {
                        'c' => sc.create = true,
                        'r' => sc.read = true,
                        'u' => sc.update = true,
                        'd' => sc.delete = true,
                        _ => sc.search = true,
                    }
                }
            }
        }
        Some(sc)
    }

    fn applies_to(&self, resource_type: &str) -> bool {
        self.context == ScopeContext::Patient
            && !self.restricted
            && self
                .resource_type
                .as_deref()
                .is_none_or(|t| t == resource_type)
    }
}

/// A FHIR resource type name: an ASCII capital then letters.
pub fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
        && s.len() <= 64
}

/// The scopes of a token or a request, kept in their original order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    raw: Vec<String>,
    resources: Vec<ResourceScope>,
}

impl Scopes {
    /// Parses a space-separated scope string. Unknown scopes are kept (they are the client's
    /// business) but only well-formed resource scopes grant access.
    pub fn parse(s: &str) -> Self {
        Self::from_iter(s.split_whitespace())
    }

    /// True when the exact scope string was granted.
    pub fn contains(&self, scope: &str) -> bool {
        self.raw.iter().any(|s| s == scope)
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.raw.iter().map(String::as_str)
    }

    /// True when no scope is present.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The parsed resource scopes.
    pub fn resource_scopes(&self) -> &[ResourceScope] {
        &self.resources
    }

    /// Instance read (`r`, v1 `read`) of `resource_type` within the patient compartment.
    pub fn can_read(&self, resource_type: &str) -> bool {
        self.resources
            .iter()
            .any(|s| s.read && s.applies_to(resource_type))
    }

    /// Search (`s`, v1 `read`) of `resource_type` within the patient compartment.
    pub fn can_search(&self, resource_type: &str) -> bool {
        self.resources
            .iter()
            .any(|s| s.search && s.applies_to(resource_type))
    }

    /// True when some resource scope is a `patient/` scope (the token needs a patient).
    pub fn has_patient_scope(&self) -> bool {
        self.resources
            .iter()
            .any(|s| s.context == ScopeContext::Patient)
    }

    /// Keeps only the scopes for which `keep` is true.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) -> Self {
        Self::from_iter(self.raw.iter().map(String::as_str).filter(|s| keep(s)))
    }
}

impl<'a> FromIterator<&'a str> for Scopes {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut out = Scopes::default();
        for s in iter {
            if s.is_empty() || out.contains(s) {
                continue;
            }
            if let Some(r) = ResourceScope::parse(s) {
                out.resources.push(r);
            }
            out.raw.push(s.to_owned());
        }
        out
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw.join(" "))
    }
}

/// Scopes the embedded server understands besides resource scopes.
pub const NON_RESOURCE_SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "online_access",
];

/// True when the embedded server may grant `scope`: a `patient/` resource scope without a
/// query restriction, or one of [`NON_RESOURCE_SCOPES`].
pub fn grantable(scope: &str) -> bool {
    NON_RESOURCE_SCOPES.contains(&scope)
        || ResourceScope::parse(scope)
            .is_some_and(|r| r.context == ScopeContext::Patient && !r.restricted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_read_grants_read_and_search() {
        let s = Scopes::parse("launch/patient patient/ExplanationOfBenefit.read openid");
        assert!(s.can_read("ExplanationOfBenefit"));
        assert!(s.can_search("ExplanationOfBenefit"));
        assert!(!s.can_read("Coverage"));
    }

    #[test]
    fn v1_wildcards() {
        let s = Scopes::parse("patient/*.read");
        assert!(s.can_read("Coverage") && s.can_search("Patient"));
        assert!(!Scopes::parse("patient/*.write").can_read("Coverage"));
        assert!(Scopes::parse("patient/*.*").can_read("Coverage"));
    }

    #[test]
    fn v2_letters() {
        let s = Scopes::parse("patient/Coverage.rs patient/Patient.r patient/Claim.s");
        assert!(s.can_read("Coverage") && s.can_search("Coverage"));
        assert!(s.can_read("Patient") && !s.can_search("Patient"));
        assert!(!s.can_read("Claim") && s.can_search("Claim"));
        assert!(Scopes::parse("patient/*.rs").can_search("ExplanationOfBenefit"));
        assert!(Scopes::parse("patient/*.cruds").can_read("Coverage"));
    }

    #[test]
    fn v2_without_read_or_search_grants_nothing() {
        let s = Scopes::parse("patient/Coverage.c patient/Coverage.cud");
        assert!(!s.can_read("Coverage") && !s.can_search("Coverage"));
    }

    #[test]
    fn malformed_v2_rejected() {
        for bad in [
            "patient/Coverage.sr",
            "patient/Coverage.rr",
            "patient/Coverage.x",
            "patient/Coverage.",
            "patient/coverage.rs",
            "patient/Coverage.rs?",
        ] {
            assert!(ResourceScope::parse(bad).is_none(), "{bad}");
            assert!(!Scopes::parse(bad).can_read("Coverage"), "{bad}");
        }
    }

    #[test]
    fn user_system_and_restricted_scopes_grant_nothing() {
        let s = Scopes::parse("user/*.rs system/*.read patient/Observation.rs?category=laboratory");
        assert!(!s.can_read("Coverage"));
        assert!(!s.can_search("Observation"));
        assert!(
            ResourceScope::parse("patient/Observation.rs?category=laboratory")
                .is_some_and(|r| r.restricted)
        );
    }

    #[test]
    fn grantable_filters_embedded_requests() {
        assert!(grantable("patient/Coverage.rs"));
        assert!(grantable("offline_access"));
        assert!(!grantable("user/*.read"));
        assert!(!grantable("launch"));
        assert!(!grantable("patient/Observation.rs?code=1"));
    }

    #[test]
    fn display_round_trips_and_dedups() {
        let s = Scopes::parse("openid  fhirUser openid patient/*.rs");
        assert_eq!(s.to_string(), "openid fhirUser patient/*.rs");
    }
}
