//! The access audit log: one NDJSON line per access to member data, written to its own sink
//! (a file or stdout), never to the operational log.
//!
//! Audit lines do carry patient ids and the user: that is their purpose. Keep the sink's
//! file readable only by operators; operational logs (tracing) carry none of this.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use super::error::AuthError;
use super::validate::Grant;

/// The result of an access, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Data (possibly none) was returned.
    Success,
    /// The request was refused (401/403).
    Denied,
    /// The request failed after authorization.
    Error,
}

/// One audited access.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC time of the access.
    pub time: String,
    /// The client application, when known.
    pub client_id: Option<String>,
    /// The user (`fhirUser` or `sub`), when known.
    pub user: Option<String>,
    /// The patients whose data the token reaches.
    pub patients: Vec<String>,
    /// The resource type asked for (or an operation name such as `$everything`).
    pub resource_type: String,
    /// How many resources were returned, when known.
    pub count: Option<u64>,
    /// Success, denied or error.
    pub outcome: Outcome,
    /// The HTTP status sent.
    pub status: u16,
}

impl AuditEvent {
    /// A successful access under `grant` that returned `count` resources.
    pub fn success(grant: &Grant, resource_type: &str, count: u64) -> Self {
        Self::from_grant(grant, resource_type, Some(count), Outcome::Success, 200)
    }

    /// An access under `grant` with an explicit outcome and status.
    pub fn from_grant(
        grant: &Grant,
        resource_type: &str,
        count: Option<u64>,
        outcome: Outcome,
        status: u16,
    ) -> Self {
        AuditEvent {
            time: now_rfc3339(),
            client_id: Some(grant.client_id.clone()),
            user: grant.user.clone(),
            patients: grant.patients.clone(),
            resource_type: resource_type.to_owned(),
            count,
            outcome,
            status,
        }
    }

    /// A refused request (the token's identity is unknown or not trusted).
    pub fn denied(resource_type: &str, err: &AuthError) -> Self {
        AuditEvent {
            time: now_rfc3339(),
            client_id: None,
            user: None,
            patients: Vec::new(),
            resource_type: resource_type.to_owned(),
            count: None,
            outcome: Outcome::Denied,
            status: err.status().as_u16(),
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

enum Target {
    Stdout,
    File(File),
}

/// Where audit events go. Each event is one line, written whole and flushed.
pub struct AuditSink {
    target: Mutex<Target>,
}

impl AuditSink {
    /// Audit to standard output (for containers whose stdout is collected separately).
    pub fn stdout() -> Self {
        AuditSink {
            target: Mutex::new(Target::Stdout),
        }
    }

    /// Audit to an NDJSON file, appending; created owner-readable only.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn file(path: &Path) -> io::Result<Self> {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        Ok(AuditSink {
            target: Mutex::new(Target::File(opts.open(path)?)),
        })
    }

    /// Writes one event.
    ///
    /// # Errors
    /// The write failed; callers should treat a failed audit as a failed request.
    pub fn record(&self, event: &AuditEvent) -> io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut t = self.target.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *t {
            Target::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&line)?;
                out.flush()
            }
            Target::File(f) => {
                f.write_all(&line)?;
                f.flush()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smart::scopes::Scopes;

    #[test]
    fn writes_one_json_line_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.ndjson");
        let sink = AuditSink::file(&path).unwrap();
        let g = Grant {
            client_id: "app".into(),
            user: Some("Patient/1".into()),
            patients: vec!["1".into()],
            scopes: Scopes::parse("patient/*.rs"),
        };
        sink.record(&AuditEvent::success(&g, "Coverage", 2))
            .unwrap();
        sink.record(&AuditEvent::denied("Coverage", &AuthError::MissingToken))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["patients"], serde_json::json!(["1"]));
        assert_eq!(lines[0]["count"], 2);
        assert_eq!(lines[0]["outcome"], "success");
        assert_eq!(lines[1]["outcome"], "denied");
        assert_eq!(lines[1]["status"], 401);
    }
}
