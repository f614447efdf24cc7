//! The delimited-file reader, driven by a [`Mapping`].
//!
//! Reads any delimiter, with or without quoting, a byte-order mark, rows with one trailing
//! empty field (CMS RIF), and rows grouped into one record by a key column (claim lines).
//! Streams row by row: memory holds one record's rows at a time.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::layout::{
    compile, compile_groups, parse_date, parse_decimal, parse_int, CodeTable, Field, FieldSet,
};
use crate::layout::{trim, FieldSource, FieldType, Mapping};
use crate::model::*;
use crate::split::{Pos, Record, Splitter, MAX_RECORD};
use crate::{Error, FileSummary, Item, Reader, Reason, Reject, Stage};
use rustc_hash::FxBuildHasher;

/// Reads a delimited file with one mapping.
#[derive(Debug, Clone)]
pub struct DelimitedReader {
    mapping: Arc<Mapping>,
}

impl DelimitedReader {
    /// A reader for files of this mapping's layout.
    pub fn new(mapping: Arc<Mapping>) -> Self {
        Self { mapping }
    }
}

/// Read the header row of a delimited file (BOM stripped), for layout detection.
///
/// # Errors
/// When the file cannot be read.
pub fn read_header(path: &Path, delimiter: u8) -> Result<Vec<String>, Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    // A header is short: a small buffer, not the 1 MiB a whole read uses. Quoted or not, a
    // header's names read the same unless one holds a quote.
    let mut rdr = Splitter::with_read_size(file, delimiter, Some(b'"'), 64 << 10);
    let mut rec = Record::default();
    match rdr.read_record(&mut rec) {
        Ok(Some(_)) => Ok(header_names(rec.iter())),
        Ok(None) | Err(_) => Ok(Vec::new()),
    }
}

fn header_names<'a>(fields: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    let mut names: Vec<String> = fields
        .map(|f| String::from_utf8_lossy(f).trim().to_string())
        .collect();
    while names.last().is_some_and(|n| n.is_empty()) {
        names.pop();
    }
    names
}

/// A layout compiled against one file's header.
struct Compiled {
    mapping: Arc<Mapping>,
    width: usize,
    group_col: Option<usize>,
    change: Option<(usize, std::collections::BTreeMap<String, String>)>,
    part: FieldSet,
    groups: Vec<(String, Vec<FieldSet>)>,
    line_groups: Vec<(String, Vec<FieldSet>)>,
    /// The line's fields, looked up once per file rather than by name on every row.
    line_fields: LineFields,
    /// The claim's amount groups, likewise.
    claim_amounts: Vec<AmountField>,
    /// The claim's own fields, parties and care team, likewise.
    claim_fields: ClaimFields,
    coverages: Vec<FieldSet>,
}

const CLAIM_GROUPS: &[&str] = &[
    "identifier",
    "diagnosis",
    "procedure",
    "supporting",
    "amount",
    "care_team",
    "adjustment",
];
const MEMBER_GROUPS: &[&str] = &["identifier"];
const LINE_GROUPS: &[&str] = &["amount", "adjustment"];

impl Compiled {
    fn new(mapping: Arc<Mapping>, header: &[String]) -> Result<Self, Error> {
        let path = mapping.path.clone();
        let empty = Default::default();
        let (table, group_names): (&_, &[&str]) = match mapping.source.record.as_str() {
            "member" => (mapping.member.as_ref().unwrap_or(&empty), MEMBER_GROUPS),
            "claim" => (mapping.claim.as_ref().unwrap_or(&empty), CLAIM_GROUPS),
            _ => (mapping.formulary_drug.as_ref().unwrap_or(&empty), &[]),
        };
        // Code tables are found once here, not by name for every value.
        let tables: HashMap<String, Arc<CodeTable>, FxBuildHasher> = mapping
            .codes
            .iter()
            .map(|(name, t)| (name.clone(), Arc::new(CodeTable::new(t))))
            .collect();
        let resolved = |mut set: FieldSet| -> Result<FieldSet, Error> {
            set.resolve_codes(&tables)
                .map_err(|message| Error::Mapping {
                    path: path.display().to_string(),
                    message,
                })?;
            Ok(set)
        };
        let scalars = without(table, group_names);
        let part = resolved(compile(&scalars, header, &path)?)?;
        // Each named group of a table, its field sets compiled and resolved.
        let groups_of = |table, names: &[&str]| -> Result<Vec<(String, Vec<FieldSet>)>, Error> {
            names
                .iter()
                .map(|g| {
                    let sets = compile_groups(table, g, header, &path)?;
                    let sets = sets.into_iter().map(&resolved).collect::<Result<_, _>>()?;
                    Ok((g.to_string(), sets))
                })
                .collect()
        };
        let groups = groups_of(table, group_names)?;
        let line_table = mapping.line.clone().unwrap_or_default();
        let line = resolved(compile(&without(&line_table, LINE_GROUPS), header, &path)?)?;
        let line_groups = groups_of(&line_table, LINE_GROUPS)?;
        let coverages = mapping
            .coverage
            .iter()
            .map(|t| resolved(compile(t, header, &path)?))
            .collect::<Result<_, _>>()?;
        let line_fields = LineFields::new(&line, find_groups(&line_groups, "amount"));
        let claim_amounts = AmountField::all(find_groups(&groups, "amount"));
        let claim_fields = ClaimFields::new(&part, &groups);
        let col = |name: &str| header.iter().position(|h| h == name);
        let missing = |name: &str| Error::Mapping {
            path: path.display().to_string(),
            message: format!("column {name:?} is not in the file's header"),
        };
        let group_col = match &mapping.source.group_by {
            Some(g) => Some(col(g).ok_or_else(|| missing(g))?),
            None => None,
        };
        let change = match &mapping.source.change {
            Some(c) => Some((
                col(&c.column).ok_or_else(|| missing(&c.column))?,
                c.codes.clone(),
            )),
            None => None,
        };
        Ok(Self {
            width: header.len(),
            group_col,
            change,
            part,
            groups,
            line_fields,
            claim_amounts,
            claim_fields,
            line_groups,
            coverages,
            mapping,
        })
    }

    fn groups(&self, name: &str) -> &[FieldSet] {
        find_groups(&self.groups, name)
    }

    fn line_groups(&self, name: &str) -> &[FieldSet] {
        find_groups(&self.line_groups, name)
    }
}

fn find_groups<'a>(groups: &'a [(String, Vec<FieldSet>)], name: &str) -> &'a [FieldSet] {
    groups
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, g)| g.as_slice())
        .unwrap_or(&[])
}

fn without(
    table: &std::collections::BTreeMap<String, toml::Value>,
    keys: &[&str],
) -> std::collections::BTreeMap<String, toml::Value> {
    table
        .iter()
        .filter(|(k, _)| !keys.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The fields of one party in a mapping: `{prefix}_npi`, `{prefix}_id`, … Spelled out once
/// per prefix, so that reading a party builds no names.
struct PartyNames {
    npi: &'static str,
    id: &'static str,
    id_kind: &'static str,
    name: &'static str,
    tax_id: &'static str,
    state: &'static str,
    postal_code: &'static str,
}

macro_rules! party_names {
    ($prefix:literal) => {
        PartyNames {
            npi: concat!($prefix, "_npi"),
            id: concat!($prefix, "_id"),
            id_kind: concat!($prefix, "_id_kind"),
            name: concat!($prefix, "_name"),
            tax_id: concat!($prefix, "_tax_id"),
            state: concat!($prefix, "_state"),
            postal_code: concat!($prefix, "_postal_code"),
        }
    };
}

impl PartyNames {
    const PAYER: Self = party_names!("payer");
    const BILLING: Self = party_names!("billing");
    const FACILITY: Self = party_names!("facility");
    const PROVIDER: Self = party_names!("provider");
    const RENDERING: Self = party_names!("rendering");
}

/// An amount group of a mapping: its category and the field holding the value.
struct AmountField {
    category: Text,
    value: Field,
}

impl AmountField {
    fn all(groups: &[FieldSet]) -> Vec<Self> {
        groups
            .iter()
            .filter_map(|g| {
                Some(Self {
                    category: g.attr("category").unwrap_or("submitted").into(),
                    value: g.one("value")?.clone(),
                })
            })
            .collect()
    }
}

/// A party's fields in a field set (see [`PartyNames`]): borrowed from the set (`&Field`)
/// for a party read once per record, owned (`Field`) when kept for every row.
struct PartyFields<F> {
    npi: Option<F>,
    id: Option<F>,
    id_kind: Option<Text>,
    name: Option<F>,
    tax_id: Option<F>,
    state: Option<F>,
    postal_code: Option<F>,
}

impl<'a> PartyFields<&'a Field> {
    fn new(set: &'a FieldSet, names: &PartyNames) -> Self {
        let one = |name| set.one(name);
        Self {
            npi: one(names.npi),
            id: one(names.id),
            id_kind: set.attr(names.id_kind).map(Text::from),
            name: one(names.name),
            tax_id: one(names.tax_id),
            state: one(names.state),
            postal_code: one(names.postal_code),
        }
    }

    fn owned(self) -> PartyFields<Field> {
        PartyFields {
            npi: self.npi.cloned(),
            id: self.id.cloned(),
            id_kind: self.id_kind,
            name: self.name.cloned(),
            tax_id: self.tax_id.cloned(),
            state: self.state.cloned(),
            postal_code: self.postal_code.cloned(),
        }
    }
}

/// The fields of a claim line, each row of a claim being one line.
struct LineFields {
    /// Whether the mapping has a `[line]` table at all (a claim without lines has none).
    declared: bool,
    number: Option<Field>,
    service_code: Option<Field>,
    modifiers: Vec<Field>,
    revenue_code: Option<Field>,
    ndc: Option<Field>,
    quantity: Option<Field>,
    from: Option<Field>,
    thru: Option<Field>,
    place_of_service: Option<Field>,
    payment_status: Option<Field>,
    rendering: PartyFields<Field>,
    amounts: Vec<AmountField>,
}

impl LineFields {
    fn new(set: &FieldSet, amounts: &[FieldSet]) -> Self {
        let one = |name| set.one(name).cloned();
        Self {
            declared: !set.fields.is_empty(),
            number: one("number"),
            service_code: one("service_code"),
            modifiers: set.all("modifiers").to_vec(),
            revenue_code: one("revenue_code"),
            ndc: one("ndc"),
            quantity: one("quantity"),
            from: one("from"),
            thru: one("thru"),
            place_of_service: one("place_of_service"),
            payment_status: one("payment_status"),
            rendering: PartyFields::new(set, &PartyNames::RENDERING).owned(),
            amounts: AmountField::all(amounts),
        }
    }
}

/// The fields a claim reads from its first row, each row of a claim repeating them.
struct ClaimFields {
    kind: Option<Field>,
    claim_id: Option<Field>,
    member_id: Option<Field>,
    coverage_key: Option<Field>,
    type_code: Option<Field>,
    type_of_bill: Option<Field>,
    from: Option<Field>,
    thru: Option<Field>,
    created: Option<Field>,
    received: Option<Field>,
    adjudicated: Option<Field>,
    payment_status: Option<Field>,
    network_status: Option<Field>,
    /// Identifier groups with a value field: the identifier's kind and that field.
    identifiers: Vec<(Text, Field)>,
    payer: PartyFields<Field>,
    billing: PartyFields<Field>,
    facility: PartyFields<Field>,
    care_team: Vec<CareTeamFields>,
}

/// A care team group: the member's role, whether they are a person, and their fields.
struct CareTeamFields {
    role: Text,
    person: bool,
    party: PartyFields<Field>,
}

impl ClaimFields {
    fn new(set: &FieldSet, groups: &[(String, Vec<FieldSet>)]) -> Self {
        let one = |name| set.one(name).cloned();
        let party = |names| PartyFields::new(set, names).owned();
        Self {
            kind: one("kind"),
            claim_id: one("claim_id"),
            member_id: one("member_id"),
            coverage_key: one("coverage_key"),
            type_code: one("type_code"),
            type_of_bill: one("type_of_bill"),
            from: one("from"),
            thru: one("thru"),
            created: one("created"),
            received: one("received"),
            adjudicated: one("adjudicated"),
            payment_status: one("payment_status"),
            network_status: one("network_status"),
            identifiers: find_groups(groups, "identifier")
                .iter()
                .filter_map(|g| {
                    let kind = g.attr("kind").unwrap_or("claim").into();
                    Some((kind, g.one("value")?.clone()))
                })
                .collect(),
            payer: party(&PartyNames::PAYER),
            billing: party(&PartyNames::BILLING),
            facility: party(&PartyNames::FACILITY),
            care_team: find_groups(groups, "care_team")
                .iter()
                .map(|g| CareTeamFields {
                    role: g.attr("role").unwrap_or("rendering").into(),
                    person: g.attr("person") != Some("false"),
                    party: PartyFields::new(g, &PartyNames::PROVIDER).owned(),
                })
                .collect(),
        }
    }
}

/// A code with its version and one companion value (`poa`, `date`).
type Coded = (Text, Option<Text>, Option<Text>);

/// A failure to read one value: the reason code and a message naming the column.
type ValueError = (Reason, String);

/// One row with its text fields, for value lookups.
struct Row<'a> {
    /// The record's bytes, checked to be UTF-8.
    all: &'a str,
    record: &'a Record,
}

impl Row<'_> {
    /// Field `i`, or `""` past the row's end. A field's ends are character boundaries of
    /// `all` (the bytes around it are ASCII), so `get` finds it.
    fn field(&self, i: usize) -> &str {
        self.record
            .range(i)
            .and_then(|r| self.all.get(r))
            .unwrap_or("")
    }
}

impl Compiled {
    /// The value of a field in a row: trimmed, typed, translated; `None` when empty.
    fn value(&self, row: &Row<'_>, f: &Field) -> Result<Option<Text>, ValueError> {
        let joined;
        let raw = match &f.source {
            FieldSource::Const(c) => c.as_str(),
            FieldSource::Column(i) => row.field(*i),
            FieldSource::Concat(cols) => {
                let parts: Vec<&str> = cols.iter().map(|i| trim(row.field(*i))).collect();
                if parts.iter().any(|p| p.is_empty()) {
                    return Ok(None);
                }
                joined = parts.concat();
                joined.as_str()
            }
        };
        let raw = trim(raw);
        if raw.is_empty() {
            return Ok(None);
        }
        let typed = match f.ty {
            FieldType::Text => raw.into(),
            FieldType::Date => {
                parse_date(raw, &self.mapping.source.date_formats).ok_or_else(|| {
                    (
                        Reason::BadDate,
                        format!(
                            "{}: {raw:?} is not a date in {:?}",
                            f.label, self.mapping.source.date_formats
                        ),
                    )
                })?
            }
            FieldType::Decimal => parse_decimal(raw).ok_or_else(|| {
                (
                    Reason::BadNumber,
                    format!("{}: {raw:?} is not a decimal", f.label),
                )
            })?,
            FieldType::Int => parse_int(raw).ok_or_else(|| {
                (
                    Reason::BadNumber,
                    format!("{}: {raw:?} is not an integer", f.label),
                )
            })?,
        };
        match &f.table {
            None => Ok(Some(typed)),
            Some(table) => match table.translate(&typed) {
                Some(v) => Ok(v.clone()),
                None => Err((
                    Reason::UnknownCode,
                    format!(
                        "{}: code {typed:?} is not in table {:?}",
                        f.label,
                        f.codes.as_deref().unwrap_or_default()
                    ),
                )),
            },
        }
    }

    /// The value of a field the mapping may not have.
    fn opt<T: From<Text>>(
        &self,
        row: &Row<'_>,
        f: Option<&Field>,
    ) -> Result<Option<T>, ValueError> {
        match f {
            Some(f) => Ok(self.value(row, f)?.map(T::from)),
            None => Ok(None),
        }
    }

    /// A named field's value, as [`Text`] (canonical claims and members) or `String`.
    fn get<T: From<Text>>(
        &self,
        row: &Row<'_>,
        set: &FieldSet,
        name: &str,
    ) -> Result<Option<T>, ValueError> {
        self.opt(row, set.one(name))
    }

    fn list<T: From<Text>>(
        &self,
        row: &Row<'_>,
        set: &FieldSet,
        name: &str,
    ) -> Result<Vec<T>, ValueError> {
        self.values(row, set.all(name))
    }

    /// The non-empty values of a list of fields, in order.
    fn values<T: From<Text>>(&self, row: &Row<'_>, fields: &[Field]) -> Result<Vec<T>, ValueError> {
        let mut out = Vec::new();
        for f in fields {
            if let Some(v) = self.value(row, f)? {
                out.push(T::from(v));
            }
        }
        Ok(out)
    }

    fn required<T: From<Text>>(
        &self,
        row: &Row<'_>,
        set: &FieldSet,
        name: &str,
    ) -> Result<T, ValueError> {
        self.required_of(row, set.one(name), name)
    }

    /// [`Self::required`] of a field looked up already (`name` for the message).
    fn required_of<T: From<Text>>(
        &self,
        row: &Row<'_>,
        f: Option<&Field>,
        name: &str,
    ) -> Result<T, ValueError> {
        self.opt(row, f)?.ok_or_else(|| {
            let label = f.map(|f| f.label.as_str()).unwrap_or(name);
            (Reason::MissingValue, format!("{name} ({label}) is empty"))
        })
    }

    fn change(&self, row: &Row<'_>) -> Result<Change, ValueError> {
        let Some((i, codes)) = &self.change else {
            return Ok(Change::Upsert);
        };
        let raw = trim(row.field(*i));
        match codes.get(raw).map(String::as_str) {
            Some("upsert") => Ok(Change::Upsert),
            Some("replace") => Ok(Change::Replace),
            Some("cancel") => Ok(Change::Cancel),
            Some("delete") => Ok(Change::Delete),
            _ => Err((
                Reason::UnknownCode,
                format!("change code {raw:?} is not known"),
            )),
        }
    }

    fn party(
        &self,
        row: &Row<'_>,
        set: &FieldSet,
        names: &PartyNames,
    ) -> Result<Option<Party>, ValueError> {
        self.party_of(row, &PartyFields::new(set, names))
    }

    fn party_of<F: Borrow<Field>>(
        &self,
        row: &Row<'_>,
        f: &PartyFields<F>,
    ) -> Result<Option<Party>, ValueError> {
        let get = |field: &Option<F>| self.opt(row, field.as_ref().map(Borrow::borrow));
        let id: Option<Text> = get(&f.npi)?.filter(|n: &Text| n.bytes().any(|b| b != b'0'));
        let (id, id_kind) = match id {
            Some(id) => (Some(id), Some("npi".into())),
            None => match get(&f.id)? {
                Some(id) => (Some(id), f.id_kind.clone()),
                None => (None, None),
            },
        };
        let party_name = get(&f.name)?;
        if id.is_none() && party_name.is_none() {
            return Ok(None);
        }
        Ok(Some(Party {
            id,
            id_kind,
            name: party_name,
            person: false,
            tax_id: get(&f.tax_id)?,
            address_lines: Vec::new(),
            city: None,
            state: get(&f.state)?,
            postal_code: get(&f.postal_code)?,
        }))
    }

    fn member(&self, row: &Row<'_>, position: Position) -> Result<Member, ValueError> {
        let p = &self.part;
        let mut identifiers = Vec::new();
        for g in self.groups("identifier") {
            if let Some(value) = self.get(row, g, "value")? {
                identifiers.push(Ident {
                    kind: g.attr("kind").unwrap_or("member").into(),
                    value,
                });
            }
        }
        let mut coverages = Vec::new();
        for c in &self.coverages {
            if c.one("when").is_some() && self.get::<Text>(row, c, "when")?.is_none() {
                continue;
            }
            let key = match c.one("key") {
                Some(f) => self.value(row, f)?,
                None => c.attr("key").map(Text::from),
            };
            coverages.push(CoverageSpan {
                key: key.unwrap_or_else(|| "coverage".into()),
                type_code: self.get(row, c, "type_code")?,
                type_display: c.attr("type_display").map(Text::from),
                subscriber_id: self.get(row, c, "subscriber_id")?,
                relationship: self.get(row, c, "relationship")?,
                group: self.get(row, c, "group_id")?,
                group_name: self.get(row, c, "group_name")?,
                plan: self.get(row, c, "plan")?,
                plan_name: self.get(row, c, "plan_name")?,
                start: self.get(row, c, "start")?,
                end: self.get(row, c, "end")?,
                status: self.get(row, c, "status")?,
                payer: self.party(row, c, &PartyNames::PAYER)?.unwrap_or_default(),
            });
        }
        Ok(Member {
            member_id: self.required(row, p, "member_id")?,
            identifiers,
            family: self.get(row, p, "family")?,
            given: self.list(row, p, "given")?,
            gender: self.get(row, p, "gender")?,
            birth_date: self.get(row, p, "birth_date")?,
            death_date: self.get(row, p, "death_date")?,
            address_lines: self.list(row, p, "address_lines")?,
            city: self.get(row, p, "city")?,
            state: self.get(row, p, "state")?,
            postal_code: self.get(row, p, "postal_code")?,
            coverages,
            change: self.change(row)?,
            position,
        })
    }

    /// The `code` fields of a repeated group, each with its `version` and one more field of
    /// the same index (`poa`, `date`); codes left empty are skipped.
    fn coded(&self, row: &Row<'_>, g: &FieldSet, extra: &str) -> Result<Vec<Coded>, ValueError> {
        let at = |fields: &[Field], i: usize| -> Result<Option<Text>, ValueError> {
            match fields.get(i) {
                Some(f) => self.value(row, f),
                None => Ok(None),
            }
        };
        let (versions, extras) = (g.all("version"), g.all(extra));
        let mut out = Vec::new();
        for (i, f) in g.all("code").iter().enumerate() {
            if let Some(code) = self.value(row, f)? {
                out.push((code, at(versions, i)?, at(extras, i)?));
            }
        }
        Ok(out)
    }

    fn amounts(&self, row: &Row<'_>, fields: &[AmountField]) -> Result<Vec<Amount>, ValueError> {
        let mut out = Vec::with_capacity(fields.len());
        for f in fields {
            if let Some(value) = self.value(row, &f.value)? {
                out.push(Amount {
                    category: f.category.clone(),
                    value,
                });
            }
        }
        Ok(out)
    }

    fn adjustments(
        &self,
        row: &Row<'_>,
        groups: &[FieldSet],
    ) -> Result<Vec<Adjustment>, ValueError> {
        let mut out = Vec::new();
        for g in groups {
            let reasons = self.list(row, g, "reason")?;
            for reason in reasons {
                out.push(Adjustment {
                    group: g.attr("group").map(Text::from),
                    reason,
                    amount: self.get(row, g, "amount")?,
                });
            }
        }
        Ok(out)
    }

    fn claim(&self, rows: &[Row<'_>], position: Position) -> Result<Claim, ValueError> {
        let Some(first) = rows.first() else {
            return Err((Reason::Malformed, "empty record".into()));
        };
        let cf = &self.claim_fields;
        let kind_text: Text = self.required_of(first, cf.kind.as_ref(), "kind")?;
        let kind = ClaimKind::parse(&kind_text).ok_or_else(|| {
            (
                Reason::UnknownCode,
                format!("claim kind {kind_text:?} is not known"),
            )
        })?;
        let mut identifiers = Vec::new();
        for (kind, f) in &cf.identifiers {
            if let Some(value) = self.value(first, f)? {
                identifiers.push(Ident {
                    kind: kind.clone(),
                    value,
                });
            }
        }
        let mut diagnoses: Vec<Diagnosis> = Vec::new();
        for g in self.groups("diagnosis") {
            for (code, version, poa) in self.coded(first, g, "poa")? {
                let icd_version = if version.as_deref() == Some("9") {
                    9
                } else {
                    10
                };
                // The principal diagnosis is usually repeated as the first of the list.
                if diagnoses
                    .iter()
                    .any(|d| d.code == code && d.icd_version == icd_version)
                {
                    continue;
                }
                diagnoses.push(Diagnosis {
                    code,
                    icd_version,
                    kind: g.attr("kind").unwrap_or("other").into(),
                    poa,
                });
            }
        }
        let mut procedures: Vec<Procedure> = Vec::new();
        for g in self.groups("procedure") {
            for (code, version, date) in self.coded(first, g, "date")? {
                let kind = if procedures.is_empty() {
                    "principal"
                } else {
                    "other"
                };
                procedures.push(Procedure {
                    code,
                    icd_version: if version.as_deref() == Some("9") {
                        9
                    } else {
                        10
                    },
                    kind: kind.into(),
                    date,
                });
            }
        }
        let mut supporting = Vec::new();
        for g in self.groups("supporting") {
            let category: Text = g.attr("category").unwrap_or_default().into();
            let value: Option<Text> = self.get(first, g, "value")?;
            let end: Option<Text> = self.get(first, g, "end")?;
            let value = match (value, end) {
                (None, None) => continue,
                (v, Some(e)) => compact_str::format_compact!("{}/{}", v.unwrap_or_default(), e),
                (Some(v), None) => v,
            };
            supporting.push(Supporting { category, value });
        }
        let mut care_team = Vec::new();
        for member in &cf.care_team {
            if let Some(mut party) = self.party_of(first, &member.party)? {
                party.person = member.person;
                care_team.push((member.role.clone(), party));
            }
        }
        let lf = &self.line_fields;
        // Without a `[line]` table a claim has no lines, however many rows it has.
        let line_rows = if lf.declared { rows } else { &[] };
        let mut lines = Vec::with_capacity(line_rows.len());
        let line_adjustments = self.line_groups("adjustment");
        for (i, row) in line_rows.iter().enumerate() {
            let number = match self.opt::<Text>(row, lf.number.as_ref())? {
                Some(n) => n.parse::<u32>().map_err(|_| {
                    (
                        Reason::BadNumber,
                        format!("line number {n:?} is not a number"),
                    )
                })?,
                None => i as u32 + 1,
            };
            let rendering = self.party_of(row, &lf.rendering)?.map(|mut p| {
                p.person = true;
                p
            });
            lines.push(ClaimLine {
                number,
                service_code: self.opt(row, lf.service_code.as_ref())?,
                modifiers: self.values(row, &lf.modifiers)?,
                revenue_code: self.opt(row, lf.revenue_code.as_ref())?,
                ndc: self
                    .opt(row, lf.ndc.as_ref())?
                    .filter(|n: &Text| n.bytes().any(|b| b != b'0')),
                quantity: self.opt(row, lf.quantity.as_ref())?,
                from: self.opt(row, lf.from.as_ref())?,
                thru: self.opt(row, lf.thru.as_ref())?,
                place_of_service: self.opt(row, lf.place_of_service.as_ref())?,
                rendering,
                diagnosis_pointers: Vec::new(),
                amounts: self.amounts(row, &lf.amounts)?,
                adjustments: self.adjustments(row, line_adjustments)?,
                payment_status: self.opt(row, lf.payment_status.as_ref())?,
            });
        }
        Ok(Claim {
            kind: Some(kind),
            claim_id: self.required_of(first, cf.claim_id.as_ref(), "claim_id")?,
            member_id: self.required_of(first, cf.member_id.as_ref(), "member_id")?,
            coverage_key: self.opt(first, cf.coverage_key.as_ref())?,
            member_identifiers: Vec::new(),
            member: None,
            identifiers,
            change: self.change(first)?,
            type_code: self.opt(first, cf.type_code.as_ref())?,
            type_of_bill: self.opt(first, cf.type_of_bill.as_ref())?,
            from: self.opt(first, cf.from.as_ref())?,
            thru: self.opt(first, cf.thru.as_ref())?,
            created: self.opt(first, cf.created.as_ref())?,
            received: self.opt(first, cf.received.as_ref())?,
            payer: self.party_of(first, &cf.payer)?.unwrap_or_default(),
            billing: self.party_of(first, &cf.billing)?,
            facility: self.party_of(first, &cf.facility)?,
            care_team,
            diagnoses,
            procedures,
            supporting,
            amounts: self.amounts(first, &self.claim_amounts)?,
            adjustments: self.adjustments(first, self.groups("adjustment"))?,
            adjudicated: self.opt::<Text>(first, cf.adjudicated.as_ref())?.as_deref()
                == Some("true"),
            payment_status: self.opt(first, cf.payment_status.as_ref())?,
            network_status: self.opt(first, cf.network_status.as_ref())?,
            lines,
            position,
        })
    }

    fn formulary_drug(
        &self,
        row: &Row<'_>,
        position: Position,
    ) -> Result<FormularyDrug, ValueError> {
        let p = &self.part;
        let flag = |name: &str| -> Result<Option<bool>, ValueError> {
            Ok(self
                .get(row, p, name)?
                .map(|v: Text| matches!(v.as_str(), "true" | "Y" | "1")))
        };
        Ok(FormularyDrug {
            formulary_id: self.required(row, p, "formulary_id")?,
            formulary_name: self.get(row, p, "formulary_name")?,
            rxnorm: self.required(row, p, "rxnorm")?,
            drug_name: self.get(row, p, "drug_name")?,
            ndcs: self.list(row, p, "ndcs")?,
            dose_form: self.get(row, p, "dose_form")?,
            tier: self.get(row, p, "tier")?,
            pharmacy_benefit_types: self.list(row, p, "pharmacy_benefit_types")?,
            prior_auth: flag("prior_auth")?,
            step_therapy: flag("step_therapy")?,
            quantity_limit: flag("quantity_limit")?,
            quantity_limit_amount: self.get(row, p, "quantity_limit_amount")?,
            quantity_limit_days: self.get(row, p, "quantity_limit_days")?,
            effective_start: self.get(row, p, "effective_start")?,
            effective_end: self.get(row, p, "effective_end")?,
            quantity_limit_type: self.get(row, p, "quantity_limit_type")?,
            formulary_version: self.get(row, p, "formulary_version")?,
            contract_year: self.get(row, p, "contract_year")?,
            selected_drug: flag("selected_drug")?,
            excluded_drug: flag("excluded_drug")?,
            capped_benefit: flag("capped_benefit")?,
            indications: self.list(row, p, "indications")?,
            change: self.change(row)?,
            position,
        })
    }
}

/// One physical row as read, with its position.
struct RawRow {
    record: Record,
    line: u64,
    byte: u64,
}

impl Reader for DelimitedReader {
    fn read(&self, path: &Path, emit: &mut dyn FnMut(Item)) -> Result<FileSummary, Error> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let quote = self.mapping.source.quote.as_ref().map(|q| q.as_bytes()[0]);
        let mut rdr = Splitter::new(file, self.mapping.delimiter(), quote);
        let mut rec = Record::default();
        let header = match rdr.read_record(&mut rec) {
            Ok(Some(_)) => header_names(rec.iter()),
            Ok(None) => return Ok(FileSummary::default()),
            Err(e) => return Err(io(e)),
        };
        let layout = Compiled::new(self.mapping.clone(), &header)?;
        let file_name: Arc<str> = Arc::from(path.display().to_string());
        let mut summary = FileSummary::default();
        let mut group: Vec<RawRow> = Vec::new();
        let mut group_key: Vec<u8> = Vec::new();
        let mut spare: Vec<Record> = Vec::new();
        loop {
            let pos = rdr.position();
            match rdr.read_record(&mut rec) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    // The rows read so far are records; the rest of the file is not read.
                    flush(&layout, &file_name, &mut group, &mut spare, emit);
                    emit(Err(malformed(&file_name, pos, e.to_string())));
                    return Err(io(e));
                }
            }
            summary.units += 1;
            if rec.is_oversized() {
                flush(&layout, &file_name, &mut group, &mut spare, emit);
                group_key.clear();
                let message = format!(
                    "line {}: a record longer than {} MiB (not delimited text, or a quote never \
                     closed); read past",
                    pos.line,
                    MAX_RECORD >> 20
                );
                emit(Err(malformed(&file_name, pos, message)));
                continue;
            }
            if rec.len() == 1
                && rec
                    .get(0)
                    .is_some_and(|f| f.iter().all(u8::is_ascii_whitespace))
            {
                continue; // blank line
            }
            let key = layout.group_col.and_then(|i| rec.get(i)).unwrap_or(&[]);
            if layout.group_col.is_none() || key != group_key.as_slice() || key.is_empty() {
                flush(&layout, &file_name, &mut group, &mut spare, emit);
                group_key.clear();
                group_key.extend_from_slice(key);
            }
            // The row moves into the group and a spare record (a flushed row's, with its
            // buffers) takes its place: no copy and no allocation per row.
            let record = std::mem::replace(&mut rec, spare.pop().unwrap_or_default());
            group.push(RawRow {
                record,
                line: pos.line,
                byte: pos.byte,
            });
        }
        flush(&layout, &file_name, &mut group, &mut spare, emit);
        summary.bytes = rdr.position().byte;
        Ok(summary)
    }
}

/// The reject of a row that could not be read as a record (its bytes are not kept).
fn malformed(file: &Arc<str>, pos: Pos, message: String) -> Reject {
    let position = Position {
        file: file.clone(),
        line: pos.line,
        byte_offset: pos.byte,
        ..Default::default()
    };
    Reject::new(position, Stage::Parse, Reason::Malformed, message, "")
}

fn raw_text(layout: &Compiled, rows: &[RawRow]) -> String {
    let d = layout.mapping.delimiter() as char;
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (j, f) in r.record.iter().enumerate() {
            if j > 0 {
                out.push(d);
            }
            out.push_str(&String::from_utf8_lossy(f));
        }
    }
    out
}

/// Turn the buffered rows of one record into an item; their records go to `spare`, for the
/// rows to come.
fn flush(
    layout: &Compiled,
    file: &Arc<str>,
    rows: &mut Vec<RawRow>,
    spare: &mut Vec<Record>,
    emit: &mut dyn FnMut(Item),
) {
    if rows.is_empty() {
        return;
    }
    let position = Position {
        file: file.clone(),
        line: rows[0].line,
        byte_offset: rows[0].byte,
        ..Default::default()
    };
    let item = build(layout, rows, position.clone()).map_err(|(reason, message)| {
        let stage = match reason {
            Reason::FieldCount | Reason::Encoding | Reason::Malformed => Stage::Parse,
            _ => Stage::Validate,
        };
        Reject::new(position, stage, reason, message, raw_text(layout, rows))
    });
    emit(item);
    spare.extend(rows.drain(..).map(|r| r.record));
}

fn build(
    layout: &Compiled,
    rows: &[RawRow],
    position: Position,
) -> Result<SourceRecord, ValueError> {
    let mut parsed = Vec::with_capacity(rows.len());
    for r in rows {
        let n = r.record.len();
        // CMS RIF rows may carry one extra, empty trailing field.
        let trailing_ok =
            n > layout.width && r.record.iter().skip(layout.width).all(|f| f.is_empty());
        if n != layout.width && !trailing_ok {
            return Err((
                Reason::FieldCount,
                format!(
                    "line {}: {n} fields where the header has {}",
                    r.line, layout.width
                ),
            ));
        }
        // One UTF-8 check over the record's bytes checks every field (see `split::Record`);
        // fields are then taken from it as the mapping asks for them.
        let field_of =
            |at: usize| (0..n).find(|&i| r.record.range(i).is_some_and(|g| g.contains(&at)));
        let all = std::str::from_utf8(r.record.as_slice()).map_err(|e| {
            let field = field_of(e.valid_up_to()).map_or(n, |i| i + 1);
            (
                Reason::Encoding,
                format!("line {}: field {field}: invalid UTF-8", r.line),
            )
        })?;
        parsed.push(Row {
            all,
            record: &r.record,
        });
    }
    let first = &parsed[0];
    match layout.mapping.source.record.as_str() {
        "member" => {
            if parsed.len() > 1 {
                // Grouped member rows (e.g. one per reference year): the last one is current.
                let last = parsed.last().unwrap_or(first);
                return layout
                    .member(last, position)
                    .map(|m| SourceRecord::Member(Box::new(m)));
            }
            layout
                .member(first, position)
                .map(|m| SourceRecord::Member(Box::new(m)))
        }
        "claim" => layout
            .claim(&parsed, position)
            .map(|c| SourceRecord::Claim(Box::new(c))),
        _ => layout
            .formulary_drug(first, position)
            .map(|d| SourceRecord::FormularyDrug(Box::new(d))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPPING: &str = r#"
[source]
name = "t"
delimiter = "|"
record = "member"
detect = ["ID"]

[codes.sex]
"1" = "male"
"2" = "female"
"0" = ""
"*" = "unknown"

[codes.strict]
"A" = "active"

[member]
member_id = "ID"
gender = { column = "SEX", codes = "sex" }
"#;

    fn read(mapping: &str, data: &str) -> Result<Vec<Item>, Error> {
        let m = Mapping::parse(Path::new("t.toml"), mapping).expect("mapping parses");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("extract.txt");
        std::fs::write(&path, data).expect("written");
        let mut items = Vec::new();
        DelimitedReader::new(Arc::new(m)).read(&path, &mut |i| items.push(i))?;
        Ok(items)
    }

    fn gender(item: &Item) -> Option<&str> {
        match item {
            Ok(SourceRecord::Member(m)) => m.gender.as_deref(),
            other => panic!("not a member: {other:?}"),
        }
    }

    /// A claim layout with a field of every kind a claim reads from its first row: scalars,
    /// an identifier group, parties (a constant payer, a billing provider) and care team
    /// members (one not a person).
    const CLAIMS: &str = r#"
[source]
name = "t"
delimiter = "|"
record = "claim"
detect = ["CLM"]
group_by = "CLM"

[codes.kind]
P = "professional"

[claim]
kind = { column = "KIND", codes = "kind" }
claim_id = "CLM"
member_id = "MBR"
coverage_key = "PLAN"
from = "FROM"
adjudicated = { value = "true" }
payer_id = { value = "PAYER1" }
payer_name = { value = "A Plan" }
billing_npi = "BILL"
identifier = [{ kind = "group", value = "GRP" }, { kind = "absent" }]
care_team = [
  { role = "referring", provider_npi = "REF" },
  { role = "supervisor", person = "false", provider_npi = "SUP" },
]

[line]
number = "LN"
"#;

    #[test]
    fn claim_fields_read_from_the_first_row_and_name_what_is_missing() {
        let header = "KIND|CLM|MBR|PLAN|FROM|BILL|GRP|REF|SUP|LN\n";
        let rows = "P|c1|m1|gold|2024|1234567893|g7|1111111111|2222222222|1\n\
                    P|c1|m1|gold|2024|1234567893|g7|1111111111|2222222222|2\n\
                    P||m2|gold|2024|||||1\n\
                    P|c3||gold|2024|||||1\n";
        let items = read(CLAIMS, &format!("{header}{rows}")).unwrap();
        assert_eq!(items.len(), 3);

        let Ok(SourceRecord::Claim(c)) = &items[0] else {
            panic!("not a claim: {:?}", items[0]);
        };
        assert_eq!(c.kind, Some(ClaimKind::Professional));
        assert_eq!((c.claim_id.as_str(), c.member_id.as_str()), ("c1", "m1"));
        assert_eq!(c.coverage_key.as_deref(), Some("gold"));
        assert_eq!(c.from.as_deref(), Some("2024"));
        assert!(c.adjudicated);
        assert_eq!(
            (c.payer.id.as_deref(), c.payer.name.as_deref()),
            (Some("PAYER1"), Some("A Plan"))
        );
        let billing = c.billing.as_ref().expect("billing provider");
        assert_eq!(
            (billing.id.as_deref(), billing.id_kind.as_deref()),
            (Some("1234567893"), Some("npi"))
        );
        let ids: Vec<(&str, &str)> = c
            .identifiers
            .iter()
            .map(|i| (i.kind.as_str(), i.value.as_str()))
            .collect();
        assert_eq!(ids, [("group", "g7")]);
        let team: Vec<(&str, Option<&str>, bool)> = c
            .care_team
            .iter()
            .map(|(role, p)| (role.as_str(), p.id.as_deref(), p.person))
            .collect();
        assert_eq!(
            team,
            [
                ("referring", Some("1111111111"), true),
                ("supervisor", Some("2222222222"), false)
            ]
        );
        assert_eq!(c.lines.iter().map(|l| l.number).collect::<Vec<_>>(), [1, 2]);

        // A required field left empty is a reject naming the field and its column.
        let missing = |i: usize| {
            let r = items[i].as_ref().expect_err("a reject");
            (r.reason, r.message.clone())
        };
        assert_eq!(
            missing(1),
            (Reason::MissingValue, "claim_id (CLM) is empty".to_string())
        );
        assert_eq!(
            missing(2),
            (Reason::MissingValue, "member_id (MBR) is empty".to_string())
        );
    }

    #[test]
    fn code_tables_translate_default_and_empty() {
        let items = read(MAPPING, "ID|SEX\na|1\nb|2\nc|0\nd|7\ne|\n").unwrap();
        let got: Vec<Option<&str>> = items.iter().map(gender).collect();
        assert_eq!(
            got,
            [Some("male"), Some("female"), None, Some("unknown"), None]
        );
        // Without a default, an unlisted code is a reject naming the code and the table.
        let strict = MAPPING.replace("codes = \"sex\"", "codes = \"strict\"");
        let items = read(&strict, "ID|SEX\na|A\nb|B\n").unwrap();
        let err = items[1].as_ref().unwrap_err();
        assert_eq!(err.reason, Reason::UnknownCode);
        assert!(
            err.message.contains("\"B\"") && err.message.contains("strict"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_field_naming_a_missing_code_table_fails_the_read_up_front() {
        let typo = MAPPING.replace("codes = \"sex\"", "codes = \"sx\"");
        match read(&typo, "ID|SEX\na|1\n") {
            Err(Error::Mapping { message, .. }) => {
                assert!(
                    message.contains("gender") && message.contains("\"sx\""),
                    "{message}"
                );
            }
            other => panic!("expected a mapping error, got {other:?}"),
        }
    }
}
