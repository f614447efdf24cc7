//! SMART layer, end to end over real HTTP: the embedded authorization server driven like a
//! browser and an app would, and the resource-server gate against real signed JWTs from the
//! embedded server and from a stand-in external IdP (JWKS over HTTP, key rotation).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use api::smart::{config::hash_secret, AuthConfig, Smart};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PUBLIC_CLIENT: &str = "growth-app";
const CONF_CLIENT: &str = "conf-app";
const OTHER_CLIENT: &str = "other-app";
const CONF_SECRET: &str = "s3cret with spaces & symbols";
const REDIRECT: &str = "http://127.0.0.1:9/callback";
const OTHER_REDIRECT: &str = "http://127.0.0.1:9/other";
/// Patient ids chosen so a leak into a body is easy to spot.
const ALICE_PATIENT: &str = "pat-alice-7731";
const DORA_PATIENTS: [&str; 2] = ["pat-kid-1942", "pat-kid-2208"];

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn bind() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn serve(listener: tokio::net::TcpListener, app: Router) {
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

/// The protected test handler: what the FHIR router will do with a grant.
async fn fhir_handler(
    State(smart): State<Smart>,
    Path(rt): Path<String>,
    headers: HeaderMap,
) -> Response {
    match smart.authorize(&headers, &rt).await {
        Ok(g) => Json(json!({
            "resourceType": rt,
            "patients": g.patients,
            "client_id": g.client_id,
            "scope": g.scopes.to_string(),
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

fn app(smart: &Smart) -> Router {
    let s2 = smart.clone();
    let fhir = Router::new()
        .route("/fhir/{rt}", get(fhir_handler))
        .route(
            "/fhir/.well-known/smart-configuration",
            get(move || async move { Json(s2.smart_configuration()) }),
        )
        .layer(api::smart::cors_layer())
        .with_state(smart.clone());
    smart.router().merge(fhir)
}

struct Embedded {
    base: String,
    fhir: String,
    smart: Smart,
    dir: tempfile::TempDir,
}

fn write_config(dir: &std::path::Path) {
    let secret_hash = hash_secret(CONF_SECRET).unwrap();
    let clients = format!(
        r#"
[[client]]
client_id = "{PUBLIC_CLIENT}"
name = "Growth <Chart>"
redirect_uris = ["{REDIRECT}"]

[[client]]
client_id = "{OTHER_CLIENT}"
redirect_uris = ["{OTHER_REDIRECT}"]

[[client]]
client_id = "{CONF_CLIENT}"
redirect_uris = ["{REDIRECT}"]
secret_hash = "{secret_hash}"
"#
    );
    let alice = hash_secret("alice-pw").unwrap();
    let dora = hash_secret("dora-pw").unwrap();
    let members = format!(
        r#"
[[member]]
username = "alice"
password_hash = "{alice}"
display_name = "Alice Example"
patients = ["{ALICE_PATIENT}"]

[[member]]
username = "dora"
password_hash = "{dora}"
fhir_user = "RelatedPerson/dora-1"
patients = ["{k1}", "{k2}"]
patient_labels = {{ "{k1}" = "Kid One", "{k2}" = "Kid Two" }}
"#,
        k1 = DORA_PATIENTS[0],
        k2 = DORA_PATIENTS[1]
    );
    std::fs::write(dir.join("clients.toml"), clients).unwrap();
    std::fs::write(dir.join("members.toml"), members).unwrap();
}

async fn embedded_at(dir: tempfile::TempDir) -> Embedded {
    let (listener, addr) = bind().await;
    let base = format!("http://{addr}");
    let fhir = format!("{base}/fhir");
    let cfg = AuthConfig::embedded(
        dir.path().join("state"),
        dir.path().join("clients.toml"),
        dir.path().join("members.toml"),
        &fhir,
    );
    let smart = Smart::new(cfg).await.unwrap();
    serve(listener, app(&smart));
    Embedded {
        base,
        fhir,
        smart,
        dir,
    }
}

async fn embedded() -> Embedded {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path());
    embedded_at(dir).await
}

fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(Sha256::digest(rand_bytes()));
    let verifier = format!("{verifier}-verifier-padding");
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let i = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} in page: {html}"))
        + marker.len();
    html[i..i + html[i..].find('"').unwrap()].to_owned()
}

fn query_param(location: &str, name: &str) -> Option<String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

struct Launch<'a> {
    client_id: &'a str,
    redirect_uri: &'a str,
    scope: &'a str,
    challenge: Option<&'a str>,
}

impl Embedded {
    fn authorize_url(&self, l: &Launch<'_>, state: &str) -> String {
        let mut u = url::Url::parse(&format!("{}/auth/authorize", self.base)).unwrap();
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", l.client_id)
                .append_pair("redirect_uri", l.redirect_uri)
                .append_pair("scope", l.scope)
                .append_pair("state", state)
                .append_pair("aud", &self.fhir)
                .append_pair("nonce", "n-0S6_WzA2Mj");
            if let Some(c) = l.challenge {
                q.append_pair("code_challenge", c)
                    .append_pair("code_challenge_method", "S256");
            }
        }
        u.into()
    }

    /// Drives authorize → login → consent; returns the redirect Location.
    async fn launch(
        &self,
        l: &Launch<'_>,
        user: &str,
        pw: &str,
        grant: Option<&[&str]>,
        patients: Option<&[&str]>,
    ) -> String {
        let c = http();
        let r = c.get(self.authorize_url(l, "st-123")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let html = r.text().await.unwrap();
        let rid = hidden(&html, "request");
        let r = c
            .post(format!("{}/auth/login", self.base))
            .form(&[
                ("request", rid.as_str()),
                ("username", user),
                ("password", pw),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let html = r.text().await.unwrap();
        let rid = hidden(&html, "request");
        let requested: Vec<String> = l.scope.split_whitespace().map(str::to_owned).collect();
        let mut form: Vec<(String, String)> =
            vec![("request".into(), rid), ("decision".into(), "allow".into())];
        for s in grant
            .map(|g| g.iter().map(|s| s.to_string()).collect())
            .unwrap_or(requested)
        {
            form.push(("scope".into(), s));
        }
        match patients {
            Some(ps) => form.extend(ps.iter().map(|p| ("patient".to_owned(), p.to_string()))),
            None => form.push(("patient".into(), hidden(&html, "patient"))),
        }
        let r = c
            .post(format!("{}/auth/consent", self.base))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_redirection(),
            "consent answered {}",
            r.status()
        );
        r.headers()["location"].to_str().unwrap().to_owned()
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = http()
            .post(format!("{}/auth/token", self.base))
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap()),
            Some("no-store")
        );
        (r.status(), r.json().await.unwrap())
    }

    async fn code_for_public(&self, scope: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let l = Launch {
            client_id: PUBLIC_CLIENT,
            redirect_uri: REDIRECT,
            scope,
            challenge: Some(&challenge),
        };
        let loc = self.launch(&l, "alice", "alice-pw", None, None).await;
        (query_param(&loc, "code").unwrap(), verifier)
    }

    async fn public_tokens(&self, scope: &str) -> Value {
        let (code, verifier) = self.code_for_public(scope).await;
        let (st, body) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", PUBLIC_CLIENT),
                ("code_verifier", &verifier),
            ])
            .await;
        assert_eq!(st, StatusCode::OK, "{body}");
        body
    }

    async fn get(&self, rt: &str, token: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut rq = http().get(format!("{}/{rt}", self.fhir));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        let r = rq.send().await.unwrap();
        (r.status(), r.headers().clone(), r.text().await.unwrap())
    }

    async fn revoke(&self, form: &[(&str, &str)]) -> StatusCode {
        http()
            .post(format!("{}/auth/revoke", self.base))
            .form(form)
            .send()
            .await
            .unwrap()
            .status()
    }
}

fn assert_no_phi(body: &str) {
    for p in [
        ALICE_PATIENT,
        DORA_PATIENTS[0],
        DORA_PATIENTS[1],
        "alice",
        "Alice",
    ] {
        assert!(!body.contains(p), "body leaks {p}: {body}");
    }
}

const SCOPES: &str = "launch/patient openid fhirUser offline_access patient/ExplanationOfBenefit.rs patient/Coverage.rs patient/Patient.read";

#[tokio::test]
async fn standalone_launch_refresh_revoke() {
    let e = embedded().await;

    // Discovery tells the truth about the endpoints the flow below uses.
    let conf: Value = http()
        .get(format!("{}/.well-known/smart-configuration", e.fhir))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        conf["authorization_endpoint"],
        format!("{}/auth/authorize", e.base)
    );
    assert_eq!(conf["token_endpoint"], format!("{}/auth/token", e.base));
    assert_eq!(
        conf["revocation_endpoint"],
        format!("{}/auth/revoke", e.base)
    );
    assert_eq!(conf["code_challenge_methods_supported"], json!(["S256"]));
    for cap in [
        "launch-standalone",
        "client-public",
        "client-confidential-symmetric",
        "context-standalone-patient",
        "permission-v1",
        "permission-v2",
        "permission-offline",
        "sso-openid-connect",
    ] {
        assert!(
            conf["capabilities"]
                .as_array()
                .unwrap()
                .contains(&json!(cap)),
            "{cap}"
        );
    }
    let sec = e.smart.rest_security();
    let uris = &sec["extension"][0]["extension"];
    assert_eq!(
        uris[0],
        json!({"url": "authorize", "valueUri": conf["authorization_endpoint"]})
    );
    assert_eq!(
        uris[1],
        json!({"url": "token", "valueUri": conf["token_endpoint"]})
    );
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let oidc: Value = http()
        .get(format!("{}/auth/.well-known/openid-configuration", e.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(oidc["issuer"], conf["issuer"]);
    assert_eq!(oidc["jwks_uri"], conf["jwks_uri"]);

    // authorize → login page (client name escaped) → a wrong password first.
    let (verifier, challenge) = pkce();
    let l = Launch {
        client_id: PUBLIC_CLIENT,
        redirect_uri: REDIRECT,
        scope: SCOPES,
        challenge: Some(&challenge),
    };
    let c = http();
    let html = c
        .get(e.authorize_url(&l, "st-123"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Growth &lt;Chart&gt;"), "{html}");
    let rid = hidden(&html, "request");
    let r = c
        .post(format!("{}/auth/login", e.base))
        .form(&[
            ("request", rid.as_str()),
            ("username", "alice"),
            ("password", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(format!("{}/auth/login", e.base))
        .form(&[
            ("request", rid.as_str()),
            ("username", "alice"),
            ("password", "alice-pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let html = r.text().await.unwrap();
    for s in SCOPES.split(' ') {
        assert!(
            html.contains(&format!("value=\"{s}\"")),
            "consent lists {s}"
        );
    }
    // The login page's request id is spent once signed in.
    let again = c
        .post(format!("{}/auth/login", e.base))
        .form(&[
            ("request", rid.as_str()),
            ("username", "alice"),
            ("password", "alice-pw"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    // Consent: the member grants fewer scopes (no Coverage).
    let consent_id = hidden(&html, "request");
    let mut form = vec![
        ("request", consent_id.as_str()),
        ("decision", "allow"),
        ("patient", ALICE_PATIENT),
    ];
    for s in SCOPES.split(' ').filter(|s| *s != "patient/Coverage.rs") {
        form.push(("scope", s));
    }
    let r = c
        .post(format!("{}/auth/consent", e.base))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with(REDIRECT));
    assert_eq!(query_param(&loc, "state").as_deref(), Some("st-123"));
    let code = query_param(&loc, "code").unwrap();

    // Token (public client + PKCE).
    let (st, tok) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", PUBLIC_CLIENT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(st, StatusCode::OK, "{tok}");
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["expires_in"], 3600);
    assert_eq!(tok["patient"], ALICE_PATIENT);
    let granted = tok["scope"].as_str().unwrap();
    assert!(
        !granted.contains("Coverage") && granted.contains("patient/ExplanationOfBenefit.rs"),
        "{granted}"
    );
    let id = claims(tok["id_token"].as_str().unwrap());
    assert_eq!(id["fhirUser"], format!("Patient/{ALICE_PATIENT}"));
    assert_eq!(id["aud"], PUBLIC_CLIENT);
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["iss"], conf["issuer"]);
    let at1 = tok["access_token"].as_str().unwrap().to_owned();
    let rt1 = tok["refresh_token"].as_str().unwrap().to_owned();

    // The protected handler sees the grant; the scope the member withheld is refused.
    let (st, _, body) = e.get("ExplanationOfBenefit", Some(&at1)).await;
    assert_eq!(st, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["patients"], json!([ALICE_PATIENT]));
    assert_eq!(body["client_id"], PUBLIC_CLIENT);
    let (st, h, body) = e.get("Coverage", Some(&at1)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert!(
        body.contains("patient/Coverage.rs") && body.contains("OperationOutcome"),
        "{body}"
    );
    assert_no_phi(&body);
    // Formulary is public.
    let (st, _, _) = e.get("InsurancePlan", None).await;
    assert_eq!(st, StatusCode::OK);

    // Refresh without client_id (as npm fhirclient does), with rotation.
    let (st, tok2) = e
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt1)])
        .await;
    assert_eq!(st, StatusCode::OK, "{tok2}");
    let at2 = tok2["access_token"].as_str().unwrap().to_owned();
    let rt2 = tok2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    assert_eq!(tok2["scope"], tok["scope"]);
    assert_eq!(
        e.get("ExplanationOfBenefit", Some(&at2)).await.0,
        StatusCode::OK
    );
    // Narrowing on refresh is allowed (the refresh token keeps its scope), widening is not.
    let (st, narrow) = e
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("scope", "patient/Patient.read"),
        ])
        .await;
    assert_eq!(st, StatusCode::OK, "{narrow}");
    assert_eq!(narrow["scope"], "patient/Patient.read");
    let narrow_at = narrow["access_token"].as_str().unwrap();
    assert_eq!(
        e.get("ExplanationOfBenefit", Some(narrow_at)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(e.get("Patient", Some(narrow_at)).await.0, StatusCode::OK);
    let rt2 = narrow["refresh_token"].as_str().unwrap().to_owned();
    let (st, wide) = e
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt2)])
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        wide["scope"], tok["scope"],
        "the rotated refresh token kept the full scope"
    );
    let rt2 = wide["refresh_token"].as_str().unwrap().to_owned();
    let (st, err) = e
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("scope", "patient/Coverage.rs"),
        ])
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    // …and the refused request did not consume the refresh token.
    let (st, tok3) = e
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt2)])
        .await;
    assert_eq!(st, StatusCode::OK, "{tok3}");
    let rt2 = tok3["refresh_token"].as_str().unwrap().to_owned();
    let at3 = tok3["access_token"].as_str().unwrap().to_owned();

    // Revoke the current refresh token: the grant's refresh and access tokens all stop.
    assert_eq!(
        e.revoke(&[("token", &rt2), ("token_type_hint", "refresh_token")])
            .await,
        StatusCode::OK
    );
    for at in [&at1, &at2, &at3] {
        let (st, h, body) = e.get("ExplanationOfBenefit", Some(at)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
        assert!(h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token"));
        assert!(body.contains("revoked"));
        assert_no_phi(&body);
    }
    let (st, err) = e
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt2)])
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Revocations survive a restart: a fresh Smart over the same state dir and base URL
    // still refuses the revoked token, and still accepts an unrevoked one.
    let live = e.smart.mint(ALICE_PATIENT, "patient/*.rs", "cli").unwrap();
    let cfg = AuthConfig::embedded(
        e.dir.path().join("state"),
        e.dir.path().join("clients.toml"),
        e.dir.path().join("members.toml"),
        &e.fhir,
    );
    let restarted = Smart::new(cfg).await.unwrap();
    let bearer = |t: &str| {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        h
    };
    let err = restarted
        .authorize(&bearer(&at1), "ExplanationOfBenefit")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        api::smart::AuthError::InvalidToken(api::smart::TokenRejection::Revoked)
    );
    let g = restarted
        .authorize(&bearer(&live), "ExplanationOfBenefit")
        .await
        .unwrap();
    assert_eq!(g.patients, vec![ALICE_PATIENT.to_owned()]);
}

#[tokio::test]
async fn delegate_picks_patients() {
    let e = embedded().await;
    let (verifier, challenge) = pkce();
    let l = Launch {
        client_id: PUBLIC_CLIENT,
        redirect_uri: REDIRECT,
        scope: "launch/patient openid fhirUser patient/*.rs",
        challenge: Some(&challenge),
    };
    // The picker shows both members; the delegate shares both.
    let c = http();
    let html = c
        .get(e.authorize_url(&l, "s"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rid = hidden(&html, "request");
    let html = c
        .post(format!("{}/auth/login", e.base))
        .form(&[
            ("request", rid.as_str()),
            ("username", "dora"),
            ("password", "dora-pw"),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("Kid One") && html.contains("Kid Two"),
        "{html}"
    );
    assert!(html.contains("type=\"checkbox\" name=\"patient\""));
    let loc = e
        .launch(&l, "dora", "dora-pw", None, Some(&DORA_PATIENTS))
        .await;
    let code = query_param(&loc, "code").unwrap();
    let (st, tok) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", PUBLIC_CLIENT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(tok["patient"], DORA_PATIENTS[0]);
    assert!(
        tok.get("refresh_token").is_none(),
        "no offline/online_access, no refresh token"
    );
    assert_eq!(
        claims(tok["id_token"].as_str().unwrap())["fhirUser"],
        "RelatedPerson/dora-1"
    );
    let (st, _, body) = e.get("Coverage", tok["access_token"].as_str()).await;
    assert_eq!(st, StatusCode::OK);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["patients"], json!(DORA_PATIENTS));

    // Sharing only the second member.
    let (verifier, challenge) = pkce();
    let l = Launch {
        challenge: Some(&challenge),
        ..l
    };
    let loc = e
        .launch(&l, "dora", "dora-pw", None, Some(&DORA_PATIENTS[1..]))
        .await;
    let code = query_param(&loc, "code").unwrap();
    let (_, tok) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", PUBLIC_CLIENT),
            ("code_verifier", &verifier),
        ])
        .await;
    let body: Value =
        serde_json::from_str(&e.get("Coverage", tok["access_token"].as_str()).await.2).unwrap();
    assert_eq!(body["patients"], json!([DORA_PATIENTS[1]]));
}

#[tokio::test]
async fn confidential_client_auth_methods() {
    let e = embedded().await;
    let l = Launch {
        client_id: CONF_CLIENT,
        redirect_uri: REDIRECT,
        scope: "launch/patient online_access patient/*.read",
        challenge: None,
    };
    let code = || async {
        query_param(&e.launch(&l, "alice", "alice-pw", None, None).await, "code").unwrap()
    };

    // client_secret_basic (form-urlencoded id and secret, RFC 6749 §2.3.1).
    let c1 = code().await;
    let basic = STANDARD.encode(format!(
        "{CONF_CLIENT}:{}",
        url::form_urlencoded::byte_serialize(CONF_SECRET.as_bytes()).collect::<String>()
    ));
    let r = http()
        .post(format!("{}/auth/token", e.base))
        .header("authorization", format!("Basic {basic}"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", c1.as_str()),
            ("redirect_uri", REDIRECT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tok: Value = r.json().await.unwrap();
    let rt = tok["refresh_token"].as_str().unwrap().to_owned();

    // A confidential client's refresh token needs the client's credentials.
    let (st, err) = e
        .token(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // client_secret_post.
    let (st, tok2) = e
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("client_id", CONF_CLIENT),
            ("client_secret", CONF_SECRET),
        ])
        .await;
    assert_eq!(st, StatusCode::OK, "{tok2}");

    // Wrong secret.
    let c2 = code().await;
    let (st, err) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &c2),
            ("redirect_uri", REDIRECT),
            ("client_id", CONF_CLIENT),
            ("client_secret", "wrong"),
        ])
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let r = http()
        .post(format!("{}/auth/token", e.base))
        .basic_auth(CONF_CLIENT, Some("wrong"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tok2["refresh_token"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
}

#[tokio::test]
async fn authorization_endpoint_refusals() {
    let e = embedded().await;
    let (_, challenge) = pkce();
    let c = http();

    // Unregistered redirect URI or unknown client: an error page, never a redirect.
    for l in [
        Launch {
            client_id: PUBLIC_CLIENT,
            redirect_uri: "http://127.0.0.1:9/evil",
            scope: SCOPES,
            challenge: Some(&challenge),
        },
        Launch {
            client_id: PUBLIC_CLIENT,
            redirect_uri: OTHER_REDIRECT,
            scope: SCOPES,
            challenge: Some(&challenge),
        },
        Launch {
            client_id: "nobody",
            redirect_uri: REDIRECT,
            scope: SCOPES,
            challenge: Some(&challenge),
        },
    ] {
        let r = c.get(e.authorize_url(&l, "s")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(r.headers().get("location").is_none());
        assert!(r.text().await.unwrap().contains("Authorization error"));
    }
    // Public client without PKCE: redirected error with state.
    let l = Launch {
        client_id: PUBLIC_CLIENT,
        redirect_uri: REDIRECT,
        scope: SCOPES,
        challenge: None,
    };
    let r = c.get(e.authorize_url(&l, "st-9")).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap();
    assert_eq!(
        query_param(loc, "error").as_deref(),
        Some("invalid_request")
    );
    assert_eq!(query_param(loc, "state").as_deref(), Some("st-9"));
    // plain PKCE refused.
    let l = Launch {
        client_id: PUBLIC_CLIENT,
        redirect_uri: REDIRECT,
        scope: SCOPES,
        challenge: Some(&challenge),
    };
    let url = e
        .authorize_url(&l, "s")
        .replace("code_challenge_method=S256", "code_challenge_method=plain");
    let r = c.get(url).send().await.unwrap();
    assert_eq!(
        query_param(r.headers()["location"].to_str().unwrap(), "error").as_deref(),
        Some("invalid_request")
    );
    // Wrong aud.
    let url = e.authorize_url(&l, "s").replace("%2Ffhir", "%2Fother");
    let r = c.get(url).send().await.unwrap();
    let loc = r.headers()["location"].to_str().unwrap();
    assert!(query_param(loc, "error_description")
        .unwrap()
        .contains("aud"));
    // The member denies.
    let html = c
        .get(e.authorize_url(&l, "s"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rid = hidden(&html, "request");
    let html = c
        .post(format!("{}/auth/login", e.base))
        .form(&[
            ("request", rid.as_str()),
            ("username", "alice"),
            ("password", "alice-pw"),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rid = hidden(&html, "request");
    let r = c
        .post(format!("{}/auth/consent", e.base))
        .form(&[("request", rid.as_str()), ("decision", "deny")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        query_param(r.headers()["location"].to_str().unwrap(), "error").as_deref(),
        Some("access_denied")
    );
}

#[tokio::test]
async fn token_endpoint_refusals() {
    let e = embedded().await;

    // Wrong PKCE verifier; the code is then spent.
    let (code, verifier) = e.code_for_public(SCOPES).await;
    let (wrong, _) = pkce();
    let (st, err) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", PUBLIC_CLIENT),
            ("code_verifier", &wrong),
        ])
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (st, _) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", PUBLIC_CLIENT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Client B redeeming client A's code.
    let (code, verifier) = e.code_for_public(SCOPES).await;
    let (st, err) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", OTHER_CLIENT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Redirect URI must match the authorization request.
    let (code, verifier) = e.code_for_public(SCOPES).await;
    let (st, _) = e
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", OTHER_REDIRECT),
            ("client_id", PUBLIC_CLIENT),
            ("code_verifier", &verifier),
        ])
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Reused code: refused, and what the first redemption produced is revoked.
    let (code, verifier) = e.code_for_public(SCOPES).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("client_id", PUBLIC_CLIENT),
        ("code_verifier", verifier.as_str()),
    ];
    let (st, tok) = e.token(&form).await;
    assert_eq!(st, StatusCode::OK);
    let at = tok["access_token"].as_str().unwrap();
    assert_eq!(e.get("Patient", Some(at)).await.0, StatusCode::OK);
    let (st, err) = e.token(&form).await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(e.get("Patient", Some(at)).await.0, StatusCode::UNAUTHORIZED);

    // Refresh token reuse: refused and the whole grant is revoked.
    let tok = e.public_tokens(SCOPES).await;
    let rt1 = tok["refresh_token"].as_str().unwrap();
    let (_, tok2) = e
        .token(&[("grant_type", "refresh_token"), ("refresh_token", rt1)])
        .await;
    let at2 = tok2["access_token"].as_str().unwrap();
    assert_eq!(e.get("Patient", Some(at2)).await.0, StatusCode::OK);
    let (st, _) = e
        .token(&[("grant_type", "refresh_token"), ("refresh_token", rt1)])
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        e.get("Patient", Some(at2)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (st, _) = e
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tok2["refresh_token"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(
        st,
        StatusCode::BAD_REQUEST,
        "the rotated token died with its family"
    );

    // Revoking an access token revokes its grant (and refresh token); another client cannot.
    let tok = e.public_tokens(SCOPES).await;
    let at = tok["access_token"].as_str().unwrap();
    assert_eq!(
        e.revoke(&[("token", at), ("client_id", OTHER_CLIENT)])
            .await,
        StatusCode::OK
    );
    assert_eq!(
        e.get("Patient", Some(at)).await.0,
        StatusCode::OK,
        "another client's revoke is ignored"
    );
    assert_eq!(
        e.revoke(&[("token", at), ("client_id", PUBLIC_CLIENT)])
            .await,
        StatusCode::OK
    );
    assert_eq!(e.get("Patient", Some(at)).await.0, StatusCode::UNAUTHORIZED);
    let (st, _) = e
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", tok["refresh_token"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Unknown tokens: 200, nothing revealed.
    assert_eq!(e.revoke(&[("token", "not-a-token")]).await, StatusCode::OK);

    // Unsupported grant type.
    let (st, err) = e
        .token(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-pw"),
        ])
        .await;
    assert_eq!(
        (st, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
}

/// The embedded signing key, read from the state dir: to forge tokens the server did sign.
fn embedded_key(e: &Embedded) -> (String, EncodingKey) {
    let file: Value = serde_json::from_slice(
        &std::fs::read(e.dir.path().join("state/signing-keys.json")).unwrap(),
    )
    .unwrap();
    let k = file["keys"].as_array().unwrap().last().unwrap();
    (
        k["kid"].as_str().unwrap().to_owned(),
        EncodingKey::from_ec_der(&STANDARD.decode(k["pkcs8"].as_str().unwrap()).unwrap()),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn mint_rotation_and_embedded_claims() {
    let e = embedded().await;
    let t = e.smart.mint(ALICE_PATIENT, "patient/*.rs", "cli").unwrap();
    let (st, _, body) = e.get("ExplanationOfBenefit", Some(&t)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.contains(ALICE_PATIENT) && body.contains("\"client_id\":\"cli\""));
    assert!(e.smart.mint("Patient/a b", "patient/*.rs", "cli").is_err());
    assert!(e.smart.mint(ALICE_PATIENT, "openid", "cli").is_err());

    // Rotation: new tokens carry the new kid, old ones still verify, JWKS lists both.
    let old_kid = serde_json::from_slice::<Value>(
        &URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap()["kid"]
        .clone();
    let new_kid = e.smart.rotate_signing_key().unwrap();
    let t2 = e.smart.mint(ALICE_PATIENT, "patient/*.rs", "cli").unwrap();
    let h2: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(t2.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(h2["kid"], new_kid);
    assert_eq!(e.get("Coverage", Some(&t2)).await.0, StatusCode::OK);
    assert_eq!(e.get("Coverage", Some(&t)).await.0, StatusCode::OK);
    let jwks: Value = http()
        .get(format!("{}/auth/jwks", e.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert!(kids.contains(&&old_kid) && kids.contains(&&json!(new_kid)));
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("d").is_none()),
        "no private parts"
    );

    // Forged-claim tokens with the real key: a token without gid is refused.
    let (kid, key) = embedded_key(&e);
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid);
    let iss = e.smart.smart_configuration()["issuer"].clone();
    let c = json!({"iss": iss, "aud": e.fhir, "exp": now() + 60, "scope": "patient/*.rs", "patient": ALICE_PATIENT});
    let tok = jsonwebtoken::encode(&h, &c, &key).unwrap();
    let (st, _, body) = e.get("Coverage", Some(&tok)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_no_phi(&body);
    // With gid but no patient: 403.
    let c =
        json!({"iss": iss, "aud": e.fhir, "exp": now() + 60, "scope": "patient/*.rs", "gid": "g1"});
    let (st, _, _) = e
        .get(
            "Coverage",
            Some(&jsonwebtoken::encode(&h, &c, &key).unwrap()),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn cors_preflight_allows_authorization() {
    let e = embedded().await;
    for path in [
        format!("{}/Coverage", e.fhir),
        format!("{}/auth/token", e.base),
    ] {
        let r = http()
            .request(reqwest::Method::OPTIONS, &path)
            .header("origin", "https://app.example")
            .header(
                "access-control-request-method",
                if path.ends_with("token") {
                    "POST"
                } else {
                    "GET"
                },
            )
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        assert_eq!(r.headers()["access-control-allow-origin"], "*");
        let allowed = r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
        assert!(r
            .headers()
            .get("access-control-allow-credentials")
            .is_none());
    }
}

// ---------------------------------------------------------------------------------------
// External IdP: a stand-in issuer with discovery + JWKS over HTTP, keys we hold.

const RSA_PEM: &str = include_str!("fixtures/test-rsa-private.pem");
const RSA_PUBLIC_PEM: &str = include_str!("fixtures/test-rsa-public.pem");

struct IdpKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: Value,
}

fn rsa_key(kid: &str, alg: Algorithm) -> IdpKey {
    let der = STANDARD
        .decode(
            RSA_PEM
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let pc: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "n": URL_SAFE_NO_PAD.encode(&pc.n), "e": URL_SAFE_NO_PAD.encode(&pc.e)});
    IdpKey {
        kid: kid.into(),
        alg,
        enc: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
        jwk,
    }
}

fn ec_key(kid: &str, p384: bool) -> IdpKey {
    use ring::signature::{
        EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    let rng = ring::rand::SystemRandom::new();
    let alg = if p384 {
        &ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &ECDSA_P256_SHA256_FIXED_SIGNING
    };
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
    let pt = pair.public_key().as_ref();
    let n = (pt.len() - 1) / 2;
    let jwk = json!({"kty": "EC", "kid": kid, "crv": if p384 { "P-384" } else { "P-256" },
        "x": URL_SAFE_NO_PAD.encode(&pt[1..1 + n]), "y": URL_SAFE_NO_PAD.encode(&pt[1 + n..])});
    IdpKey {
        kid: kid.into(),
        alg: if p384 {
            Algorithm::ES384
        } else {
            Algorithm::ES256
        },
        enc: EncodingKey::from_ec_der(doc.as_ref()),
        jwk,
    }
}

#[derive(Clone)]
struct Idp {
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

struct External {
    issuer: String,
    fhir: String,
    idp: Idp,
    keys: HashMap<String, IdpKey>,
    smart: Smart,
}

const AUD: &str = "https://fhir.example.org/r4";

async fn external() -> External {
    external_with(|_| {}).await
}

async fn external_with(tweak: impl FnOnce(&mut AuthConfig)) -> External {
    let (l, addr) = bind().await;
    let issuer = format!("http://{addr}/realms/payer");
    let keys: HashMap<String, IdpKey> = [
        rsa_key("rsa-256", Algorithm::RS256),
        ec_key("ec-256", false),
        ec_key("ec-384", true),
    ]
    .into_iter()
    .map(|k| (k.kid.clone(), k))
    .collect();
    let mut jwks: Vec<Value> = keys.values().map(|k| k.jwk.clone()).collect();
    jwks.push(json!({"kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode(RSA_PUBLIC_PEM)}));
    let idp = Idp {
        jwks: Arc::new(Mutex::new(json!({ "keys": jwks }))),
        fetches: Arc::new(AtomicUsize::new(0)),
    };
    let disco = json!({
        "issuer": issuer, "jwks_uri": format!("{issuer}/jwks"),
        "authorization_endpoint": format!("{issuer}/auth"), "token_endpoint": format!("{issuer}/token"),
        "scopes_supported": ["openid", "offline_access", "patient/*.rs"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
    });
    let i2 = idp.clone();
    let router = Router::new()
        .route(
            "/realms/payer/.well-known/openid-configuration",
            get(move || async move { Json(disco) }),
        )
        .route(
            "/realms/payer/jwks",
            get(move || async move {
                i2.fetches.fetch_add(1, Ordering::SeqCst);
                let doc = i2.jwks.lock().unwrap().clone();
                Json(doc)
            }),
        );
    serve(l, router);
    let mut cfg = AuthConfig::external(&issuer, AUD, "fhirUser");
    tweak(&mut cfg);
    let smart = Smart::new(cfg).await.unwrap();
    let (l2, addr2) = bind().await;
    serve(l2, app(&smart));
    External {
        issuer,
        fhir: format!("http://{addr2}/fhir"),
        idp,
        keys,
        smart,
    }
}

impl External {
    fn claims(&self) -> Value {
        let t = now();
        json!({"iss": self.issuer, "aud": [AUD, "account"], "azp": "ext-app", "sub": "u-1",
               "fhirUser": format!("Patient/{ALICE_PATIENT}"), "scope": "openid patient/*.rs",
               "iat": t, "nbf": t, "exp": t + 300})
    }
    fn sign(&self, kid: &str, claims: &Value) -> String {
        let k = &self.keys[kid];
        let mut h = Header::new(k.alg);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &k.enc).unwrap()
    }
    async fn get(&self, rt: &str, token: &str) -> (StatusCode, String, String) {
        let r = http()
            .get(format!("{}/{rt}", self.fhir))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let www = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (r.status(), www, r.text().await.unwrap())
    }
}

fn hs256(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn unsigned(kid: &str, claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
    let p = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{h}.{p}.")
}

#[tokio::test]
async fn external_idp_accepts_all_four_algorithms() {
    let x = external().await;
    assert_eq!(x.smart.smart_configuration()["issuer"], x.issuer);
    assert!(x.smart.smart_configuration()["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("client-public")));
    let mut rs384 = rsa_key("rsa-256", Algorithm::RS384);
    rs384.kid = "rsa-256".into();
    for (kid, tok) in [
        ("rsa-256", x.sign("rsa-256", &x.claims())),
        ("rsa-256/RS384", {
            let mut h = Header::new(Algorithm::RS384);
            h.kid = Some("rsa-256".into());
            jsonwebtoken::encode(&h, &x.claims(), &rs384.enc).unwrap()
        }),
        ("ec-256", x.sign("ec-256", &x.claims())),
        ("ec-384", x.sign("ec-384", &x.claims())),
    ] {
        let (st, _, body) = x.get("ExplanationOfBenefit", &tok).await;
        assert_eq!(st, StatusCode::OK, "{kid}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["patients"],
            json!([ALICE_PATIENT]),
            "fhirUser claim mapped to the patient"
        );
        assert_eq!(body["client_id"], "ext-app");
    }
}

#[tokio::test]
async fn negative_suite() {
    let x = external().await;
    let good = x.claims();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let t = now();
    let other = ec_key("ec-256", false); // same kid, different key
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "malformed jwt",
            "abc.def".into(),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "expired",
            x.sign("ec-256", &with("exp", json!(t - 600))),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "not yet valid (nbf)",
            x.sign("ec-256", &with("nbf", json!(t + 600))),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "iat in the future",
            x.sign("ec-256", &with("iat", json!(t + 600))),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "wrong iss",
            x.sign("ec-256", &with("iss", json!("https://evil.example"))),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "wrong aud",
            x.sign("ec-256", &with("aud", json!("https://other.example/fhir"))),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "no exp",
            x.sign("ec-256", &{
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("exp");
                c
            }),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "bad signature",
            {
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some("ec-256".into());
                jsonwebtoken::encode(&h, &good, &other.enc).unwrap()
            },
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "tampered payload",
            {
                let s = x.sign("ec-256", &good);
                let p: Vec<&str> = s.split('.').collect();
                format!(
                    "{}.{}.{}",
                    p[0],
                    URL_SAFE_NO_PAD
                        .encode(with("fhirUser", json!("Patient/someone-else")).to_string()),
                    p[2]
                )
            },
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "alg none",
            unsigned("ec-256", &good),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "HS256 with the RSA public key PEM",
            hs256("rsa-256", RSA_PUBLIC_PEM.as_bytes(), &good),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "HS256 with the EC JWK bytes",
            hs256("ec-256", x.keys["ec-256"].jwk.to_string().as_bytes(), &good),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "HS256 with the oct key in the JWKS",
            hs256("hmac", RSA_PUBLIC_PEM.as_bytes(), &good),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "ES256 header on the RSA key",
            {
                let mut h = Header::new(Algorithm::ES256);
                h.kid = Some("rsa-256".into());
                jsonwebtoken::encode(&h, &good, &x.keys["ec-256"].enc).unwrap()
            },
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "no kid",
            {
                let h = Header::new(Algorithm::ES256);
                jsonwebtoken::encode(&h, &good, &x.keys["ec-256"].enc).unwrap()
            },
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
        (
            "missing scope for the type",
            x.sign(
                "ec-256",
                &with("scope", json!("patient/ExplanationOfBenefit.read")),
            ),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            "v2 scope without r/s",
            x.sign("ec-256", &with("scope", json!("patient/Coverage.c"))),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            "user/ scope only",
            x.sign("ec-256", &with("scope", json!("user/*.rs"))),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            "no patient",
            x.sign("ec-256", &with("fhirUser", json!("Practitioner/1"))),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
    ];
    for (name, token, status, err) in cases {
        let (st, www, body) = x.get("Coverage", &token).await;
        assert_eq!(st, status, "{name}: {body}");
        assert!(www.contains(err), "{name}: {www}");
        assert!(body.contains("OperationOutcome"), "{name}");
        assert_no_phi(&body);
        assert!(
            !body.contains(&token[..20.min(token.len())]) || token.len() < 20,
            "{name}: token echoed"
        );
    }
    // The missing-scope message names the scope.
    let (_, www, body) = x
        .get(
            "Coverage",
            &x.sign("ec-256", &with("scope", json!("patient/Coverage.c"))),
        )
        .await;
    assert!(
        www.contains("scope=\"patient/Coverage.rs\"") && body.contains("patient/Coverage.rs"),
        "{www} {body}"
    );

    // No token / malformed header.
    for (hdr, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer"), StatusCode::BAD_REQUEST),
        (Some("Bearer a b"), StatusCode::BAD_REQUEST),
        (Some("Basic dTpw"), StatusCode::UNAUTHORIZED),
    ] {
        let mut rq = http().get(format!("{}/Coverage", x.fhir));
        if let Some(h) = hdr {
            rq = rq.header("authorization", h);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status(), status, "{hdr:?}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_no_phi(&r.text().await.unwrap());
    }
}

#[tokio::test]
async fn external_idp_key_rotation_refreshes_jwks_once() {
    let x = external().await;
    let fetches = || x.idp.fetches.load(Ordering::SeqCst);
    assert_eq!(fetches(), 1, "loaded at start");
    // The IdP rotates in a new key; a token signed with it triggers one refresh and passes.
    let new = ec_key("ec-256-next", false);
    x.idp.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .push(new.jwk.clone());
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("ec-256-next".into());
    let tok = jsonwebtoken::encode(&h, &x.claims(), &new.enc).unwrap();
    let (st, _, body) = x.get("Coverage", &tok).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(fetches(), 2);
    assert_eq!(x.get("Coverage", &tok).await.0, StatusCode::OK);
    assert_eq!(fetches(), 2, "known kid: no fetch");
    // Unknown kids right after: refused, and the rate limit stops further fetches.
    for i in 0..5 {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(format!("made-up-{i}"));
        let tok = jsonwebtoken::encode(&h, &x.claims(), &new.enc).unwrap();
        let (st, www, _) = x.get("Coverage", &tok).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert!(www.contains("unknown key"), "{www}");
    }
    assert_eq!(fetches(), 2, "rate-limited");
    assert_eq!(x.smart.jwks_fetch_count(), 2);
}

#[tokio::test]
async fn external_idp_withdrawn_key_stops_verifying() {
    let x = external_with(|c| c.jwks_max_age = std::time::Duration::from_millis(300)).await;
    let tok = x.sign("ec-256", &x.claims());
    assert_eq!(x.get("Coverage", &tok).await.0, StatusCode::OK);
    // The IdP withdraws the key; once the cache is older than its maximum age it is reloaded.
    x.idp.jwks.lock().unwrap()["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] != "ec-256");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (st, www, _) = x.get("Coverage", &tok).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(www.contains("unknown key"), "{www}");
    assert_eq!(
        x.get("Coverage", &x.sign("ec-384", &x.claims())).await.0,
        StatusCode::OK
    );
}
