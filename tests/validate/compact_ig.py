#!/usr/bin/env python3
"""Copy the conformance resources that validate_profiles.py needs from the published IGs.

    python3 tests/validate/compact_ig.py ../shared/reference/ig tests/validate/ig

Reads the C4BB 2.1.0 and PDex US Drug Formulary 2.0.1 StructureDefinitions (with snapshots),
ValueSets, CodeSystems and server CapabilityStatements, and writes them to OUT keeping only what validation reads: each
element's id, path, slice name, cardinality, types, fixed and pattern values, slicing,
binding and invariants. Both IGs are HL7 publications under CC0; see OUT/SOURCES.md.
"""

import json
import pathlib
import sys

ELEMENT_KEYS = {"id", "path", "sliceName", "min", "max", "type", "slicing", "contentReference"}


def compact_element(e):
    out = {k: v for k, v in e.items() if k in ELEMENT_KEYS}
    for k, v in e.items():
        if k.startswith("fixed") or k.startswith("pattern"):
            out[k] = v
    if "binding" in e and "valueSet" in e["binding"]:
        out["binding"] = {"strength": e["binding"]["strength"], "valueSet": e["binding"]["valueSet"]}
    cons = [
        {k: c[k] for k in ("key", "severity", "human", "expression") if k in c}
        for c in e.get("constraint", [])
        if "expression" in c
    ]
    if cons:
        out["constraint"] = cons
    return out


def compact(res):
    kind = res["resourceType"]
    if kind == "StructureDefinition":
        keep = {k: res[k] for k in ("resourceType", "url", "version", "name", "type", "kind", "baseDefinition") if k in res}
        keep["snapshot"] = {"element": [compact_element(e) for e in res["snapshot"]["element"]]}
        return keep
    if kind == "ValueSet":
        return {k: res[k] for k in ("resourceType", "url", "version", "name", "compose", "expansion") if k in res}
    if kind == "CapabilityStatement":
        return {k: res[k] for k in ("resourceType", "url", "version", "name", "rest") if k in res}
    if kind == "CodeSystem":
        return {k: res[k] for k in ("resourceType", "url", "version", "name", "content", "concept") if k in res}
    return None


def main():
    src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    seen = set()
    for f in sorted(src.rglob("*.json")):
        if f.name.split("-")[0] not in ("StructureDefinition", "ValueSet", "CodeSystem", "CapabilityStatement"):
            continue
        res = compact(json.loads(f.read_text()))
        if res is None or (res["resourceType"] == "StructureDefinition" and "snapshot" not in res):
            continue
        if res["url"] in seen:  # the same resource published twice in an IG's folders
            continue
        seen.add(res["url"])
        (out / f.name).write_text(json.dumps(res, separators=(",", ":"), sort_keys=True) + "\n")
        n += 1
    print(f"{n} conformance resources written to {out}")


if __name__ == "__main__":
    main()
