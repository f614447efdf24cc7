#!/usr/bin/env python3
"""Validate FHIR R4 resources with a third-party structural validator.

Usage: validate_fhir.py PATH [PATH ...]

Each PATH is a file or a directory (searched recursively for *.json and *.ndjson).
  *.ndjson  one resource per line
  *.json    one resource, a JSON array of resources, or a Bundle (its entries are validated)

Every resource is parsed with fhir.resources (the last FHIR R4 release, 6.4.0, on pydantic 1):
  pip install 'fhir.resources==6.4.0' 'pydantic<2'
via fhir.resources.construct_fhir_element(resourceType, obj), which checks element names,
datatypes, cardinality of required elements and primitive formats (ids, dates, codes, ...).
It does not check profiles (PDex, C4BB); the Rust tests do that.

Prints one line per failure and a summary line; exits 1 on any failure, 2 on bad usage.
"""

import json
import sys
from pathlib import Path


def resources_in(path: Path):
    """Yield (label, resource dict) for every resource in a file."""
    if path.suffix == ".ndjson":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    yield f"{path}:{n}", json.loads(line)
        return
    doc = json.loads(path.read_text(encoding="utf-8"))
    items = doc if isinstance(doc, list) else [doc]
    for i, item in enumerate(items):
        label = f"{path}[{i}]" if isinstance(doc, list) else str(path)
        yield label, item
        if isinstance(item, dict) and item.get("resourceType") == "Bundle":
            for k, entry in enumerate(item.get("entry") or []):
                if isinstance(entry, dict) and "resource" in entry:
                    yield f"{label}.entry[{k}]", entry["resource"]


def files(args):
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            yield from sorted(x for x in p.rglob("*") if x.suffix in (".json", ".ndjson"))
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(arg)


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        import fhir.resources
        from fhir.resources import construct_fhir_element
    except ImportError:
        print("fhir.resources is not installed: pip install 'fhir.resources==6.4.0' 'pydantic<2'",
              file=sys.stderr)
        return 2
    ok = failed = 0
    by_type = {}
    for f in files(argv[1:]):
        try:
            items = list(resources_in(f))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            print(f"FAIL {f}: not JSON: {e}")
            failed += 1
            continue
        for label, res in items:
            rtype = res.get("resourceType") if isinstance(res, dict) else None
            if not rtype:
                print(f"FAIL {label}: no resourceType")
                failed += 1
                continue
            try:
                construct_fhir_element(rtype, res)
            except Exception as e:  # pydantic.ValidationError and unknown resource types
                msg = " ".join(str(e).split())
                print(f"FAIL {label} {rtype}/{res.get('id')}: {msg}")
                failed += 1
                continue
            ok += 1
            by_type[rtype] = by_type.get(rtype, 0) + 1
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(by_type.items()))
    print(f"fhir.resources {fhir.resources.__version__} (FHIR R4): {ok} valid, {failed} invalid"
          + (f" [{kinds}]" if kinds else ""))
    return 1 if failed or ok == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
