#!/usr/bin/env python3
"""Oracle for fhirlake's X12 837 reader, using pyx12 (PyPI `pyx12`) through its Python API.

For each sample file it prints, as JSON, whether pyx12 finds the file valid (with its first
errors) and, for files pyx12 can walk, the 2300 (claim) loops it sees and their CLM01 values.

    pip install pyx12
    python3 tests/oracle/pyx12_check.py [FILES...]            # pyx12's answer
    python3 tests/oracle/pyx12_check.py --compare [FILES...]  # vs. fhirlake's x12dump

pyx12 only ships maps for 005010X222A1 (837P) and 005010X223A2 (837I), so each file is
validated from a temporary copy in which the guide labels are rewritten: X222A2 -> X222A1,
X223A3 -> X223A2, and a bare 005010X222 -> 005010X222A1. pyx12's CLI exit codes do not say
whether a file is valid, hence the API. With --compare, the claim ids found by pyx12 and by
fhirlake (`cargo run -q -p ingest --example x12dump`) are compared per file; disagreements
that come from a known defect of the sample are listed in KNOWN and reported as such.
"""

import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile

import pyx12.error_handler
import pyx12.params
import pyx12.x12context
import pyx12.x12n_document

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "crates/ingest/tests/fixtures/x12")

# Why pyx12 and fhirlake may legitimately disagree on a sample (file name -> explanation).
KNOWN = {
    "lfh_837i_institutional_claim.837i": (
        "valid for fhirlake; pyx12 flags TR3 code-list details (e.g. a 5-digit N4 ZIP where "
        "the guide wants 9 digits for the billing provider) that fhirlake does not police."
    ),
    "lfh_837i_two_claims_single_provider.837i": "as above (billing provider N4 ZIP of 5 digits).",
    "lfh_837p_ambulance_example5.837": (
        "pyx12 flags CLM05-2 (facility code qualifier) empty in '41::1'; fhirlake reads CLM05-1 "
        "and CLM05-3 only."
    ),
    "zx12_837i_cob_line_adjudication.x12": (
        "IEA02/ISA13, GE02/GS06 and SE01 mismatches, GS08 (X222A1) vs ST03 (X223A2): invalid "
        "for pyx12, notices for fhirlake; both find claim ABC0002."
    ),
    "imsweb_837p_complex.txt": (
        "ICD-9-style HI with qualifier and code in separate elements, wrong SE01 counts, "
        "GE01=1 for two sets, HL parent ids that do not match: pyx12 reports these as errors "
        "(invalid) but "
        "still walks the claims; fhirlake reads them leniently and reports notices."
    ),
    "imsweb_837p_multiple_st.txt": "wrong SE01 counts, GE01=1 for two sets, ICD-9-style HI (as above).",
    "zx12_837p_one_line.x12": "SE01 count wrong: invalid for pyx12, a notice for fhirlake.",
    "imsweb_missing_elements.txt": (
        "NM1*40 NM102 and CLM05 missing: pyx12 marks the file invalid but walks both 2300 "
        "loops; fhirlake accepts claim A37YH556 and rejects A37YH667 (MissingValue)."
    ),
    "imsweb_segments_out_of_order.txt": (
        "N3/N4 swapped in 2010AA and 2010AB: pyx12 reports the N4 at segment 12 out of place "
        "(as fhirlake does) but still walks both 2300 loops; fhirlake rejects both claims "
        "because their billing provider loop is corrupt."
    ),
    "imsweb_bad_segment_identifier.txt": (
        "garbled segment ids: pyx12 reports segment 6 '*IC' (as fhirlake does), skips it and "
        "still walks both 2300 loops; fhirlake rejects both claims (the set header is corrupt)."
    ),
    "zx12_truncated_transaction.x12": "no claims in either reader; pyx12 flags missing loops.",
    "imsweb_bad_first_line.txt": (
        "105-byte ISA: neither reader accepts it (fhirlake: Envelope reject, delimiter expected "
        "at byte offset 17)."
    ),
}

REWRITES = [
    (re.compile(rb"005010X222A2"), b"005010X222A1"),
    (re.compile(rb"005010X223A3"), b"005010X223A2"),
    (re.compile(rb"005010X222(?![A-Z0-9])"), b"005010X222A1"),
]


def flatten_errors(node, seg=None, out=None):
    """pyx12's JSON error document is nested (interchange/group/set/segment/element);
    return a flat list of "segment id @ line: message"."""
    if out is None:
        out = []
    if isinstance(node, dict):
        seg = node.get("seg_id", seg)
        for e in node.get("errors", []) or []:
            if isinstance(e, dict):
                where = f"{seg or '-'}@{node.get('cur_line')}"
                out.append(f"{where}: {e.get('err_str')}")
        for v in node.values():
            if isinstance(v, (list, dict)):
                flatten_errors(v, seg, out)
    elif isinstance(node, list):
        for v in node:
            flatten_errors(v, seg, out)
    return out


def rewritten_copy(path, tmpdir):
    data = open(path, "rb").read()
    # pyx12 cannot read a UTF-8 byte-order mark; fhirlake tolerates it.
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for pat, rep in REWRITES:
        data = pat.sub(rep, data)
    out = os.path.join(tmpdir, os.path.basename(path))
    with open(out, "wb") as f:
        f.write(data)
    return out


def check(path):
    res = {"file": os.path.basename(path)}
    with tempfile.TemporaryDirectory() as tmp:
        src = rewritten_copy(path, tmp)
        param = pyx12.params.params()
        errs = io.StringIO()
        try:
            valid = pyx12.x12n_document.x12n_document(
                param, src, fd_997=None, fd_html=None, fd_xmldoc=None, fd_json=errs
            )
        except Exception as e:  # pyx12 raises on some broken inputs
            valid = False
            errs.write(json.dumps({"exception": repr(e)}))
        res["valid"] = bool(valid)
        text = errs.getvalue().strip()
        try:
            parsed = json.loads(text) if text else []
        except ValueError:
            parsed = [line for line in text.splitlines() if line.strip()]
        flat = flatten_errors(parsed)
        res["error_count"] = len(flat)
        res["errors"] = flat[:6]
        ids = []
        try:
            errh = pyx12.error_handler.errh_null()
            with open(src, encoding="latin-1") as fd:
                reader = pyx12.x12context.X12ContextReader(param, errh, fd)
                for node in reader.iter_segments("2300"):
                    if node.id == "2300":
                        ids.append(node.get_value("CLM01"))
        except Exception as e:
            res["walk_error"] = repr(e)
        res["claims_2300"] = len(ids)
        res["claim_ids"] = ids
    return res


def fhirlake(files):
    subprocess.run(["cargo", "build", "-q", "--workspace", "--example", "x12dump"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    cmd = [os.path.join(target, "debug", "examples", "x12dump")] + files
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, text=True).stdout
    return {os.path.basename(d["file"]): d for d in json.loads(out)}


def main(argv):
    logging.disable(logging.CRITICAL)
    compare = "--compare" in argv
    files = [a for a in argv if not a.startswith("--")]
    if not files:
        for sub in ("good", "bad"):
            d = os.path.join(FIXTURES, sub)
            files += sorted(
                os.path.join(d, f) for f in os.listdir(d) if f != "SOURCES.tsv"
            )
    results = [check(f) for f in files]
    if not compare:
        print(json.dumps(results, indent=2))
        return 0
    ours = fhirlake(files)
    report = []
    disagreements = 0
    unexplained = 0
    for r in results:
        name = r["file"]
        o = ours.get(name, {})
        same = o.get("claim_ids") == r["claim_ids"]
        entry = {
            "file": name,
            "pyx12_valid": r["valid"],
            "pyx12_errors": r["errors"],
            "pyx12_claims": r["claim_ids"],
            "fhirlake_claims": o.get("claim_ids"),
            "fhirlake_rejects": [
                {k: j[k] for k in ("reason", "segment", "context")} for j in o.get("rejects", [])
            ],
            "fhirlake_notices": len(o.get("notices", [])),
            "agree": same,
        }
        if not same:
            disagreements += 1
            if name in KNOWN:
                entry["known_defect"] = KNOWN[name]
            else:
                unexplained += 1
        elif name in KNOWN and not r["valid"]:
            entry["note"] = KNOWN[name]
        report.append(entry)
    print(json.dumps({"files": report, "disagreements": disagreements,
                      "unexplained": unexplained}, indent=2))
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
