//! Print what fhirlake's X12 reader makes of each file, as JSON (one object per file):
//! claim count, claim ids, the loop each claim was read from, rejects and notices.
//!
//! `cargo run -p ingest --example x12dump -- FILE...` (`--debug` adds the full records).

use ingest::x12::X12Reader;
use ingest::{Reader, SourceRecord};
use serde_json::{json, Value};

fn main() {
    let mut debug = false;
    let mut out = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--debug" {
            debug = true;
            continue;
        }
        let mut claims = Vec::new();
        let mut rejects = Vec::new();
        let mut dump = Vec::new();
        let res = X12Reader.read(std::path::Path::new(&arg), &mut |item| match item {
            Ok(SourceRecord::Claim(c)) => {
                claims.push(json!({
                    "claim_id": c.claim_id,
                    "loop": c.position.context,
                    "segment": c.position.segment,
                    "kind": c.kind.map(|k| k.as_str()),
                    "member_id": c.member_id,
                    "lines": c.lines.len(),
                }));
                if debug {
                    dump.push(format!("{c:#?}"));
                }
            }
            Ok(_) => {}
            Err(r) => rejects.push(json!({
                "reason": r.reason.as_str(),
                "segment": r.position.segment,
                "byte_offset": r.position.byte_offset,
                "context": r.position.context,
                "message": r.message,
            })),
        });
        let v: Value = match res {
            Ok(s) => json!({
                "file": arg,
                "claims": claims.len(),
                "claim_ids": claims.iter().map(|c| c["claim_id"].clone()).collect::<Vec<_>>(),
                "claim_detail": claims,
                "rejects": rejects,
                "notices": s.notices.iter().map(|n| json!({
                    "segment": n.position.segment, "message": n.message})).collect::<Vec<_>>(),
                "segments": s.units,
            }),
            Err(e) => json!({"file": arg, "error": e.to_string()}),
        };
        for d in dump {
            eprintln!("{d}");
        }
        out.push(v);
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}
