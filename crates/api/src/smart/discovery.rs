//! What the server says about its security: `/.well-known/smart-configuration`, the OIDC
//! discovery document of the embedded server, and the CapabilityStatement's `rest.security`.
//! All three are built from one [`Endpoints`] value so they cannot disagree.

use serde_json::{json, Value};

/// The authorization endpoints and capabilities in force.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Token issuer (`iss`).
    pub issuer: String,
    /// Authorization endpoint.
    pub authorize: String,
    /// Token endpoint.
    pub token: String,
    /// RFC 7009 revocation endpoint, if the issuer has one.
    pub revoke: Option<String>,
    /// JWKS URL.
    pub jwks: String,
    /// SMART capabilities.
    pub capabilities: Vec<String>,
    /// Scopes advertised.
    pub scopes_supported: Vec<String>,
    /// Grant types at the token endpoint.
    pub grant_types: Vec<String>,
    /// Client authentication methods at the token endpoint.
    pub auth_methods: Vec<String>,
    /// PKCE methods.
    pub code_challenge_methods: Vec<String>,
}

/// SMART capabilities of the embedded authorization server.
pub const EMBEDDED_CAPABILITIES: &[&str] = &[
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "context-standalone-patient",
    "permission-patient",
    "permission-v1",
    "permission-v2",
    "permission-offline",
    "permission-online",
    "sso-openid-connect",
];

/// Member-data resource types the scopes list names explicitly (wildcards cover the rest).
pub const MEMBER_RESOURCE_TYPES: &[&str] = &[
    "Patient",
    "Coverage",
    "ExplanationOfBenefit",
    "Organization",
    "Practitioner",
];

impl Endpoints {
    /// The embedded server's endpoints under `auth_base` (e.g. `https://host/auth`).
    pub fn embedded(auth_base: &str) -> Self {
        let mut scopes: Vec<String> = [
            "openid",
            "fhirUser",
            "launch/patient",
            "offline_access",
            "online_access",
            "patient/*.rs",
            "patient/*.read",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for t in MEMBER_RESOURCE_TYPES {
            scopes.push(format!("patient/{t}.rs"));
            scopes.push(format!("patient/{t}.read"));
        }
        Endpoints {
            issuer: auth_base.to_owned(),
            authorize: format!("{auth_base}/authorize"),
            token: format!("{auth_base}/token"),
            revoke: Some(format!("{auth_base}/revoke")),
            jwks: format!("{auth_base}/jwks"),
            capabilities: EMBEDDED_CAPABILITIES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            scopes_supported: scopes,
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            auth_methods: vec![
                "client_secret_basic".into(),
                "client_secret_post".into(),
                "none".into(),
            ],
            code_challenge_methods: vec!["S256".into()],
        }
    }

    /// An external issuer's endpoints, from its OIDC discovery document. Capabilities are
    /// claimed only where the document supports them.
    pub fn external(discovery: &Value, issuer: &str, jwks_uri: &str) -> Self {
        let s = |k: &str| {
            discovery
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let list = |k: &str| -> Vec<String> {
            discovery
                .get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let grant_types = {
            let g = list("grant_types_supported");
            if g.is_empty() {
                vec!["authorization_code".into(), "implicit".into()]
            } else {
                g
            }
        };
        let auth_methods = {
            let m = list("token_endpoint_auth_methods_supported");
            if m.is_empty() {
                vec!["client_secret_basic".into()]
            } else {
                m
            }
        };
        let scopes = list("scopes_supported");
        let pkce = list("code_challenge_methods_supported");
        let mut caps: Vec<String> = vec![
            "context-standalone-patient".into(),
            "permission-patient".into(),
            "permission-v1".into(),
            "permission-v2".into(),
        ];
        if grant_types.iter().any(|g| g == "authorization_code")
            && !s("authorization_endpoint").is_empty()
        {
            caps.push("launch-standalone".into());
        }
        if auth_methods.iter().any(|m| m == "none") {
            caps.push("client-public".into());
        }
        if auth_methods.iter().any(|m| m.starts_with("client_secret")) {
            caps.push("client-confidential-symmetric".into());
        }
        if auth_methods.iter().any(|m| m == "private_key_jwt") {
            caps.push("client-confidential-asymmetric".into());
        }
        if scopes.iter().any(|s| s == "offline_access") {
            caps.push("permission-offline".into());
        }
        if scopes.iter().any(|s| s == "openid") {
            caps.push("sso-openid-connect".into());
        }
        let revoke = Some(s("revocation_endpoint")).filter(|r| !r.is_empty());
        Endpoints {
            issuer: issuer.to_owned(),
            authorize: s("authorization_endpoint"),
            token: s("token_endpoint"),
            revoke,
            jwks: jwks_uri.to_owned(),
            capabilities: caps,
            scopes_supported: scopes,
            grant_types,
            auth_methods,
            code_challenge_methods: pkce,
        }
    }

    /// The `/.well-known/smart-configuration` document.
    pub fn smart_configuration(&self) -> Value {
        let mut v = json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks,
            "authorization_endpoint": self.authorize,
            "token_endpoint": self.token,
            "grant_types_supported": self.grant_types,
            "token_endpoint_auth_methods_supported": self.auth_methods,
            "scopes_supported": self.scopes_supported,
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": self.code_challenge_methods,
            "capabilities": self.capabilities,
        });
        if let Some(r) = &self.revoke {
            v["revocation_endpoint"] = json!(r);
        }
        v
    }

    /// The OIDC discovery document (embedded server only).
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "authorization_endpoint": self.authorize,
            "token_endpoint": self.token,
            "revocation_endpoint": self.revoke,
            "jwks_uri": self.jwks,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": self.scopes_supported,
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
            "grant_types_supported": self.grant_types,
            "token_endpoint_auth_methods_supported": self.auth_methods,
            "revocation_endpoint_auth_methods_supported": self.auth_methods,
            "code_challenge_methods_supported": self.code_challenge_methods,
        })
    }

    /// `CapabilityStatement.rest[0].security`: the SMART-on-FHIR service and the oauth-uris
    /// extension naming the same endpoints as the smart-configuration.
    pub fn rest_security(&self) -> Value {
        let mut uris = vec![
            json!({ "url": "authorize", "valueUri": self.authorize }),
            json!({ "url": "token", "valueUri": self.token }),
        ];
        if let Some(r) = &self.revoke {
            uris.push(json!({ "url": "revoke", "valueUri": r }));
        }
        json!({
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": uris,
            }],
            "cors": true,
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR",
                    "display": "SMART-on-FHIR",
                }],
                "text": "OAuth 2.0 bearer tokens per SMART App Launch 2.0 (v1 and v2 scopes)",
            }],
            "description": "Member data requires a SMART access token with patient/ scopes; formulary resources are public.",
        })
    }
}
