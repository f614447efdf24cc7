//! The search-parameter registry: every FHIR search parameter fhirlake supports, declared once.
//!
//! Each entry says which resource type it belongs to, its code and FHIR type, the lake column
//! that holds its index values, and how to extract those values from a resource's JSON.
//! The lake writer uses `extract` to fill the columns; the query crate builds DataFusion
//! expressions from `kind` and `column`; the CapabilityStatement lists exactly these entries.

use serde_json::Value;

pub use ingest::model::Text;

use crate::formulary::ext;

/// FHIR search parameter types supported by the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// token: `[system]|[code]` pairs.
    Token,
    /// string: case- and accent-insensitive starts-with, `:exact`, `:contains`.
    String,
    /// date: a period `[start, end]` per value.
    Date,
    /// reference: `Type/id`.
    Reference,
}

impl ParamType {
    /// FHIR's name for the type (as in a CapabilityStatement).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::String => "string",
            Self::Date => "date",
            Self::Reference => "reference",
        }
    }
}

/// One value a resource is indexed by. Its text is [`Text`]: most values (references to
/// patients, codes, dates) are short enough to live inline, without a heap allocation, and a
/// claim has a dozen or more of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexValue {
    /// A token; `system` is empty when the source has none.
    Token {
        /// Code system URI (or identifier system).
        system: Text,
        /// Code (or identifier value).
        code: Text,
    },
    /// A string as it appears in the resource.
    String(Text),
    /// A reference, always `Type/id`.
    Reference(Text),
    /// A date or period, as ISO 8601 text (partial dates allowed); `end` is `None` for an open period.
    Date {
        /// Start (inclusive).
        start: Option<Text>,
        /// End (inclusive).
        end: Option<Text>,
    },
}

impl IndexValue {
    /// Bytes its strings hold on the heap (inline text holds none).
    pub fn heap_bytes(&self) -> usize {
        let heap = |s: &Text| {
            if s.is_heap_allocated() {
                s.capacity()
            } else {
                0
            }
        };
        let cap = |s: &Option<Text>| s.as_ref().map_or(0, heap);
        match self {
            Self::Token { system, code } => heap(system) + heap(code),
            Self::String(s) | Self::Reference(s) => heap(s),
            Self::Date { start, end } => cap(start) + cap(end),
        }
    }
}

/// The index values of one resource: a list per search parameter of its type, in
/// [`crate::lake::index_params`] order, all held in one vector.
///
/// A claim is indexed by ten parameters; a vector per parameter was ten allocations (and
/// ten frees on another thread) for every claim written.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IndexLists {
    values: Vec<IndexValue>,
    /// Where each list ends in `values`.
    ends: Vec<u32>,
}

impl IndexLists {
    /// `lists` empty lists, with room for `values` values.
    pub fn empty(lists: usize, values: usize) -> Self {
        Self {
            values: Vec::with_capacity(values),
            ends: vec![0; lists],
        }
    }

    /// Append a list after the last.
    pub fn push_list(&mut self, values: impl IntoIterator<Item = IndexValue>) {
        self.values.extend(values);
        self.ends.push(self.values.len() as u32);
    }

    /// Add values at the end of list `i` (a list past the last is ignored). Appending to the
    /// last non-empty list or after it is a push; an earlier list moves the values after it.
    pub fn extend_list(&mut self, i: usize, values: impl IntoIterator<Item = IndexValue>) {
        let Some(&end) = self.ends.get(i) else {
            return;
        };
        let at = end as usize;
        let before = self.values.len();
        if at == before {
            self.values.extend(values);
        } else {
            self.values.splice(at..at, values);
        }
        let added = (self.values.len() - before) as u32;
        for e in &mut self.ends[i..] {
            *e += added;
        }
    }

    /// The values of list `i` (none past the last list).
    pub fn get(&self, i: usize) -> &[IndexValue] {
        let Some(&end) = self.ends.get(i) else {
            return &[];
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.values[start as usize..end as usize]
    }

    /// The number of lists.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no lists.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The lists in order.
    pub fn iter(&self) -> impl Iterator<Item = &[IndexValue]> + '_ {
        (0..self.ends.len()).map(|i| self.get(i))
    }

    /// Bytes held on the heap: both vectors and the values' own text.
    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<IndexValue>()
            + self.ends.capacity() * std::mem::size_of::<u32>()
            + self
                .values
                .iter()
                .map(IndexValue::heap_bytes)
                .sum::<usize>()
    }
}

/// Printed as the list of lists it stands for.
impl std::fmt::Debug for IndexLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A declared search parameter.
#[derive(Debug, Clone, Copy)]
pub struct SearchParam {
    /// Resource type it applies to.
    pub resource: &'static str,
    /// The parameter code as used in URLs (e.g. `service-date`).
    pub code: &'static str,
    /// Its FHIR type.
    pub kind: ParamType,
    /// Canonical URL of its SearchParameter definition.
    pub definition: &'static str,
    /// Resource types a reference parameter may point to (for `_include`).
    pub targets: &'static [&'static str],
    /// Extracts the index values from a resource.
    pub extract: fn(&Value) -> Vec<IndexValue>,
}

impl SearchParam {
    /// The lake column stem for this parameter (`service-date` → `sp_service_date`).
    pub fn column(&self) -> String {
        match self.code {
            "_id" => "id".to_string(),
            "_lastUpdated" => "last_updated".to_string(),
            code => format!("sp_{}", code.replace('-', "_")),
        }
    }

    /// Whether the parameter is stored in a common column (`id`, `last_updated`) rather than
    /// in index columns of its own.
    pub fn is_common(&self) -> bool {
        self.code.starts_with('_')
    }
}

/// All values at a dotted path, flattening arrays at every step (`identifier.value`).
pub fn at<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![v];
    for step in path.split('.') {
        let mut next = Vec::new();
        for c in cur {
            match c.get(step) {
                Some(Value::Array(a)) => next.extend(a.iter()),
                Some(x) => next.push(x),
                None => {}
            }
        }
        cur = next;
    }
    cur
}

fn text(v: &Value) -> Option<Text> {
    v.as_str().map(Text::from)
}

/// Token values of `Identifier`s at a path.
fn identifiers(v: &Value, path: &str) -> Vec<IndexValue> {
    at(v, path)
        .into_iter()
        .filter_map(|i| {
            Some(IndexValue::Token {
                system: i.get("system").and_then(text).unwrap_or_default(),
                code: i.get("value").and_then(text)?,
            })
        })
        .collect()
}

/// Token values of the codings of `CodeableConcept`s at a path.
pub fn codings(v: &Value, path: &str) -> Vec<IndexValue> {
    at(v, &format!("{path}.coding"))
        .into_iter()
        .filter_map(|c| {
            Some(IndexValue::Token {
                system: c.get("system").and_then(text).unwrap_or_default(),
                code: c.get("code").and_then(text)?,
            })
        })
        .collect()
}

/// Token values of a `code` element at a path (no system).
pub fn codes(v: &Value, path: &str) -> Vec<IndexValue> {
    at(v, path)
        .into_iter()
        .filter_map(|c| {
            Some(IndexValue::Token {
                system: Text::default(),
                code: text(c)?,
            })
        })
        .collect()
}

/// Reference values at a path (`Type/id` only: literal relative references).
pub fn references(v: &Value, path: &str) -> Vec<IndexValue> {
    at(v, &format!("{path}.reference"))
        .into_iter()
        .filter_map(|r| text(r).map(IndexValue::Reference))
        .collect()
}

/// String values at a path.
pub fn strings(v: &Value, path: &str) -> Vec<IndexValue> {
    at(v, path)
        .into_iter()
        .filter_map(|s| text(s).map(IndexValue::String))
        .collect()
}

/// Date values of `date`/`dateTime` elements at a path.
pub fn dates(v: &Value, path: &str) -> Vec<IndexValue> {
    at(v, path)
        .into_iter()
        .filter_map(|d| {
            let d = text(d)?;
            Some(IndexValue::Date {
                start: Some(d.clone()),
                end: Some(d),
            })
        })
        .collect()
}

/// Date values of `Period` elements at a path.
pub fn periods(v: &Value, path: &str) -> Vec<IndexValue> {
    at(v, path)
        .into_iter()
        .map(|p| IndexValue::Date {
            start: p.get("start").and_then(text),
            end: p.get("end").and_then(text),
        })
        .collect()
}

fn none(_: &Value) -> Vec<IndexValue> {
    Vec::new()
}

/// `_id` and `_lastUpdated` for a resource type: lake columns `id` and `last_updated`.
const fn common(resource: &'static str) -> [SearchParam; 2] {
    [
        SearchParam {
            resource,
            code: "_id",
            kind: ParamType::Token,
            definition: "http://hl7.org/fhir/SearchParameter/Resource-id",
            targets: &[],
            extract: none,
        },
        SearchParam {
            resource,
            code: "_lastUpdated",
            kind: ParamType::Date,
            definition: "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
            targets: &[],
            extract: none,
        },
    ]
}

macro_rules! param {
    ($res:expr, $code:expr, $kind:ident, $def:expr, $targets:expr, $extract:expr) => {
        SearchParam {
            resource: $res,
            code: $code,
            kind: ParamType::$kind,
            definition: $def,
            targets: $targets,
            extract: $extract,
        }
    };
}

fn eob_service_date(v: &Value) -> Vec<IndexValue> {
    let mut out = periods(v, "billablePeriod");
    out.extend(dates(v, "item.servicedDate"));
    out.extend(periods(v, "item.servicedPeriod"));
    out
}

fn eob_service_start(v: &Value) -> Vec<IndexValue> {
    let mut out: Vec<IndexValue> = at(v, "billablePeriod.start")
        .into_iter()
        .chain(at(v, "item.servicedDate"))
        .chain(at(v, "item.servicedPeriod.start"))
        .filter_map(|d| {
            let d = text(d)?;
            Some(IndexValue::Date {
                start: Some(d.clone()),
                end: Some(d),
            })
        })
        .collect();
    out.dedup();
    out
}

/// The code system of `Patient.gender` (FHIR `AdministrativeGender`).
pub const ADMINISTRATIVE_GENDER: &str = "http://hl7.org/fhir/administrative-gender";

/// Token values of a `code` element at a path, in the code system its binding fixes.
pub fn system_codes(v: &Value, path: &str, system: &'static str) -> Vec<IndexValue> {
    at(v, path)
        .into_iter()
        .filter_map(|c| {
            Some(IndexValue::Token {
                system: system.into(),
                code: text(c)?,
            })
        })
        .collect()
}

/// Patient `name`: every part of every `HumanName` (text, family, given, prefix, suffix).
fn patient_name(v: &Value) -> Vec<IndexValue> {
    ["text", "family", "given", "prefix", "suffix"]
        .iter()
        .flat_map(|part| strings(v, &format!("name.{part}")))
        .collect()
}

/// The C4BB search parameters (CARIN BB 2.1.0 CapabilityStatement), plus what `_include`
/// needs on ExplanationOfBenefit and Coverage, and the US Core Patient parameters (C4BB-Patient
/// is a US Core Patient 6.1).
pub fn c4bb() -> Vec<SearchParam> {
    const EOB: &str = "ExplanationOfBenefit";
    let mut v = Vec::new();
    for r in [
        "ExplanationOfBenefit",
        "Coverage",
        "Patient",
        "Organization",
        "Practitioner",
    ] {
        v.extend(common(r));
    }
    v.extend([
        param!(EOB, "patient", Reference, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-patient", &["Patient"], |v| references(v, "patient")),
        param!(EOB, "type", Token, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-type", &[], |v| codings(v, "type")),
        param!(EOB, "identifier", Token, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-identifier", &[], |v| identifiers(v, "identifier")),
        param!(EOB, "service-date", Date, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-service-date", &[], eob_service_date),
        param!(EOB, "service-start-date", Date, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-service-start-date", &[], eob_service_start),
        param!(EOB, "billable-period-start", Date, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-billable-period-start", &[], |v| dates(v, "billablePeriod.start")),
        param!(EOB, "provider", Reference, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-provider", &["Practitioner", "Organization"], |v| references(v, "provider")),
        param!(EOB, "care-team", Reference, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-care-team", &["Practitioner", "Organization"], |v| references(v, "careTeam.provider")),
        param!(EOB, "coverage", Reference, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-coverage", &["Coverage"], |v| references(v, "insurance.coverage")),
        param!(EOB, "insurer", Reference, "http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-insurer", &["Organization"], |v| references(v, "insurer")),
        param!(EOB, "payee", Reference, "http://hl7.org/fhir/SearchParameter/ExplanationOfBenefit-payee", &["Practitioner", "Organization", "Patient"], |v| references(v, "payee.party")),
        param!("Coverage", "patient", Reference, "http://hl7.org/fhir/SearchParameter/Coverage-patient", &["Patient"], |v| references(v, "beneficiary")),
        param!("Coverage", "beneficiary", Reference, "http://hl7.org/fhir/SearchParameter/Coverage-beneficiary", &["Patient"], |v| references(v, "beneficiary")),
        param!("Coverage", "payor", Reference, "http://hl7.org/fhir/us/carin-bb/SearchParameter/coverage-payor", &["Organization", "Patient"], |v| references(v, "payor")),
        param!("Coverage", "identifier", Token, "http://hl7.org/fhir/SearchParameter/Coverage-identifier", &[], |v| identifiers(v, "identifier")),
        param!("Patient", "identifier", Token, "http://hl7.org/fhir/SearchParameter/Patient-identifier", &[], |v| identifiers(v, "identifier")),
        param!("Patient", "name", String, "http://hl7.org/fhir/SearchParameter/Patient-name", &[], patient_name),
        param!("Patient", "family", String, "http://hl7.org/fhir/SearchParameter/individual-family", &[], |v| strings(v, "name.family")),
        param!("Patient", "given", String, "http://hl7.org/fhir/SearchParameter/individual-given", &[], |v| strings(v, "name.given")),
        param!("Patient", "gender", Token, "http://hl7.org/fhir/SearchParameter/individual-gender", &[], |v| system_codes(v, "gender", ADMINISTRATIVE_GENDER)),
        param!("Patient", "birthdate", Date, "http://hl7.org/fhir/SearchParameter/individual-birthdate", &[], |v| dates(v, "birthDate")),
        param!("Organization", "identifier", Token, "http://hl7.org/fhir/SearchParameter/Organization-identifier", &[], |v| identifiers(v, "identifier")),
        param!("Practitioner", "identifier", Token, "http://hl7.org/fhir/SearchParameter/Practitioner-identifier", &[], |v| identifiers(v, "identifier")),
    ]);
    v
}

fn extension_flag(v: &Value, url: &str) -> Vec<IndexValue> {
    at(v, "extension")
        .into_iter()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(url))
        .filter_map(|e| e.get("valueBoolean").and_then(Value::as_bool))
        .map(|b| IndexValue::Token {
            system: Text::default(),
            code: if b { "true" } else { "false" }.into(),
        })
        .collect()
}

/// fhirlake's own parameters on PDex FormularyItem (Basic), so that "drugs on formulary F
/// needing prior authorization" is one request: `Basic?formulary=F&prior-authorization=true`.
pub fn formulary_extras() -> Vec<SearchParam> {
    vec![
        param!(
            "Basic",
            "prior-authorization",
            Token,
            "https://fhirlake.example.org/fhir/SearchParameter/Basic-prior-authorization",
            &[],
            |v| extension_flag(v, ext::PRIOR_AUTHORIZATION)
        ),
        param!(
            "Basic",
            "step-therapy",
            Token,
            "https://fhirlake.example.org/fhir/SearchParameter/Basic-step-therapy",
            &[],
            |v| extension_flag(v, ext::STEP_THERAPY)
        ),
        param!(
            "Basic",
            "quantity-limit",
            Token,
            "https://fhirlake.example.org/fhir/SearchParameter/Basic-quantity-limit",
            &[],
            |v| extension_flag(v, ext::QUANTITY_LIMIT)
        ),
    ]
}

/// The Location search parameters the PDex formulary CapabilityStatement requires (the
/// service areas of InsurancePlans, usdf-InsurancePlanLocation).
pub fn location() -> Vec<SearchParam> {
    const LOCATION: &str = "Location";
    fn address(v: &Value) -> Vec<IndexValue> {
        let mut out = Vec::new();
        for part in [
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ] {
            out.extend(strings(v, &format!("address.{part}")));
        }
        out
    }
    vec![
        param!(
            LOCATION,
            "address",
            String,
            "http://hl7.org/fhir/SearchParameter/Location-address",
            &[],
            address
        ),
        param!(
            LOCATION,
            "address-city",
            String,
            "http://hl7.org/fhir/SearchParameter/Location-address-city",
            &[],
            |v| strings(v, "address.city")
        ),
        param!(
            LOCATION,
            "address-state",
            String,
            "http://hl7.org/fhir/SearchParameter/Location-address-state",
            &[],
            |v| strings(v, "address.state")
        ),
        param!(
            LOCATION,
            "address-postalcode",
            String,
            "http://hl7.org/fhir/SearchParameter/Location-address-postalcode",
            &[],
            |v| strings(v, "address.postalCode")
        ),
    ]
}

/// The resource types of the PDex drug formulary: plans, their formularies and service
/// areas, formulary items and drugs. They hold no member data (the API serves them without a
/// token).
pub const FORMULARY_RESOURCE_TYPES: &[&str] =
    &["InsurancePlan", "Basic", "MedicationKnowledge", "Location"];

/// The whole registry: every supported parameter of every served resource type.
pub fn all() -> &'static [SearchParam] {
    static ALL: std::sync::OnceLock<Vec<SearchParam>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut v = c4bb();
        for &t in FORMULARY_RESOURCE_TYPES {
            v.extend(common(t));
        }
        v.extend(location());
        v.extend(crate::formulary::SEARCH_PARAMS.iter().copied());
        v.extend(formulary_extras());
        v
    })
}

/// The parameters of one resource type.
pub fn for_type(resource: &str) -> impl Iterator<Item = &'static SearchParam> + '_ {
    all().iter().filter(move |p| p.resource == resource)
}

/// Look one parameter up.
pub fn find(resource: &str, code: &str) -> Option<&'static SearchParam> {
    all()
        .iter()
        .find(|p| p.resource == resource && p.code == code)
}

/// The resource types the lake holds (and the API serves), in a fixed order.
pub fn resource_types() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Vec::new();
    for p in all() {
        if !v.contains(&p.resource) {
            v.push(p.resource);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(s: &str) -> IndexValue {
        IndexValue::Reference(s.into())
    }

    #[test]
    fn index_lists_fill_in_any_order_and_read_as_lists() {
        let mut by_push = IndexLists::default();
        by_push.push_list([r("a")]);
        by_push.push_list([]);
        by_push.push_list([r("c1"), r("c2")]);
        by_push.push_list([]);

        // The same lists, filled out of order and in pieces.
        let mut by_place = IndexLists::empty(4, 0);
        by_place.extend_list(2, [r("c1")]);
        by_place.extend_list(0, [r("a")]);
        by_place.extend_list(2, [r("c2")]);
        by_place.extend_list(4, [r("past the last list")]);
        by_place.extend_list(1, []);
        assert_eq!(by_place, by_push);

        assert_eq!(by_place.len(), 4);
        assert_eq!(by_place.get(0), &[r("a")]);
        assert!(by_place.get(1).is_empty());
        assert_eq!(by_place.get(2), &[r("c1"), r("c2")]);
        assert!(by_place.get(3).is_empty() && by_place.get(9).is_empty());
        assert_eq!(
            by_place.iter().map(<[_]>::len).collect::<Vec<_>>(),
            [1, 0, 2, 0]
        );
        // Printed as the list of lists it stands for.
        let lists: Vec<Vec<IndexValue>> = by_place.iter().map(<[_]>::to_vec).collect();
        assert_eq!(format!("{by_place:?}"), format!("{lists:?}"));
        assert!(IndexLists::default().is_empty());
    }

    #[test]
    fn extractors_follow_the_paths() {
        let eob = json!({
            "patient": {"reference": "Patient/1"},
            "billablePeriod": {"start": "2020-01-01", "end": "2020-01-05"},
            "item": [{"servicedDate": "2020-01-02"}, {"servicedPeriod": {"start": "2020-01-03", "end": "2020-01-04"}}],
            "identifier": [{"system": "s", "value": "v"}],
            "type": {"coding": [{"system": "t", "code": "professional"}]},
        });
        let p = find("ExplanationOfBenefit", "patient").unwrap();
        assert_eq!(
            (p.extract)(&eob),
            vec![IndexValue::Reference("Patient/1".into())]
        );
        let sd = find("ExplanationOfBenefit", "service-date").unwrap();
        assert_eq!((sd.extract)(&eob).len(), 3);
        let ss = find("ExplanationOfBenefit", "service-start-date").unwrap();
        assert_eq!((ss.extract)(&eob).len(), 3);
        let id = find("ExplanationOfBenefit", "identifier").unwrap();
        assert_eq!(
            (id.extract)(&eob),
            vec![IndexValue::Token {
                system: "s".into(),
                code: "v".into()
            }]
        );
        let t = find("ExplanationOfBenefit", "type").unwrap();
        assert_eq!(
            (t.extract)(&eob),
            vec![IndexValue::Token {
                system: "t".into(),
                code: "professional".into()
            }]
        );
        assert_eq!(find("ExplanationOfBenefit", "_id").unwrap().column(), "id");
    }
}
