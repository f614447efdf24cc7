#!/usr/bin/env python3
"""Check FHIR resources against the profiles they claim, from the profiles' own snapshots.

    python3 tests/validate/validate_profiles.py LAKE_EXPORT.ndjson [--ig tests/validate/ig]

Every resource whose `meta.profile` names a C4BB 2.1.0 or PDex formulary 2.0.1 profile is
checked against that profile's StructureDefinition snapshot (in `tests/validate/ig`, copied
from the published IGs by `compact_ig.py`):

- cardinality of every element (min and max), in every slice;
- fixed and pattern values;
- slicing: each repetition is assigned to the slice its discriminators (value, pattern,
  exists; type and profile discriminators are not tested) pick; slice cardinalities hold, and
  a closed slicing has nothing left over;
- required bindings to the value sets the IGs define (codes of external code systems that no
  IG here spells out are not checked);
- references: the referenced resource is of an allowed type, is in the export, and claims the
  target profile when the profile names one;
- extensions with a profile are checked against the extension's StructureDefinition;
- elements the snapshot does not define are errors;
- every invariant (FHIRPath, evaluated with PyPI `fhirpathpy`; `memberOf` and `resolve` are
  answered from the IG value sets and the export), except the core `ele-1`/`ext-1` that the
  structural validator covers.

Errors (and invariants of severity error) fail the run; warning invariants are counted. The
C4BB 2.1.0 invariants that no resource can meet in the cases `IG_CONFLICTS` names are counted
and reported instead, and `--tolerate KEY` does the same for an invariant the input data breaks
(the reference samples' synthetic NPIs). `--self-test` then mutates valid resources of the
export in ways that must be reported, and fails unless each one is.
"""

import argparse
import collections
import json
import pathlib
import sys

from fhirpathpy import evaluate as fhirpath
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models

# Codes of code systems outside the IGs that their required bindings use, from FHIR R4
# (hl7.org/fhir and terminology.hl7.org). Code systems neither here nor in the IGs are not
# checked.
CODE_SYSTEMS = {
    "http://terminology.hl7.org/CodeSystem/adjudication":
        "submitted copay eligible deductible unallocdeduct eligpercent tax benefit",
    "http://terminology.hl7.org/CodeSystem/payeetype": "subscriber provider other",
    "http://terminology.hl7.org/CodeSystem/claim-type": "institutional oral pharmacy professional vision",
    "http://terminology.hl7.org/CodeSystem/claiminformationcategory":
        "info discharge onset related exception material attachment missingtooth prosthesis other "
        "hospitalized employmentimpacted externalcause patientreasonforvisit",
    "http://terminology.hl7.org/CodeSystem/ex-diagnosistype":
        "admitting clinical differential discharge laboratory nursing prenatal principal radiology "
        "remote retrospective self",
    "http://hl7.org/fhir/administrative-gender": "male female other unknown",
    "http://hl7.org/fhir/claim-use": "claim preauthorization predetermination",
    "http://hl7.org/fhir/contact-point-system": "phone fax email pager url sms other",
    "http://hl7.org/fhir/explanationofbenefit-status": "active cancelled draft entered-in-error",
    "http://hl7.org/fhir/fm-status": "active cancelled draft entered-in-error",
    "http://terminology.hl7.org/CodeSystem/medicationknowledge-status": "active inactive entered-in-error",
    "http://hl7.org/fhir/publication-status": "draft active retired unknown",
    "http://hl7.org/fhir/remittance-outcome": "queued complete error partial",
    "http://terminology.hl7.org/CodeSystem/subscriber-relationship":
        "child parent spouse common other self injured",
    "http://unitsofmeasure.org": "s min h d wk mo a",
}

# FHIR R4 core value sets (http://hl7.org/fhir/ValueSet/NAME) that the profiles bind as
# required, each all of one code system above.
CORE_VALUE_SETS = {
    "administrative-gender": "http://hl7.org/fhir/administrative-gender",
    "claim-type": "http://terminology.hl7.org/CodeSystem/claim-type",
    "claim-use": "http://hl7.org/fhir/claim-use",
    "contact-point-system": "http://hl7.org/fhir/contact-point-system",
    "explanationofbenefit-status": "http://hl7.org/fhir/explanationofbenefit-status",
    "fm-status": "http://hl7.org/fhir/fm-status",
    "medicationknowledge-status": "http://terminology.hl7.org/CodeSystem/medicationknowledge-status",
    "publication-status": "http://hl7.org/fhir/publication-status",
    "remittance-outcome": "http://hl7.org/fhir/remittance-outcome",
    "subscriber-relationship": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
    "units-of-time": "http://unitsofmeasure.org",
}

SKIP_CONSTRAINTS = {"ele-1", "ext-1"}

# Invariants of C4BB 2.1.0 that no resource can meet in the cases named: failures there are
# counted and reported instead of failing the run. Each case is (why, a test of the element the
# invariant failed on, given the export's resources).
def _role(node, codes):
    return any(c.get("code") in codes for c in node.get("role", {}).get("coding", []))


def _provider_is(node, resources, rtype):
    ref = node.get("provider", {}).get("reference", "")
    return ref.startswith(rtype + "/") and ref in resources


IG_CONFLICTS = {
    "EOB-pharm-careTeam-practitioner": (
        "the expression tests `resolve() is Organization` for the prescribing and primary roles, "
        "contradicting its own text (a prescriber is a person)",
        lambda n, rs: _role(n, {"prescribing", "primary"}) and _provider_is(n, rs, "Practitioner"),
    ),
    "EOB-vision-item-productorservice": (
        "a professional line whose source has no procedure code: the required binding of "
        "item.productOrService offers only data-absent-reason not-applicable, which this "
        "invariant forbids outside vision claims",
        lambda n, rs: any(
            c.get("code") == "not-applicable"
            for i in n.get("item", [])
            for c in i.get("productOrService", {}).get("coding", [])
        ),
    ),
    "EOB-inst-careTeam-organization": (
        "an institutional claim line's rendering physician (CMS RNDRNG_PHYSN_NPI, 837I loop 2420C) "
        "is a person, but the profile's only role for a line's provider, rendering, must be an "
        "Organization",
        lambda n, rs: _role(n, {"rendering"}) and _provider_is(n, rs, "Practitioner"),
    ),
    "EOB-careteam-qualification": (
        "the same rendering physician: the sources carry no NUCC taxonomy code for them",
        lambda n, rs: _role(n, {"rendering"}) and _provider_is(n, rs, "Practitioner")
        and not n.get("qualification"),
    ),
}


class Ig:
    """The conformance resources: profiles, value sets, code systems."""

    def __init__(self, folder):
        self.profiles, self.valuesets, self.codesystems = {}, {}, {}
        for f in sorted(pathlib.Path(folder).glob("*.json")):
            r = json.loads(f.read_text())
            kinds = {"StructureDefinition": self.profiles, "ValueSet": self.valuesets,
                     "CodeSystem": self.codesystems}
            if r["resourceType"] in kinds:
                kinds[r["resourceType"]][r["url"]] = r
        self._compiled = {}
        self._expansions = {}

    def profile(self, url):
        url = url.split("|")[0]
        if url not in self.profiles:
            return None
        if url not in self._compiled:
            self._compiled[url] = Profile(self.profiles[url])
        return self._compiled[url]

    def codes(self, vs_url):
        """The (system, code) pairs of a value set, or None when it can't be expanded here."""
        vs_url = vs_url.split("|")[0]
        if vs_url in self._expansions:
            return self._expansions[vs_url]
        self._expansions[vs_url] = None  # guards against cycles
        vs = self.valuesets.get(vs_url)
        out = None
        core = vs_url.rsplit("/", 1)[1]
        if vs_url.startswith("http://hl7.org/fhir/ValueSet/") and core in CORE_VALUE_SETS:
            system = CORE_VALUE_SETS[core]
            out = {(system, c) for c in CODE_SYSTEMS[system].split()}
        elif vs is not None:
            out = self._expand(vs)
        self._expansions[vs_url] = out
        return out

    def _expand(self, vs):
        if "expansion" in vs and "contains" in vs["expansion"]:
            return {(c.get("system"), c["code"]) for c in vs["expansion"]["contains"]}
        compose = vs.get("compose")
        if not compose:
            return None
        out = set()
        for inc in compose.get("include", []):
            part = self._include(inc)
            if part is None:
                return None
            out |= part
        for exc in compose.get("exclude", []):
            part = self._include(exc)
            if part is None:
                return None
            out -= part
        return out

    def _include(self, inc):
        if "filter" in inc:
            return None
        sets = []
        for v in inc.get("valueSet", []):
            c = self.codes(v)
            if c is None:
                return None
            sets.append(c)
        system = inc.get("system")
        if system is not None:
            if "concept" in inc:
                own = {(system, c["code"]) for c in inc["concept"]}
            elif system in self.codesystems and self.codesystems[system].get("content") == "complete":
                own = {(system, c) for c in all_concepts(self.codesystems[system].get("concept", []))}
            elif system in CODE_SYSTEMS:
                own = {(system, c) for c in CODE_SYSTEMS[system].split()}
            else:
                return None
            sets.append(own)
        if not sets:
            return None
        out = sets[0]
        for s in sets[1:]:
            out = out & s
        return out


def all_concepts(concepts):
    for c in concepts:
        yield c["code"]
        yield from all_concepts(c.get("concept", []))


class Profile:
    """A StructureDefinition's snapshot, indexed by element id."""

    def __init__(self, sd):
        self.url, self.type = sd["url"], sd["type"]
        self.elements = {e["id"]: e for e in sd["snapshot"]["element"]}
        self.children = collections.defaultdict(list)
        self.root = sd["snapshot"]["element"][0]["id"]
        for e in sd["snapshot"]["element"][1:]:
            parent, _, _ = e["id"].rpartition(".")
            self.children[parent].append(e)


def split_name(last):
    name, _, slice_name = last.partition(":")
    return name, slice_name or None


def as_list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def matches_pattern(value, pattern):
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(matches_pattern(value.get(k), p) for k, p in pattern.items())
    if isinstance(pattern, list):
        vals = as_list(value)
        return all(any(matches_pattern(v, p) for v in vals) for p in pattern)
    return value == pattern


def fixed_or_pattern(el):
    for k, v in el.items():
        if k.startswith("fixed"):
            return "fixed", v
        if k.startswith("pattern"):
            return "pattern", v
    return None, None


def type_codes(el):
    return [t["code"] for t in el.get("type", [])]


def choice_values(obj, name, el):
    """The (key, value) an `x[x]` element has in `obj`."""
    stem = name[:-3]
    out = []
    for t in type_codes(el):
        key = stem + t[0].upper() + t[1:]
        if key in obj:
            out.append((key, obj[key]))
    return out


def in_codes(value, codes):
    """Whether a code, Coding or CodeableConcept value has a code of `codes`."""
    if isinstance(value, str):
        return any(value == c for _, c in codes)
    if isinstance(value, dict) and "coding" in value:
        return any(in_codes(c, codes) for c in value["coding"])
    if isinstance(value, dict) and "code" in value:
        return (value.get("system"), value["code"]) in codes
    return False


class Validator:
    def __init__(self, ig, resources, tolerated=()):
        self.ig = ig
        self.tolerated = set(tolerated)
        self.conflicts = collections.Counter()
        self.resources = resources
        self.errors = []
        self.warnings = collections.Counter()
        self.checked = collections.Counter()
        self.unchecked_bindings = set()
        self.invariants_run = 0
        self.invariants_not_evaluable = collections.Counter()

    # -- reporting
    def error(self, res, where, msg):
        self.errors.append(f"{res['resourceType']}/{res.get('id')} {where}: {msg}")

    # -- terminology and references for FHIRPath
    def member_of(self, inputs, vs):
        if not inputs:
            return []
        codes = self.ig.codes(vs)
        if codes is None:
            raise NotEvaluable(f"value set {vs} not expandable here")
        return [all(in_codes(i, codes) for i in inputs)] if inputs else []

    def resolve(self, inputs):
        out = []
        for i in inputs:
            ref = i.get("reference") if isinstance(i, dict) else i
            if isinstance(ref, str) and ref in self.resources:
                out.append(ResourceNode.create_node(self.resources[ref]))
        return out

    # -- the walk
    def validate(self, res):
        for url in res.get("meta", {}).get("profile", []):
            prof = self.ig.profile(url)
            if prof is None:
                continue
            self.checked[prof.url] += 1
            self.node(res, res, prof, prof.root, res["resourceType"])

    def node(self, res, obj, prof, eid, where):
        el = prof.elements[eid]
        self.invariants(res, obj, el, where)
        if not isinstance(obj, dict):
            return
        kids = prof.children.get(eid)
        if not kids and ":" in eid.rpartition(".")[2]:
            # A slice whose children the snapshot does not list: its base element's.
            base = eid.rpartition(":")[0]
            kids = prof.children.get(base)
            eid = base
        if not kids:
            return
        groups = collections.OrderedDict()
        for k in kids:
            name, slice_name = split_name(k["id"].rpartition(".")[2])
            g = groups.setdefault(name, {"base": None, "slices": []})
            if slice_name is None:
                g["base"] = k
            elif "/" not in slice_name:
                g["slices"].append(k)
        known = {"resourceType"} if eid == prof.root and prof.type != "Extension" else set()
        for name, g in groups.items():
            base = g["base"]
            if base is None:
                continue
            if name.endswith("[x]"):
                found = choice_values(obj, name, base)
                known.update(k for k, _ in found)
                known.update("_" + k for k, _ in found)
                if len(found) > 1:
                    self.error(res, f"{where}.{name}", "more than one type given")
                values = [v for _, vv in found for v in as_list(vv)]
                label = found[0][0] if found else name
            else:
                known.update((name, "_" + name))
                values = as_list(obj.get(name))
                label = name
                if not values and "_" + name in obj:
                    # A primitive given only by its extensions (e.g. a data-absent-reason):
                    # present for cardinality, with no value to check.
                    self.cardinality(res, as_list(obj["_" + name]), base, f"{where}.{label}")
                    continue
            self.element(res, values, prof, base, g["slices"], f"{where}.{label}")
        for key in obj:
            if key not in known:
                self.error(res, f"{where}.{key}", "element not defined by the profile")

    def element(self, res, values, prof, base, slices, where):
        self.cardinality(res, values, base, where)
        for v in values:
            self.value_rules(res, v, base, where)
        assigned = [None] * len(values)
        if slices and "slicing" in base:
            slicing = base["slicing"]
            for i, v in enumerate(values):
                for s in slices:
                    if self.in_slice(v, prof, s, slicing):
                        assigned[i] = s
                        break
            for s in slices:
                inside = [v for v, a in zip(values, assigned) if a is s]
                self.cardinality(res, inside, s, f"{where}:{s['sliceName']}")
                for v in inside:
                    self.value_rules(res, v, s, f"{where}:{s['sliceName']}")
            if slicing.get("rules") == "closed":
                for v, a in zip(values, assigned):
                    if a is None:
                        self.error(res, where, f"matches no slice of a closed slicing: {json.dumps(v)[:160]}")
        for i, v in enumerate(values):
            el = assigned[i] or base
            at = f"{where}[{i}]" if len(values) > 1 else where
            if assigned[i] is not None:
                at += f":{assigned[i]['sliceName']}"
            if isinstance(v, dict) and "resourceType" in v:
                continue  # contained resources
            self.node(res, v, prof, el["id"], at)
            for t in el.get("type", []):
                if t["code"] == "Extension" and t.get("profile"):
                    for p in t["profile"]:
                        ext = self.ig.profile(p)
                        if ext is not None:
                            self.node(res, v, ext, ext.root, at)

    def cardinality(self, res, values, el, where):
        n = len(values)
        if n < el.get("min", 0):
            self.error(res, where, f"{n} present, profile requires at least {el['min']}")
        mx = el.get("max", "*")
        if mx != "*" and n > int(mx):
            self.error(res, where, f"{n} present, profile allows at most {mx}")

    def value_rules(self, res, v, el, where):
        kind, want = fixed_or_pattern(el)
        if kind == "fixed" and v != want:
            self.error(res, where, f"{json.dumps(v)[:120]} is not the fixed value {json.dumps(want)[:120]}")
        if kind == "pattern" and not matches_pattern(v, want):
            self.error(res, where, f"{json.dumps(v)[:120]} does not match the pattern {json.dumps(want)[:120]}")
        b = el.get("binding")
        if b and b["strength"] == "required" and "Reference" not in type_codes(el):
            codes = self.ig.codes(b["valueSet"])
            if codes is None:
                self.unchecked_bindings.add(b["valueSet"])
            elif not in_codes(v, codes):
                self.error(res, where, f"{json.dumps(v)[:120]} is not in the required value set {b['valueSet']}")
        targets = [p for t in el.get("type", []) if t["code"] == "Reference" for p in t.get("targetProfile", [])]
        if targets and isinstance(v, dict) and isinstance(v.get("reference"), str):
            self.reference(res, v["reference"], targets, where)

    def reference(self, res, ref, targets, where):
        rtype = ref.split("/")[0]
        allowed = {}
        for t in targets:
            prof = self.ig.profile(t)
            allowed.setdefault(prof.type if prof else t.rsplit("/", 1)[1], []).append((t, prof))
        if "Resource" in allowed:
            return
        if rtype not in allowed:
            self.error(res, where, f"reference to {rtype}, profile allows {sorted(allowed)}")
            return
        target = self.resources.get(ref)
        if target is None:
            self.error(res, where, f"reference {rtype}/… does not resolve in the export")
            return
        claimed = {p.split("|")[0] for p in target.get("meta", {}).get("profile", [])}
        wanted = [t.split("|")[0] for t, prof in allowed[rtype] if prof is not None]
        if wanted and len(wanted) == len(allowed[rtype]) and not claimed.intersection(wanted):
            self.error(res, where, f"referenced {rtype} does not claim {wanted}")

    def in_slice(self, v, prof, s, slicing):
        """Whether value `v` belongs to slice `s` by every discriminator that can be tested."""
        for d in slicing.get("discriminator", []):
            kind, path = d["type"], d["path"]
            if kind not in ("value", "pattern", "exists") or "resolve()" in path:
                continue
            el, rest = self.at_path(prof, s, path)
            got = self.values_at(v, path)
            if kind in ("value", "pattern"):
                fk, want = fixed_or_pattern(el) if el else (None, None)
                if rest is not None and fk is not None:
                    want = self.values_at(want, rest)
                    want = want[0] if len(want) == 1 else want
                if fk is not None:
                    test = (lambda x: x == want) if fk == "fixed" else (lambda x: matches_pattern(x, want))
                    if not any(test(x) for x in got):
                        return False
                elif el and el.get("binding", {}).get("strength") == "required":
                    codes = self.ig.codes(el["binding"]["valueSet"])
                    if codes is not None and not any(in_codes(x, codes) for x in got):
                        return False
            elif kind == "exists":
                if el is None:
                    continue
                if el.get("min", 0) >= 1 and not got:
                    return False
                if el.get("max") == "0" and got:
                    return False
        return True

    def at_path(self, prof, s, path):
        """The element of slice `s` at a discriminator path, and the part of the path below it
        that lies inside that element's fixed or pattern value (None when the element itself)."""
        if path == "$this":
            return s, None
        eid = s["id"]
        parts = path.split(".")
        for i, p in enumerate(parts):
            nxt = f"{eid}.{p}"
            if nxt not in prof.elements:
                if i == 0:
                    # Not expanded in this snapshot: the slice's type profile (an extension's
                    # StructureDefinition) defines it.
                    for t in s.get("type", []):
                        for tp in t.get("profile", []):
                            sub = self.ig.profile(tp)
                            if sub is not None and f"{sub.root}.{p}" in sub.elements:
                                return self.at_path(sub, sub.elements[sub.root], path)
                el = prof.elements.get(eid)
                return el, ".".join(parts[i:])
            eid = nxt
        return prof.elements[eid], None

    def values_at(self, v, path):
        cur = as_list(v)
        if path == "$this":
            return cur
        for p in path.split("."):
            nxt = []
            for c in cur:
                if isinstance(c, dict):
                    nxt.extend(as_list(c.get(p)))
            cur = nxt
        return cur

    def invariants(self, res, obj, el, where):
        for c in el.get("constraint", []):
            if c["key"] in SKIP_CONSTRAINTS:
                continue
            self.invariants_run += 1
            try:
                out = fhirpath(
                    obj,
                    c["expression"],
                    {"resource": res, "rootResource": res, "context": obj},
                    model=fhirpath_models["r4"],
                    options={"userInvocationTable": {
                        "memberOf": {"fn": lambda inputs, vs: self.member_of(inputs, vs), "arity": {1: ["String"]}},
                        "resolve": {"fn": lambda inputs: self.resolve(inputs), "arity": {0: []}},
                        "hasValue": {"fn": has_value, "arity": {0: []}},
                    }, "traceFn": lambda *_: None},
                )
            except NotEvaluable:
                self.invariants_not_evaluable[c["key"]] += 1
                continue
            except Exception as e:  # noqa: BLE001 - an engine gap is reported, not fatal
                self.invariants_not_evaluable[f"{c['key']} ({type(e).__name__})"] += 1
                continue
            if out == [False]:
                conflict = IG_CONFLICTS.get(c["key"])
                if c["key"] in self.tolerated or (conflict and conflict[1](obj, self.resources)):
                    self.conflicts[c["key"]] += 1
                elif c["severity"] == "error":
                    self.error(res, where, f"invariant {c['key']} fails: {c.get('human', '')}")
                else:
                    self.warnings[c["key"]] += 1


def has_value(inputs):
    """FHIRPath `hasValue()`: a single primitive with a value (fhirpathpy lacks it)."""
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], (dict, list))]


class NotEvaluable(Exception):
    pass


def _first(resources, rtype, profile_part):
    for r in resources.values():
        if r["resourceType"] == rtype and any(profile_part in p for p in r.get("meta", {}).get("profile", [])):
            return r
    raise SystemExit(f"self-test: the export has no {rtype} claiming {profile_part}")


def _drop_status(eob):
    for item in eob["item"]:
        item["adjudication"] = [
            a for a in item.get("adjudication", [])
            if not any(c["code"] == "benefitpaymentstatus" for c in a["category"]["coding"])
        ]


# Mutations of valid resources, each with the place its error must name: the validator must
# find every one (a check that cannot fail checks nothing).
MUTATIONS = [
    ("ExplanationOfBenefit", "Professional-NonClinician|", "no patient",
     lambda r: r.pop("patient"), "ExplanationOfBenefit.patient"),
    ("ExplanationOfBenefit", "Professional-NonClinician|", "no meta.lastUpdated",
     lambda r: r["meta"].pop("lastUpdated"), "ExplanationOfBenefit.meta.lastUpdated"),
    ("ExplanationOfBenefit", "Professional-NonClinician|", "an element R4 does not have",
     lambda r: r.update(colour="blue"), "ExplanationOfBenefit.colour"),
    ("ExplanationOfBenefit", "Professional-NonClinician|", "a care team role outside the value set",
     lambda r: r["careTeam"][0]["role"]["coding"][0].update(code="attending"), "ExplanationOfBenefit.careTeam"),
    ("ExplanationOfBenefit", "Professional-NonClinician|", "a patient that is not in the export",
     lambda r: r["patient"].update(reference="Patient/nobody"), "ExplanationOfBenefit.patient"),
    ("ExplanationOfBenefit", "Professional-NonClinician|", "an item without its benefit payment status",
     _drop_status, "adjudication:benefitpaymentstatus"),
    ("ExplanationOfBenefit", "Inpatient-Institutional|", "the wrong claim type",
     lambda r: r["type"]["coding"][0].update(code="pharmacy"), "ExplanationOfBenefit.type"),
    ("ExplanationOfBenefit", "Pharmacy|", "an item amount category without its amount",
     lambda r: [a.pop("amount", None) for a in r["item"][0]["adjudication"]],
     ":adjudicationamounttype.amount"),
    ("Coverage", "C4BB-Coverage|", "a status outside the value set",
     lambda r: r.update(status="paused"), "Coverage.status"),
    ("Patient", "C4BB-Patient|", "no identifier",
     lambda r: r.pop("identifier"), "Patient.identifier"),
    ("Basic", "usdf-FormularyItem|", "no drug tier",
     lambda r: r.update(extension=[e for e in r["extension"] if not e["url"].endswith("DrugTierID-extension")]),
     "usdf-DrugTierID-extension"),
    ("MedicationKnowledge", "usdf-FormularyDrug|", "no RxNorm code",
     lambda r: r.pop("code"), "MedicationKnowledge.code"),
]


def self_test(ig, resources):
    """Apply each mutation to a copy of a valid resource; each must be reported."""
    missed = 0
    for rtype, profile, what, mutate, expect in MUTATIONS:
        r = json.loads(json.dumps(_first(resources, rtype, profile)))
        mutate(r)
        v = Validator(ig, {**resources, f"{rtype}/{r['id']}": r})
        v.validate(r)
        found = [e for e in v.errors if expect in e]
        print(f"  {'caught' if found else 'MISSED'}: {rtype} with {what}")
        missed += not found
    return missed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ndjson")
    ap.add_argument("--ig", default=str(pathlib.Path(__file__).parent / "ig"))
    ap.add_argument("--self-test", action="store_true",
                    help="also check that mutated copies of the export's resources are reported")
    ap.add_argument("--tolerate", action="append", default=[], metavar="KEY",
                    help="count failures of this invariant instead of failing (for defects of the input data)")
    args = ap.parse_args()
    ig = Ig(args.ig)
    resources = {}
    with open(args.ndjson) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                resources[f"{r['resourceType']}/{r['id']}"] = r
    v = Validator(ig, resources, args.tolerate)
    for r in resources.values():
        v.validate(r)
    checked = sum(v.checked.values())
    for url, n in sorted(v.checked.items()):
        print(f"  {n:5} against {url.rsplit('/', 1)[1]}")
    print(f"{checked} of {len(resources)} resources checked against {len(v.checked)} profiles; "
          f"{v.invariants_run} invariant evaluations")
    if v.invariants_not_evaluable:
        print("invariants not evaluable here:", dict(v.invariants_not_evaluable))
    if v.unchecked_bindings:
        print("required bindings not checked (value set not expandable here):", len(v.unchecked_bindings))
    for key, n in sorted(v.conflicts.items()):
        why = IG_CONFLICTS[key][0] if key in IG_CONFLICTS else "tolerated on the command line"
        print(f"{n:6}  failures of {key}, not counted: {why}")
    if v.warnings:
        print("warning invariants that fail:", dict(v.warnings))
    for e in v.errors[:100]:
        print("ERROR", e)
    if len(v.errors) > 100:
        kinds = collections.Counter(e.split(" ", 1)[1] for e in v.errors)
        print(f"… {len(v.errors) - 100} more; all errors by place and message:")
        for k, n in kinds.most_common():
            print(f"{n:6}  {k}")
    if checked == 0:
        print("no resource claims a known profile")
        return 1
    print(f"{len(v.errors)} errors")
    missed = 0
    if args.self_test:
        print("self-test: mutated resources")
        missed = self_test(ig, resources)
    return 1 if v.errors or missed else 0


if __name__ == "__main__":
    sys.exit(main())
