//! Mapping files: how a delimited layout's columns become canonical records.
//!
//! A mapping file (TOML, one per layout, in `mappings/`) has a `[source]` table that says how
//! to read and recognise the file, a `[codes.*]` set of translation tables, and one table per
//! record part (`[member]`, `[claim]`, `[line]`, `[formulary_drug]`) that maps model fields to
//! columns. A payer whose extract has other column names writes a mapping file, not code.
//!
//! A field is given either as a column name (`claim_id = "CLM_ID"`) or as a table:
//! `{ column = "X", codes = "table", value = "const", type = "date" | "decimal" | "int" }`,
//! or `{ concat = ["A", "B"] }` for columns joined together.
//! Repeated columns use `{n}` with a range: `{ column = "ICD_DGNS_CD{n}", n = [1, 12] }`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rustc_hash::FxBuildHasher;
use serde::Deserialize;

use crate::model::Text;
use crate::Error;

/// A parsed mapping file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// How to read and recognise the file.
    pub source: SourceSpec,
    /// Code translation tables: table name → source code → target code. The key `"*"` is the
    /// default for codes not listed; without it an unlisted code is a reject.
    #[serde(default)]
    pub codes: BTreeMap<String, BTreeMap<String, String>>,
    /// Member fields (for `record = "member"`).
    pub member: Option<BTreeMap<String, toml::Value>>,
    /// Coverages a member row yields (for `record = "member"`).
    #[serde(default)]
    pub coverage: Vec<BTreeMap<String, toml::Value>>,
    /// Claim header fields (for `record = "claim"`).
    pub claim: Option<BTreeMap<String, toml::Value>>,
    /// Claim line fields (for `record = "claim"`).
    pub line: Option<BTreeMap<String, toml::Value>>,
    /// Formulary drug fields (for `record = "formulary_drug"`).
    pub formulary_drug: Option<BTreeMap<String, toml::Value>>,
    /// Where the file was loaded from (set by the loader).
    #[serde(skip)]
    pub path: PathBuf,
}

/// The `[source]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Layout name, e.g. `cms-rif-carrier`.
    pub name: String,
    /// One line for people.
    #[serde(default)]
    pub description: String,
    /// Field delimiter (one byte).
    pub delimiter: String,
    /// Quote character; absent means fields are never quoted (CMS RIF).
    pub quote: Option<String>,
    /// The record kind each row (or row group) yields: `member`, `claim`, `formulary_drug`.
    pub record: String,
    /// Header columns that identify the layout: a file whose header has all of them matches.
    pub detect: Vec<String>,
    /// Consecutive rows with the same value in this column form one record (claim lines).
    pub group_by: Option<String>,
    /// Date formats tried in order: `DD-MON-YYYY`, `YYYY-MM-DD`, `YYYYMMDD`, `MM/DD/YYYY`.
    #[serde(default = "default_date_formats")]
    pub date_formats: Vec<String>,
    /// The column that says what the row does (`DML_IND`), and its code table.
    pub change: Option<ChangeSpec>,
}

fn default_date_formats() -> Vec<String> {
    vec!["YYYY-MM-DD".into()]
}

/// How the change column is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSpec {
    /// The column.
    pub column: String,
    /// Source code → `upsert` | `replace` | `cancel` | `delete`.
    pub codes: BTreeMap<String, String>,
}

impl Mapping {
    /// Parse a mapping from TOML text.
    ///
    /// # Errors
    /// When the TOML is invalid or the mapping is inconsistent.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let mut m: Mapping = toml::from_str(text).map_err(|e| Error::Mapping {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        m.path = path.to_path_buf();
        let bad = |message: String| Error::Mapping {
            path: path.display().to_string(),
            message,
        };
        if m.source.delimiter.len() != 1 {
            return Err(bad("source.delimiter must be one byte".into()));
        }
        if m.source.quote.as_ref().is_some_and(|q| q.len() != 1) {
            return Err(bad("source.quote must be one byte".into()));
        }
        let part = match m.source.record.as_str() {
            "member" => m.member.is_some(),
            "claim" => m.claim.is_some(),
            "formulary_drug" => m.formulary_drug.is_some(),
            other => return Err(bad(format!("unknown source.record {other:?}"))),
        };
        if !part {
            return Err(bad(format!(
                "source.record = {:?} needs a [{}] table",
                m.source.record, m.source.record
            )));
        }
        if m.source.detect.is_empty() {
            return Err(bad("source.detect must name at least one column".into()));
        }
        Ok(m)
    }

    /// Load one mapping file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid mapping.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Load every `*.toml` in a folder, sorted by file name.
    ///
    /// # Errors
    /// When the folder or one of the files cannot be read or parsed.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>, Error> {
        let io = |source| Error::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Self::load(p)).collect()
    }

    /// Whether a header row (column names) is this layout's.
    pub fn matches_header(&self, header: &[String]) -> bool {
        self.source
            .detect
            .iter()
            .all(|c| header.iter().any(|h| h == c))
    }

    /// The delimiter byte.
    pub fn delimiter(&self) -> u8 {
        self.source.delimiter.as_bytes()[0]
    }
}

/// How a field's value is produced from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldSource {
    /// The value of a column (by index).
    Column(usize),
    /// A constant.
    Const(String),
    /// Several columns joined without a separator (e.g. a type of bill from three codes).
    Concat(Vec<usize>),
}

/// The declared type of a field, which decides how it is validated and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// Text, trimmed.
    Text,
    /// A date, normalised to ISO `YYYY-MM-DD`.
    Date,
    /// A decimal number, kept as text.
    Decimal,
    /// An integer.
    Int,
}

/// One compiled field: where it comes from, its type and its code table.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Where the value comes from.
    pub source: FieldSource,
    /// The column's name (for messages), or the constant.
    pub label: String,
    /// Its type.
    pub ty: FieldType,
    /// The code table that translates it, if any.
    pub codes: Option<String>,
    /// That table, once [`FieldSet::resolve_codes`] has found it in the mapping.
    pub table: Option<std::sync::Arc<CodeTable>>,
}

/// A `[codes.*]` table of a mapping, ready for lookups: each source code's translation
/// (`None` where it translates to nothing), and the `"*"` default for codes not listed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CodeTable {
    codes: HashMap<Box<str>, Option<Text>, FxBuildHasher>,
    default: Option<Option<Text>>,
}

impl CodeTable {
    /// Compile a table as the mapping file gives it.
    pub fn new(table: &BTreeMap<String, String>) -> Self {
        let value = |v: &String| (!v.is_empty()).then(|| Text::from(v.as_str()));
        Self {
            codes: table
                .iter()
                .filter(|(k, _)| k.as_str() != "*")
                .map(|(k, v)| (k.as_str().into(), value(v)))
                .collect(),
            default: table.get("*").map(value),
        }
    }

    /// What `code` translates to: `Some(None)` when to nothing, `None` when the table has
    /// neither the code nor a default.
    pub fn translate(&self, code: &str) -> Option<&Option<Text>> {
        self.codes.get(code).or(self.default.as_ref())
    }
}

/// A compiled set of named fields for one record part; repeated fields expand to several.
///
/// The maps hash with FxHash: the reader looks fields up by name for every row, and SipHash
/// over short names cost more than the lookups' other work.
#[derive(Debug, Clone, Default)]
pub struct FieldSet {
    /// Field name → one or more compiled fields (several for `{n}` ranges and lists).
    pub fields: HashMap<String, Vec<Field>, FxBuildHasher>,
    /// Extra keys that are not fields (e.g. `category`, `kind`, `role`) with their text.
    pub attrs: HashMap<String, String, FxBuildHasher>,
}

impl FieldSet {
    /// The single field of that name, if declared.
    pub fn one(&self, name: &str) -> Option<&Field> {
        self.fields.get(name).and_then(|v| v.first())
    }

    /// All fields of that name (a repeated group), in order.
    pub fn all(&self, name: &str) -> &[Field] {
        self.fields.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Give every field that names a code table that table from `tables`.
    ///
    /// # Errors
    /// The message naming the field and table, when a field names a table that is not there.
    pub fn resolve_codes(
        &mut self,
        tables: &HashMap<String, std::sync::Arc<CodeTable>, FxBuildHasher>,
    ) -> Result<(), String> {
        for (name, fields) in &mut self.fields {
            for f in fields {
                if let Some(t) = &f.codes {
                    let table = tables.get(t).ok_or_else(|| {
                        format!(
                            "field {name} names code table {t:?}, which the mapping does not have"
                        )
                    })?;
                    f.table = Some(table.clone());
                }
            }
        }
        Ok(())
    }

    /// A non-field attribute.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }
}

/// Keys of a field table that are attributes (copied as text), not column references.
const ATTR_KEYS: &[&str] = &[
    "category",
    "kind",
    "role",
    "key",
    "type_display",
    "id_kind",
    "person",
    "group",
];

/// Compile a table of `field = spec` entries against a header.
///
/// # Errors
/// When a column the table names is not in the header, or a spec is malformed.
pub fn compile(
    table: &BTreeMap<String, toml::Value>,
    header: &[String],
    path: &Path,
) -> Result<FieldSet, Error> {
    let mut set = FieldSet::default();
    for (name, spec) in table {
        if ATTR_KEYS.contains(&name.as_str()) || name.ends_with("_kind") {
            if let Some(s) = spec.as_str() {
                set.attrs.insert(name.clone(), s.to_string());
                continue;
            }
        }
        let fields = compile_spec(name, spec, header, path)?;
        set.fields.insert(name.clone(), fields);
    }
    Ok(set)
}

fn compile_spec(
    name: &str,
    spec: &toml::Value,
    header: &[String],
    path: &Path,
) -> Result<Vec<Field>, Error> {
    let bad = |message: String| Error::Mapping {
        path: path.display().to_string(),
        message: format!("field {name}: {message}"),
    };
    let col = |c: &str| -> Result<usize, Error> {
        header
            .iter()
            .position(|h| h == c)
            .ok_or_else(|| bad(format!("column {c:?} is not in the file's header")))
    };
    match spec {
        toml::Value::String(c) => Ok(vec![Field {
            source: FieldSource::Column(col(c)?),
            label: c.clone(),
            ty: FieldType::Text,
            codes: None,
            table: None,
        }]),
        toml::Value::Array(items) => {
            let mut out = Vec::new();
            for item in items {
                out.extend(compile_spec(name, item, header, path)?);
            }
            Ok(out)
        }
        toml::Value::Table(t) => {
            let ty = match t.get("type").and_then(|v| v.as_str()).unwrap_or("text") {
                "text" => FieldType::Text,
                "date" => FieldType::Date,
                "decimal" => FieldType::Decimal,
                "int" => FieldType::Int,
                other => return Err(bad(format!("unknown type {other:?}"))),
            };
            let codes = t.get("codes").and_then(|v| v.as_str()).map(str::to_string);
            let optional = t.get("optional").and_then(|v| v.as_bool()).unwrap_or(false);
            if let Some(v) = t.get("value") {
                let v = v
                    .as_str()
                    .ok_or_else(|| bad("value must be a string".into()))?;
                return Ok(vec![Field {
                    source: FieldSource::Const(v.to_string()),
                    label: v.to_string(),
                    ty,
                    codes,
                    table: None,
                }]);
            }
            if let Some(toml::Value::Array(cols)) = t.get("concat") {
                let idx = cols
                    .iter()
                    .map(|c| col(c.as_str().unwrap_or_default()))
                    .collect::<Result<Vec<_>, _>>()?;
                let label = cols
                    .iter()
                    .filter_map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join("+");
                return Ok(vec![Field {
                    source: FieldSource::Concat(idx),
                    label,
                    ty,
                    codes,
                    table: None,
                }]);
            }
            let c = t
                .get("column")
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad("needs `column` or `value`".into()))?;
            let names: Vec<String> = match t.get("n") {
                Some(toml::Value::Array(r)) => {
                    let (Some(a), Some(b)) = (
                        r.first().and_then(|v| v.as_integer()),
                        r.get(1).and_then(|v| v.as_integer()),
                    ) else {
                        return Err(bad("n must be [first, last]".into()));
                    };
                    (a..=b).map(|i| c.replace("{n}", &i.to_string())).collect()
                }
                Some(_) => return Err(bad("n must be [first, last]".into())),
                None => vec![c.to_string()],
            };
            let mut out = Vec::new();
            for n in names {
                // `optional` columns may be absent from older files (e.g. a column added later).
                match header.iter().position(|h| *h == n) {
                    Some(i) => out.push(Field {
                        source: FieldSource::Column(i),
                        label: n,
                        ty,
                        codes: codes.clone(),
                        table: None,
                    }),
                    None if optional => {}
                    None => return Err(bad(format!("column {n:?} is not in the file's header"))),
                }
            }
            Ok(out)
        }
        _ => Err(bad("must be a column name, a list or a table".into())),
    }
}

/// Compile a list of repeated-group tables (e.g. `[[claim.diagnosis]]`) found under `key` of a
/// part table.
///
/// # Errors
/// As [`compile`].
pub fn compile_groups(
    table: &BTreeMap<String, toml::Value>,
    key: &str,
    header: &[String],
    path: &Path,
) -> Result<Vec<FieldSet>, Error> {
    let Some(toml::Value::Array(items)) = table.get(key) else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|item| {
            let t = item.as_table().ok_or_else(|| Error::Mapping {
                path: path.display().to_string(),
                message: format!("{key} entries must be tables"),
            })?;
            let t: BTreeMap<String, toml::Value> =
                t.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            compile(&t, header, path)
        })
        .collect()
}

/// `str::trim`, with a fast path for the usual field that starts and ends with printable
/// ASCII (every byte above space and below 0x80 is not whitespace, so nothing is trimmed).
#[inline]
pub fn trim(text: &str) -> &str {
    let plain = |b: Option<&u8>| b.is_some_and(|&b| b > b' ' && b < 0x80);
    let bytes = text.as_bytes();
    if plain(bytes.first()) && plain(bytes.last()) {
        text
    } else {
        text.trim()
    }
}

/// Parse a date in one of the supported formats into ISO `YYYY-MM-DD`.
pub fn parse_date(text: &str, formats: &[String]) -> Option<Text> {
    let t = trim(text);
    formats.iter().find_map(|f| parse_date_with(t, f))
}

fn parse_date_with(t: &str, format: &str) -> Option<Text> {
    let (y, m, d) = match format {
        "DD-MON-YYYY" => {
            let mut it = t.split('-');
            let d = it.next()?;
            let mon = it.next()?;
            let y = it.next()?;
            if it.next().is_some() || d.len() > 2 || y.len() != 4 {
                return None;
            }
            const MONTHS: [&str; 12] = [
                "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
            ];
            let m = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(mon))? + 1;
            (y.parse().ok()?, m as u32, d.parse().ok()?)
        }
        "YYYY-MM-DD" => {
            if t.len() != 10 || &t[4..5] != "-" || &t[7..8] != "-" {
                return None;
            }
            (
                t.get(0..4)?.parse().ok()?,
                t.get(5..7)?.parse().ok()?,
                t.get(8..10)?.parse().ok()?,
            )
        }
        "YYYYMMDD" => {
            if t.len() != 8 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (
                t[0..4].parse().ok()?,
                t[4..6].parse().ok()?,
                t[6..8].parse().ok()?,
            )
        }
        "MM/DD/YYYY" => {
            let mut it = t.split('/');
            let m = it.next()?;
            let d = it.next()?;
            let y = it.next()?;
            if it.next().is_some() || y.len() != 4 {
                return None;
            }
            (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
        }
        _ => return None,
    };
    if !valid_ymd(y, m, d) {
        return None;
    }
    // `{y:04}-{m:02}-{d:02}` without `fmt` (every date of every row goes through here).
    let digit = |v: u32| b'0' + (v % 10) as u8;
    let y = y as u32;
    let iso = [
        digit(y / 1000),
        digit(y / 100),
        digit(y / 10),
        digit(y),
        b'-',
        digit(m / 10),
        digit(m),
        b'-',
        digit(d / 10),
        digit(d),
    ];
    std::str::from_utf8(&iso).ok().map(Text::from)
}

/// Whether year `y`, month `m`, day `d` is a date of the Gregorian calendar (years 1 to 9999,
/// the month's own length, 29 February in leap years only). Every reader's dates pass here.
#[inline]
pub(crate) fn valid_ymd(y: i32, m: u32, d: u32) -> bool {
    if !(1..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return false;
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    d <= days[(m - 1) as usize]
}

/// Validate and normalise an integer (an `i64`, written as Rust writes it); a text already in
/// that form is kept as it is.
pub fn parse_int(text: &str) -> Option<Text> {
    use compact_str::ToCompactString as _;
    let n: i64 = text.parse().ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let normal = !text.starts_with('+')
        && (!digits.starts_with('0') || (digits.len() == 1 && text.len() == 1));
    Some(if normal {
        text.into()
    } else {
        n.to_compact_string()
    })
}

/// Validate and normalise a decimal: optional sign, digits, optional fraction.
///
/// Byte by byte, and a text that is already in normal form (most amounts in extracts) is
/// kept as it is.
pub fn parse_decimal(text: &str) -> Option<Text> {
    let t = trim(text);
    let b = t.as_bytes();
    let signed = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let body = &b[signed..];
    let dot = body.iter().position(|&c| c == b'.');
    let (int, frac) = match dot {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[][..]),
    };
    if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return None;
    }
    let zeros = int.iter().take_while(|&&c| c == b'0').count();
    let normal = b.first() != Some(&b'+')
        && !int.is_empty()
        && (zeros == 0 || int.len() == 1)
        && (dot.is_none() || !frac.is_empty());
    if normal {
        return Some(t.into());
    }
    // Every position below is at an ASCII byte, so the slices are whole characters.
    let sign = if b.first() == Some(&b'-') { "-" } else { "" };
    let int = match &t[signed + zeros..signed + int.len()] {
        "" => "0",
        digits => digits,
    };
    let frac = &t[t.len() - frac.len()..];
    let mut out = Text::with_capacity(sign.len() + int.len() + 1 + frac.len());
    out.push_str(sign);
    out.push_str(int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_is_str_trim() {
        for t in [
            "",
            " ",
            "a",
            " a ",
            "\u{a0}a",
            "a\u{2003}",
            "\x0ba\x0c",
            "ab",
            "é",
            "\ta b\r\n",
            "~",
        ] {
            assert_eq!(trim(t), t.trim(), "{t:?}");
        }
    }

    #[test]
    fn dates_in_every_format() {
        let f = |s: &str| vec![s.to_string()];
        for (text, format, iso) in [
            ("12-MAY-2015", "DD-MON-YYYY", "2015-05-12"),
            ("17-Mar-1981", "DD-MON-YYYY", "1981-03-17"),
            ("2020-02-29", "YYYY-MM-DD", "2020-02-29"),
            ("20190101", "YYYYMMDD", "2019-01-01"),
            ("03/04/2021", "MM/DD/YYYY", "2021-03-04"),
            ("5-jan-0009", "DD-MON-YYYY", "0009-01-05"),
            ("12/31/9999", "MM/DD/YYYY", "9999-12-31"),
        ] {
            assert_eq!(
                parse_date(text, &f(format)).unwrap(),
                iso,
                "{text} {format}"
            );
        }
        assert!(parse_date("2019-02-29", &f("YYYY-MM-DD")).is_none());
        assert!(parse_date("31-FOO-2015", &f("DD-MON-YYYY")).is_none());
        assert!(parse_date("", &f("YYYYMMDD")).is_none());
        assert!(parse_date("2015-05-1é", &f("YYYY-MM-DD")).is_none());
    }

    #[test]
    fn integers_are_written_as_rust_writes_them() {
        for text in [
            "0",
            "-0",
            "+0",
            "00",
            "7",
            "+7",
            "-7",
            "007",
            "-007",
            "120",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "",
            "-",
            "+",
            "1.0",
            "1e3",
            " 1",
            "x",
        ] {
            assert_eq!(
                parse_int(text).map(String::from),
                text.parse::<i64>().ok().map(|n| n.to_string()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn decimals_are_checked_and_kept_exact() {
        // The normal form as the first version wrote it, for every mix of the parts.
        fn reference(text: &str) -> Option<String> {
            let t = text.trim();
            let body = t.strip_prefix(['-', '+']).unwrap_or(t);
            let (int, frac) = body.split_once('.').unwrap_or((body, ""));
            if (int.is_empty() && frac.is_empty())
                || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
            {
                return None;
            }
            let sign = if t.starts_with('-') { "-" } else { "" };
            let int = int.trim_start_matches('0');
            let int = if int.is_empty() { "0" } else { int };
            Some(if frac.is_empty() {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{frac}")
            })
        }
        for sign in ["", "-", "+", "--"] {
            for int in ["", "0", "00", "7", "07", "120", "0120", "x"] {
                for frac in [
                    None,
                    Some(""),
                    Some("0"),
                    Some("50"),
                    Some("5x"),
                    Some("1.2"),
                ] {
                    let text = match frac {
                        Some(f) => format!(" {sign}{int}.{f}"),
                        None => format!("{sign}{int}"),
                    };
                    assert_eq!(
                        parse_decimal(&text).map(String::from),
                        reference(&text),
                        "{text:?}"
                    );
                }
            }
        }
        assert_eq!(parse_decimal("037.50").unwrap(), "37.50");
        assert_eq!(parse_decimal("-0.5").unwrap(), "-0.5");
        assert_eq!(parse_decimal(".5").unwrap(), "0.5");
        assert_eq!(parse_decimal("12").unwrap(), "12");
        assert!(parse_decimal("1,000").is_none());
        assert!(parse_decimal("abc").is_none());
        assert!(parse_decimal("").is_none());
        assert!(parse_decimal(".").is_none());
    }
}
