//! Test helpers: run the binary, build a lake from `samples/`, start `fhirlake serve`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The fhirlake binary under test.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fhirlake"));
    c.current_dir(root());
    c.env("FHIRLAKE_LOG", "warn");
    c
}

/// The repository root, as `cargo test` gives it when the tests run. (The path baked in at
/// build time can name another clone when clones share a target directory and a stale test
/// binary is taken as fresh.)
pub fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

/// Run a command to its end and require success (its stderr is the failure message).
pub fn succeed(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("run the command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `fhirlake ingest` and return (status code, stdout).
pub fn ingest(lake: &Path, paths: &[&str]) -> (i32, String) {
    let out = bin()
        .arg("ingest")
        .arg("--lake")
        .arg(lake)
        .args(paths)
        .output()
        .expect("run fhirlake ingest");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// The ids of one type's resources in the lake's current snapshot, in export order.
pub fn exported_ids(lake: &Path, resource_type: &str) -> Vec<String> {
    export(lake)
        .into_iter()
        .filter(|r| r["resourceType"] == resource_type)
        .map(|r| r["id"].as_str().expect("an id").to_string())
        .collect()
}

/// All resources of the lake's current snapshot, via `fhirlake export`.
pub fn export(lake: &Path) -> Vec<Value> {
    let out = bin()
        .arg("export")
        .arg("--lake")
        .arg(lake)
        .output()
        .expect("export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("exported line is JSON"))
        .collect()
}

/// A running `fhirlake serve`, stopped on drop.
pub struct Server {
    child: Child,
    /// The FHIR base URL.
    pub base: String,
    /// The lake it serves.
    pub lake: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start `fhirlake serve` on port 0 over `lake` and wait for its base URL.
    pub fn start(lake: &Path) -> Server {
        let mut child = bin()
            .args(["serve", "--listen", "127.0.0.1:0", "--lake"])
            .arg(lake)
            .arg("--audit-log")
            .arg(lake.join("audit.ndjson"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fhirlake serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read base url");
        let base = line
            .trim()
            .strip_prefix("fhirlake serving ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            base,
            lake: lake.to_path_buf(),
        }
    }

    /// A token for `patient` with `scope`, from `fhirlake token` (same signing key).
    pub fn token(&self, patient: &str, scope: &str) -> String {
        let out = bin()
            .args(["token", "--patient", patient, "--scope", scope, "--lake"])
            .arg(&self.lake)
            .args(["--base-url", &self.base])
            .output()
            .expect("fhirlake token");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// GET a path (relative to the base, or absolute) with an optional token.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path)
        };
        let client = reqwest::blocking::Client::new();
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let body = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }
}

/// A lake built from the bundled samples (once per test that calls it).
pub fn sample_lake() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out) = ingest(
        dir.path(),
        &[
            "samples/rif",
            "samples/plain",
            "samples/x12",
            "samples/formulary",
        ],
    );
    assert_eq!(code, 0, "{out}");
    dir
}

/// Ids of a Bundle's entries with the given search mode.
pub fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| key(&e["resource"]))
                .collect()
        })
        .unwrap_or_default()
}

/// A resource's `Type/id`.
pub fn key(resource: &Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap_or(""),
        resource["id"].as_str().unwrap_or("")
    )
}

/// The `next` link of a Bundle.
pub fn next(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

/// Resources without the `meta.lastUpdated` the lake sets, sorted by type and id: what must be
/// equal between two runs over the same content.
pub fn stable(mut v: Vec<Value>) -> Vec<Value> {
    for r in &mut v {
        if let Some(m) = r.get_mut("meta").and_then(Value::as_object_mut) {
            m.remove("lastUpdated");
        }
    }
    v.sort_by_key(|r| format!("{}/{}", r["resourceType"], r["id"]));
    v
}

/// Every file under `dir`, relative to it, sorted (partial files and staging directories of a
/// failed run would show here).
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir)
            .expect("read a lake directory")
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The billed (`submitted`) amount of an EOB's first line.
pub fn first_line_billed(eob: &Value) -> f64 {
    eob["item"][0]["adjudication"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["category"]["coding"][0]["code"] == "submitted")
        .and_then(|a| a["amount"]["value"].as_f64())
        .unwrap_or_else(|| panic!("no submitted amount: {eob}"))
}
