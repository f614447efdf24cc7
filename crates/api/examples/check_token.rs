//! Validates an access token from an external OpenID provider with fhirlake's SMART gate.
//!
//! `cargo run -p api --example check_token -- ISSUER AUDIENCE TOKEN [PATIENT_CLAIM] [RESOURCE_TYPE]`
//!
//! Discovers the issuer's JWKS, checks the token as the FHIR API would for a read of
//! RESOURCE_TYPE (default `Coverage`; patient claim default `patient`), prints the grant as
//! JSON and exits 0, or prints the refusal (status and message) and exits 1.

use api::smart::{AuthConfig, Smart};
use axum::http::{header, HeaderMap, HeaderValue};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [issuer, audience, token, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: check_token ISSUER AUDIENCE TOKEN [PATIENT_CLAIM] [RESOURCE_TYPE]");
    };
    let claim = rest.first().map(String::as_str).unwrap_or("patient");
    let resource_type = rest.get(1).map(String::as_str).unwrap_or("Coverage");
    let smart = Smart::new(AuthConfig::external(issuer, audience, claim)).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    match smart.authorize(&headers, resource_type).await {
        Ok(g) => {
            let out = serde_json::json!({
                "client_id": g.client_id,
                "user": g.user,
                "patients": g.patients,
                "scope": g.scopes.to_string(),
            });
            println!("{out}");
            Ok(())
        }
        Err(e) => {
            println!("refused: {} {}", e.status().as_u16(), e);
            std::process::exit(1);
        }
    }
}
