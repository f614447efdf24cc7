//! The embedded server's HTML: login, consent (with patient picker) and error pages.
//! Every interpolated value goes through [`escape`]. Pages are served with a strict CSP,
//! `frame-ancestors 'none'` (no clickjacking of the consent page) and `no-store`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}\
h1{font-size:1.4rem}fieldset{border:1px solid #ccc;border-radius:6px;margin:1rem 0}label{display:block;margin:.4rem 0}\
input[type=text],input[type=password]{width:100%;padding:.4rem;box-sizing:border-box}button{padding:.5rem 1.2rem;margin-right:.5rem}\
.err{color:#a40000}.muted{color:#555;font-size:.9rem}code{background:#f3f3f3;padding:0 .2rem}";

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// An error shown to the user instead of redirecting (unknown client or redirect URI).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Authorization error",
        &format!("<p class=\"err\">{}</p>", escape(message)),
    )
}

/// The sandbox login form.
pub fn login_page(request_id: &str, client_name: &str, error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<p><strong>{client}</strong> wants to access your health plan data. Sign in to continue.</p>{err}\
<form method=\"post\" action=\"login\"><input type=\"hidden\" name=\"request\" value=\"{req}\">\
<label>Username <input type=\"text\" name=\"username\" autocomplete=\"username\" required autofocus></label>\
<label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
<button type=\"submit\">Sign in</button></form><p class=\"muted\">Sandbox accounts only.</p>",
        client = escape(client_name),
        req = escape(request_id),
    );
    page(
        if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        "Sign in",
        &body,
    )
}

/// One patient the user may share, for the picker.
pub struct PatientChoice {
    /// Patient id (form value).
    pub id: String,
    /// Label shown.
    pub label: String,
}

/// The consent page: requested scopes (each may be unticked) and, for a delegate, the
/// patients whose records to share.
pub fn consent_page(
    request_id: &str,
    client_name: &str,
    user_name: &str,
    scopes: &[String],
    patients: &[PatientChoice],
    error: Option<&str>,
) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\">{}</p>", escape(e)))
        .unwrap_or_default();
    let mut scope_items = String::new();
    for s in scopes {
        scope_items.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"scope\" value=\"{v}\" checked> {d} <code>{v}</code></label>",
            v = escape(s),
            d = escape(&describe_scope(s)),
        ));
    }
    let picker = if patients.len() > 1 {
        let mut items = String::new();
        for (i, p) in patients.iter().enumerate() {
            items.push_str(&format!(
                "<label><input type=\"checkbox\" name=\"patient\" value=\"{v}\"{c}> {l}</label>",
                v = escape(&p.id),
                l = escape(&p.label),
                c = if i == 0 { " checked" } else { "" },
            ));
        }
        format!("<fieldset><legend>Whose records to share</legend>{items}</fieldset>")
    } else {
        patients
            .first()
            .map(|p| {
                format!(
                    "<input type=\"hidden\" name=\"patient\" value=\"{}\">",
                    escape(&p.id)
                )
            })
            .unwrap_or_default()
    };
    let body = format!(
        "<p>Signed in as <strong>{user}</strong>. <strong>{client}</strong> asks for the permissions below; \
untick any you do not want to grant.</p>{err}<form method=\"post\" action=\"consent\">\
<input type=\"hidden\" name=\"request\" value=\"{req}\"><fieldset><legend>Permissions</legend>{scope_items}</fieldset>{picker}\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        user = escape(user_name),
        client = escape(client_name),
        req = escape(request_id),
    );
    page(
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        "Share your data",
        &body,
    )
}

fn describe_scope(s: &str) -> String {
    match s {
        "openid" => "Know who you are".into(),
        "fhirUser" => "Know your FHIR identity".into(),
        "launch/patient" => "Know which member's record is shared".into(),
        "offline_access" => "Keep access after you sign out".into(),
        "online_access" => "Keep access while you are signed in".into(),
        _ => match super::scopes::ResourceScope::parse(s) {
            Some(r) => format!(
                "Read {} records",
                r.resource_type
                    .as_deref()
                    .map(str::to_owned)
                    .unwrap_or_else(|| "all".into())
            ),
            None => s.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
