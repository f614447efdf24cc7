//! The fhirlake formulary XML extract (`urn:example:payer:formulary-extract:1`).
//!
//! Streams the document with quick-xml's namespace-aware reader over a buffered file: memory
//! holds the element path, the current formulary's tier definitions and one `Drug` element
//! (its fields and raw bytes, for rejects), never the document.
//!
//! Records, in file order:
//! - one [`FormularyPlan`] per `Plan` element (its `Formulary`'s id, year and effective date
//!   joined in); a `Formulary` without any `Plan` yields one `FormularyPlan` with an empty
//!   `plan_id`, so that the formulary itself is still published;
//! - one [`FormularyDrug`] (or [`Reject`]) per `Drug` element.
//!
//! Rules enforced beyond well-formedness (the XSD's value types, and the co-constraints its
//! header lists): `QuantityLimitAmount`/`QuantityLimitDays` present if and only if
//! `QuantityLimitYN` is `Y` (reason [`Reason::Rule`]); a `TierLevelValue` must be defined by a
//! `TierDefinition` of its formulary whose label is a known drug tier ([`Reason::UnknownCode`]);
//! trailer counts must equal the `Formulary` and `Drug` elements read (a [`Notice`]).
//! A reject's position is the offending element: its line and its path
//! (`FormularyExtract/Formulary[1]/Drug[2]/QuantityLimitAmount`).
//!
//! A document that is not well-formed cannot be read past the error: the record being read
//! (or, between records, the rest of the file) becomes one [`Reason::Malformed`] reject at the
//! error's line, and everything before it has already been emitted.

// `Item` (a `Result` whose error is the crate's `Reject`) is the readers' contract.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};
use quick_xml::NsReader;

use crate::model::{Change, FormularyDrug, FormularyPlan, Party, Position, SourceRecord};
use crate::Reason;
use crate::{Error, FileSummary, Item, Notice, Reader, Reject, Stage};

use super::tier_code;

/// The namespace of the extract's elements.
pub const NAMESPACE: &str = "urn:example:payer:formulary-extract:1";
const ROOT: &str = "FormularyExtract";

/// Whether an extract carries the whole formulary or only changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractKind {
    /// `FULL`: the extract is the complete formulary; what it does not list is no longer on it.
    Full,
    /// `DELTA`: only the changes since the previous extract (`changeType` ADD/UPD/DEL).
    Delta,
}

impl ExtractKind {
    /// The header's spelling (`FULL`, `DELTA`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Delta => "DELTA",
        }
    }
}

/// Whether `head` (the first bytes of a file) starts a formulary extract: its root element is
/// `FormularyExtract` in [`NAMESPACE`] (any prefix). An XML declaration, comments and a
/// byte-order mark before the root are fine.
pub fn sniff_xml(head: &[u8]) -> bool {
    let mut reader = NsReader::from_reader(head);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, Event::Start(e) | Event::Empty(e))) => {
                return e.local_name().as_ref() == ROOT.as_bytes()
                    && matches!(ns, ResolveResult::Bound(Namespace(n)) if n == NAMESPACE.as_bytes());
            }
            Ok((_, Event::Eof)) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// Read the `Header/ExtractType` of an extract (stops reading at the end of the header).
///
/// Exposed as a function rather than on each record because it is a property of the file: a
/// `FULL` extract means "drugs of these formularies that are not listed are gone", which the
/// caller applies once per file (e.g. by replacing each formulary's items), while a `DELTA`
/// applies record by record through each record's `change`.
///
/// # Errors
/// When the file cannot be read, is not an extract, or its header has no valid `ExtractType`.
pub fn extract_kind(path: &Path) -> Result<ExtractKind, Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let unknown = |message: String| Error::UnknownFormat {
        path: path.display().to_string(),
        message,
    };
    let mut reader = NsReader::from_reader(BufReader::new(file));
    let mut buf = Vec::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut text = String::new();
    loop {
        buf.clear();
        match reader.read_resolved_event_into(&mut buf) {
            Ok((ns, Event::Start(e))) => {
                if names.is_empty()
                    && (e.local_name().as_ref() != ROOT.as_bytes()
                        || !matches!(ns, ResolveResult::Bound(Namespace(n)) if n == NAMESPACE.as_bytes()))
                {
                    return Err(unknown(format!(
                        "root element is not {ROOT} in namespace {NAMESPACE}"
                    )));
                }
                names.push(e.local_name().as_ref().to_vec());
                text.clear();
            }
            Ok((_, Event::Text(t))) => text.push_str(&t.decode().unwrap_or_default()),
            Ok((_, Event::End(_))) => {
                let name = names.pop().unwrap_or_default();
                if name == b"ExtractType" {
                    return match text.trim() {
                        "FULL" => Ok(ExtractKind::Full),
                        "DELTA" => Ok(ExtractKind::Delta),
                        other => Err(unknown(format!(
                            "Header/ExtractType is {other:?}, expected FULL or DELTA"
                        ))),
                    };
                }
                if name == b"Header" {
                    break;
                }
            }
            Ok((_, Event::Eof)) => break,
            Err(e) => {
                return Err(unknown(format!(
                    "not well-formed XML at byte {}: {e}",
                    reader.error_position()
                )))
            }
            Ok(_) => {}
        }
    }
    Err(unknown("no Header/ExtractType".into()))
}

/// Reads fhirlake formulary XML extracts. See the module documentation for what it yields.
#[derive(Debug, Clone, Default)]
pub struct FormularyXmlReader;

impl FormularyXmlReader {
    /// A reader.
    pub fn new() -> Self {
        Self
    }

    /// Read extract bytes from any buffered source (`file` names it in positions).
    ///
    /// # Errors
    /// I/O errors, and a root element that is not `FormularyExtract` in [`NAMESPACE`]
    /// ([`Error::UnknownFormat`], with the line and the namespace found).
    pub fn read_from<R: BufRead>(
        &self,
        file: &str,
        input: R,
        emit: &mut dyn FnMut(Item),
    ) -> Result<FileSummary, Error> {
        Parser::new(file, input).run(emit)
    }
}

impl Reader for FormularyXmlReader {
    fn read(&self, path: &Path, emit: &mut dyn FnMut(Item)) -> Result<FileSummary, Error> {
        let f = File::open(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.read_from(
            &path.display().to_string(),
            BufReader::with_capacity(256 * 1024, f),
            emit,
        )
    }
}

/// A `BufRead` that counts the newlines the parser has consumed and keeps a copy of the bytes
/// consumed since the parser last cleared it (the raw text of the `Drug` being read, for
/// rejects; cleared before every event outside a `Drug`).
struct Tracked<R> {
    inner: R,
    newlines: u64,
    captured: Vec<u8>,
}

impl<R: BufRead> Read for Tracked<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let buf = self.fill_buf()?;
            let n = buf.len().min(out.len());
            out[..n].copy_from_slice(&buf[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Tracked<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if amt > 0 {
            if let Ok(buf) = self.inner.fill_buf() {
                let taken = &buf[..amt.min(buf.len())];
                self.newlines += memchr::memchr_iter(b'\n', taken).count() as u64;
                self.captured.extend_from_slice(taken);
            }
        }
        self.inner.consume(amt);
    }
}

/// A leaf value with the line and path of its element.
#[derive(Debug, Clone, Default)]
struct Val {
    text: String,
    line: u64,
    path: String,
}

/// Why a record is rejected: reason, message, and the offending element.
struct Bad {
    reason: Reason,
    message: String,
    line: u64,
    path: String,
}

impl Bad {
    fn at(v: &Val, reason: Reason, message: String) -> Self {
        Self {
            reason,
            message,
            line: v.line,
            path: v.path.clone(),
        }
    }
}

#[derive(Default)]
struct DrugAcc {
    line: u64,
    offset: u64,
    path: String,
    change: Option<Val>,
    rxcui: Option<Val>,
    ndcs: Vec<Val>,
    name: Option<Val>,
    tier: Option<Val>,
    pa: Option<Val>,
    st: Option<Val>,
    ql: Option<Val>,
    ql_type: Option<Val>,
    ql_amount: Option<Val>,
    ql_days: Option<Val>,
    selected: Option<Val>,
    excluded: Option<Val>,
    capped: Option<Val>,
    diseases: Vec<Val>,
    /// A structural problem found while reading (unknown element, foreign namespace).
    problem: Option<Bad>,
}

#[derive(Default)]
struct PlanAcc {
    line: u64,
    offset: u64,
    path: String,
    contract: Option<Val>,
    plan: Option<Val>,
    segment: Option<Val>,
    hios: Option<Val>,
    /// `State` elements: the plan's service area, USPS state codes.
    states: Vec<Val>,
    problem: Option<Bad>,
}

#[derive(Default)]
struct TierAcc {
    level: Option<Val>,
    label: Option<Val>,
}

#[derive(Default)]
struct FormularyAcc {
    line: u64,
    offset: u64,
    path: String,
    id: Option<Val>,
    version: Option<Val>,
    year: Option<Val>,
    effective: Option<Val>,
    /// Tier level → (PDex code if the label is known, label).
    tiers: Vec<(u8, Option<&'static str>, String)>,
    plans: u64,
    drugs: u64,
    standalone_emitted: bool,
}

struct Parser<R> {
    file: Arc<str>,
    reader: NsReader<Tracked<R>>,
    /// Element path segments (`Formulary[1]`, `Drug[2]`, …).
    path: Vec<String>,
    /// Depth at which an ignored subtree started.
    skip_from: Option<usize>,
    text: String,
    leaf_line: u64,
    formulary: Option<FormularyAcc>,
    plan: Option<PlanAcc>,
    tier: Option<TierAcc>,
    drug: Option<DrugAcc>,
    formularies_read: u64,
    drugs_read: u64,
    trailer_formularies: Option<Val>,
    trailer_drugs: Option<Val>,
    extract_type: Option<Val>,
    header_year: Option<Val>,
    seen_trailer: bool,
    summary: FileSummary,
}

fn bound_ns<'a>(ns: &'a ResolveResult<'_>) -> Cow<'a, str> {
    match ns {
        ResolveResult::Bound(Namespace(n)) => String::from_utf8_lossy(n),
        ResolveResult::Unbound => Cow::Borrowed("(none)"),
        ResolveResult::Unknown(p) => Cow::Owned(format!(
            "(undeclared prefix {})",
            String::from_utf8_lossy(p)
        )),
    }
}

impl<R: BufRead> Parser<R> {
    fn new(file: &str, input: R) -> Self {
        let mut reader = NsReader::from_reader(Tracked {
            inner: input,
            newlines: 0,
            captured: Vec::new(),
        });
        reader.config_mut().expand_empty_elements = true;
        reader.config_mut().check_end_names = true;
        Self {
            file: Arc::from(file),
            reader,
            path: Vec::new(),
            skip_from: None,
            text: String::new(),
            leaf_line: 0,
            formulary: None,
            plan: None,
            tier: None,
            drug: None,
            formularies_read: 0,
            drugs_read: 0,
            trailer_formularies: None,
            trailer_drugs: None,
            extract_type: None,
            header_year: None,
            seen_trailer: false,
            summary: FileSummary::default(),
        }
    }

    fn line(&self) -> u64 {
        self.reader.get_ref().newlines + 1
    }

    fn path_str(&self) -> String {
        self.path.join("/")
    }

    fn position(&self, line: u64, offset: u64, context: String) -> Position {
        Position {
            file: self.file.clone(),
            line,
            byte_offset: offset,
            segment: None,
            context: Some(context.into()),
        }
    }

    fn notice(&mut self, line: u64, context: String, message: String) {
        let position = self.position(line, 0, context);
        self.summary.notices.push(Notice { position, message });
    }

    fn run(mut self, emit: &mut dyn FnMut(Item)) -> Result<FileSummary, Error> {
        let mut buf = Vec::with_capacity(1024);
        loop {
            buf.clear();
            let line = self.line();
            let offset = self.reader.buffer_position();
            if self.drug.is_none() {
                self.reader.get_mut().captured.clear();
            }
            let event = match self.reader.read_resolved_event_into(&mut buf) {
                Ok((ns, ev)) => {
                    let ns_text = match &ev {
                        Event::Start(_) => match &ns {
                            ResolveResult::Bound(Namespace(n)) if *n == NAMESPACE.as_bytes() => {
                                None
                            }
                            other => Some(bound_ns(other).into_owned()),
                        },
                        _ => None,
                    };
                    (ns_text, ev.into_owned())
                }
                Err(e) => {
                    self.fail(emit, &e.to_string(), offset);
                    break;
                }
            };
            match event {
                (foreign, Event::Start(e)) => {
                    self.summary.units += 1;
                    // quick-xml consumes a tag's `<` with the text before it: the tag starts one
                    // byte before its captured bytes then. (Exact outside a `Drug`, where the
                    // capture holds this event only; offsets are only used there.)
                    let after = self.reader.buffer_position();
                    let tracked = self.reader.get_mut();
                    let lt_missing = tracked.captured.first() != Some(&b'<');
                    let start = after
                        .saturating_sub(tracked.captured.len() as u64)
                        .saturating_sub(u64::from(lt_missing));
                    if lt_missing && self.drug.is_none() {
                        tracked.captured.insert(0, b'<');
                    }
                    self.start(&e, foreign, line, start, emit)?;
                }
                (_, Event::End(_)) => self.end(emit),
                (_, Event::Text(t)) if self.skip_from.is_none() => match t.decode() {
                    Ok(s) => self.text.push_str(&s),
                    Err(e) => self.encoding_problem(line, &e.to_string()),
                },
                (_, Event::CData(t)) if self.skip_from.is_none() => match t.decode() {
                    Ok(s) => self.text.push_str(&s),
                    Err(e) => self.encoding_problem(line, &e.to_string()),
                },
                (_, Event::GeneralRef(r)) if self.skip_from.is_none() => {
                    let resolved = if r.is_char_ref() {
                        r.resolve_char_ref().ok().flatten().map(String::from)
                    } else {
                        r.decode().ok().and_then(|name| {
                            quick_xml::escape::resolve_predefined_entity(&name).map(String::from)
                        })
                    };
                    match resolved {
                        Some(s) => self.text.push_str(&s),
                        None => {
                            let name = String::from_utf8_lossy(&r.into_inner()).into_owned();
                            self.fail(emit, &format!("unknown entity reference &{name};"), offset);
                            break;
                        }
                    }
                }
                (_, Event::Eof) => {
                    if !self.path.is_empty() {
                        let open = self.path_str();
                        self.fail(
                            emit,
                            &format!("document ends inside {open} (truncated file?)"),
                            offset,
                        );
                    }
                    break;
                }
                _ => {}
            }
        }
        self.summary.bytes = self.reader.buffer_position();
        self.check_trailer();
        Ok(self.summary)
    }

    fn encoding_problem(&mut self, line: u64, message: &str) {
        let path = self.path_str();
        if let Some(d) = self.drug.as_mut() {
            d.problem.get_or_insert(Bad {
                reason: Reason::Encoding,
                message: format!("{path}: {message}"),
                line,
                path,
            });
        } else {
            self.notice(line, path, format!("text is not valid UTF-8: {message}"));
        }
    }

    /// A well-formedness error: the record being read (or the rest of the file) is rejected.
    fn fail(&mut self, emit: &mut dyn FnMut(Item), message: &str, offset: u64) {
        let line = self.line();
        let path = self.path_str();
        let raw = String::from_utf8_lossy(&self.reader.get_ref().captured).into_owned();
        let (start, what) = match &self.drug {
            Some(d) => (d.offset, "the Drug element"),
            None => (offset, "the rest of the file"),
        };
        let msg = format!(
            "XML is not well-formed at line {line} (in {path}): {message}; {what} cannot be read"
        );
        let position = self.position(line, start, path.clone());
        emit(Err(Reject::new(
            position,
            Stage::Parse,
            Reason::Malformed,
            msg,
            raw,
        )));
        self.notice(
            line,
            path,
            format!("reading stopped at line {line}: {message}; elements after it were not read"),
        );
        self.drug = None;
        self.path.clear();
    }

    fn start(
        &mut self,
        e: &BytesStart<'_>,
        foreign: Option<String>,
        line: u64,
        offset: u64,
        emit: &mut dyn FnMut(Item),
    ) -> Result<(), Error> {
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        self.text.clear();
        self.leaf_line = line;
        let depth = self.path.len();
        if self.skip_from.is_some() {
            self.path.push(name);
            return Ok(());
        }
        if depth == 0 {
            if let Some(ns) = foreign.as_deref() {
                return Err(Error::UnknownFormat {
                    path: self.file.to_string(),
                    message: format!(
                        "line {line}: root element {name} is in namespace {ns}, expected {NAMESPACE}"
                    ),
                });
            }
            if name != ROOT {
                return Err(Error::UnknownFormat {
                    path: self.file.to_string(),
                    message: format!("line {line}: root element is {name}, expected {ROOT}"),
                });
            }
            let version = e
                .try_get_attribute("schemaVersion")
                .ok()
                .flatten()
                .map(|a| String::from_utf8_lossy(&a.value).into_owned());
            if version.as_deref() != Some("1.0") {
                return Err(Error::UnknownFormat {
                    path: self.file.to_string(),
                    message: format!(
                        "line {line}: schemaVersion is {version:?}, this reader knows \"1.0\""
                    ),
                });
            }
            self.path.push(name);
            return Ok(());
        }
        let parent = self.parent_kind();
        let segment = match (parent, name.as_str()) {
            (Parent::Root, "Formulary") => {
                self.formularies_read += 1;
                format!("Formulary[{}]", self.formularies_read)
            }
            (Parent::Formulary, "Drug") => {
                let n = self.formulary.as_ref().map_or(0, |f| f.drugs) + 1;
                format!("Drug[{n}]")
            }
            (Parent::Formulary, "Plan") => {
                let n = self.formulary.as_ref().map_or(0, |f| f.plans) + 1;
                format!("Plan[{n}]")
            }
            _ => name.clone(),
        };
        self.path.push(segment);
        let path = self.path_str();
        if let Some(ns) = foreign {
            let msg = format!("element {name} is in namespace {ns}, expected {NAMESPACE}");
            self.unexpected(line, path, Reason::Malformed, msg);
            return Ok(());
        }
        match (parent, name.as_str()) {
            (Parent::Root, "Header" | "Trailer") => {
                if name == "Trailer" {
                    self.seen_trailer = true;
                }
            }
            (Parent::Root, "Formulary") => {
                self.formulary = Some(FormularyAcc {
                    line,
                    offset,
                    path,
                    ..Default::default()
                });
            }
            (Parent::Header | Parent::Trailer, _) => {}
            (Parent::Formulary, "FormularyId" | "FormularyVersion" | "ContractYear")
            | (Parent::Formulary, "EffectiveDate") => {}
            (Parent::Formulary, "Plan") => {
                if let Some(f) = self.formulary.as_mut() {
                    f.plans += 1;
                }
                self.plan = Some(PlanAcc {
                    line,
                    offset,
                    path,
                    ..Default::default()
                });
            }
            (Parent::Formulary, "TierDefinition") => {
                self.emit_standalone(emit);
                self.tier = Some(TierAcc::default());
            }
            (Parent::Formulary, "Drug") => {
                self.emit_standalone(emit);
                if let Some(f) = self.formulary.as_mut() {
                    f.drugs += 1;
                }
                self.drugs_read += 1;
                let mut d = DrugAcc {
                    line,
                    offset,
                    path: path.clone(),
                    ..Default::default()
                };
                match e.try_get_attribute("changeType") {
                    Ok(Some(a)) => {
                        d.change = Some(Val {
                            text: String::from_utf8_lossy(&a.value).into_owned(),
                            line,
                            path: format!("{path}/@changeType"),
                        })
                    }
                    Ok(None) => {}
                    Err(err) => {
                        d.problem = Some(Bad {
                            reason: Reason::Malformed,
                            message: format!("{path}: bad attribute: {err}"),
                            line,
                            path: path.clone(),
                        })
                    }
                }
                self.drug = Some(d);
            }
            (Parent::Plan, "ContractId" | "PlanId" | "SegmentId" | "HiosPlanId" | "State") => {}
            (Parent::Tier, "TierLevelValue" | "TierLabel" | "SpecialtyTierYN") => {}
            (
                Parent::Drug,
                "RxCUI"
                | "NDC"
                | "DrugName"
                | "TierLevelValue"
                | "PriorAuthorizationYN"
                | "StepTherapyYN"
                | "QuantityLimitYN"
                | "QuantityLimitType"
                | "QuantityLimitAmount"
                | "QuantityLimitDays"
                | "SelectedDrugYN"
                | "ExcludedDrugYN"
                | "CappedBenefitYN"
                | "IndicationBasedCoverage",
            ) => {}
            (Parent::Indication, "Disease") => {}
            _ => {
                let msg = format!("unexpected element {name}");
                self.unexpected(line, path, Reason::Unsupported, msg);
            }
        }
        Ok(())
    }

    /// An element the layout does not allow here: rejects the record it is in (drug or plan),
    /// or is noticed; its subtree is skipped.
    fn unexpected(&mut self, line: u64, path: String, reason: Reason, message: String) {
        self.skip_from = Some(self.path.len());
        let bad = || Bad {
            reason,
            message: format!("{path}: {message}"),
            line,
            path: path.clone(),
        };
        if let Some(d) = self.drug.as_mut() {
            d.problem.get_or_insert_with(bad);
        } else if let Some(p) = self.plan.as_mut() {
            p.problem.get_or_insert_with(bad);
        } else {
            self.notice(line, path.clone(), format!("{message}; ignored"));
        }
    }

    fn parent_kind(&self) -> Parent {
        let names: Vec<&str> = self
            .path
            .iter()
            .map(|s| s.split('[').next().unwrap_or(s))
            .collect();
        match names.as_slice() {
            [ROOT] => Parent::Root,
            [ROOT, "Header"] => Parent::Header,
            [ROOT, "Trailer"] => Parent::Trailer,
            [ROOT, "Formulary"] => Parent::Formulary,
            [ROOT, "Formulary", "Plan"] => Parent::Plan,
            [ROOT, "Formulary", "TierDefinition"] => Parent::Tier,
            [ROOT, "Formulary", "Drug"] => Parent::Drug,
            [ROOT, "Formulary", "Drug", "IndicationBasedCoverage"] => Parent::Indication,
            _ => Parent::Other,
        }
    }

    fn end(&mut self, emit: &mut dyn FnMut(Item)) {
        if let Some(from) = self.skip_from {
            if self.path.len() > from {
                self.path.pop();
                return;
            }
            self.skip_from = None;
            self.path.pop();
            self.text.clear();
            return;
        }
        let path = self.path_str();
        let Some(segment) = self.path.pop() else {
            return;
        };
        let name = segment.split('[').next().unwrap_or(&segment).to_string();
        let parent = self.parent_kind();
        let val = Val {
            text: self.text.trim().to_string(),
            line: self.leaf_line,
            path,
        };
        self.text.clear();
        match (parent, name.as_str()) {
            (Parent::Header, "ExtractType") => self.extract_type = Some(val),
            (Parent::Header, "ContractYear") => self.header_year = Some(val),
            (Parent::Trailer, "FormularyCount") => self.trailer_formularies = Some(val),
            (Parent::Trailer, "DrugRecordCount") => self.trailer_drugs = Some(val),
            (Parent::Root, "Header") => match self.extract_type.as_ref().map(|v| v.text.as_str()) {
                Some("FULL" | "DELTA") => {}
                other => {
                    let line = self
                        .extract_type
                        .as_ref()
                        .map_or(self.leaf_line, |v| v.line);
                    self.notice(
                        line,
                        format!("{ROOT}/Header/ExtractType"),
                        format!("ExtractType is {other:?}, expected FULL or DELTA"),
                    );
                }
            },
            (Parent::Root, "Formulary") => {
                self.emit_standalone(emit);
                self.formulary = None;
            }
            (Parent::Formulary, _) => {
                if let Some(f) = self.formulary.as_mut() {
                    match name.as_str() {
                        "FormularyId" => f.id = Some(val),
                        "FormularyVersion" => f.version = Some(val),
                        "ContractYear" => f.year = Some(val),
                        "EffectiveDate" => f.effective = Some(val),
                        "Plan" => {
                            if let Some(p) = self.plan.take() {
                                let item = self.finish_plan(p);
                                emit(item);
                            }
                        }
                        "TierDefinition" => {
                            if let Some(t) = self.tier.take() {
                                self.finish_tier(t);
                            }
                        }
                        "Drug" => {
                            if let Some(d) = self.drug.take() {
                                let raw = std::mem::take(&mut self.reader.get_mut().captured);
                                let item = self.finish_drug(d, raw);
                                emit(item);
                            }
                        }
                        _ => {}
                    }
                }
            }
            (Parent::Plan, _) => {
                if let Some(p) = self.plan.as_mut() {
                    match name.as_str() {
                        "ContractId" => p.contract = Some(val),
                        "PlanId" => p.plan = Some(val),
                        "SegmentId" => p.segment = Some(val),
                        "HiosPlanId" => p.hios = Some(val),
                        "State" => p.states.push(val),
                        _ => {}
                    }
                }
            }
            (Parent::Tier, _) => {
                if let Some(t) = self.tier.as_mut() {
                    match name.as_str() {
                        "TierLevelValue" => t.level = Some(val),
                        "TierLabel" => t.label = Some(val),
                        _ => {}
                    }
                }
            }
            (Parent::Drug, _) => {
                if let Some(d) = self.drug.as_mut() {
                    let slot = match name.as_str() {
                        "RxCUI" => &mut d.rxcui,
                        "NDC" => {
                            d.ndcs.push(val);
                            return;
                        }
                        "DrugName" => &mut d.name,
                        "TierLevelValue" => &mut d.tier,
                        "PriorAuthorizationYN" => &mut d.pa,
                        "StepTherapyYN" => &mut d.st,
                        "QuantityLimitYN" => &mut d.ql,
                        "QuantityLimitType" => &mut d.ql_type,
                        "QuantityLimitAmount" => &mut d.ql_amount,
                        "QuantityLimitDays" => &mut d.ql_days,
                        "SelectedDrugYN" => &mut d.selected,
                        "ExcludedDrugYN" => &mut d.excluded,
                        "CappedBenefitYN" => &mut d.capped,
                        _ => return,
                    };
                    if slot.is_some() {
                        d.problem.get_or_insert_with(|| {
                            Bad::at(
                                &val,
                                Reason::Malformed,
                                format!("{}: repeated element", val.path),
                            )
                        });
                    }
                    *slot = Some(val);
                }
            }
            (Parent::Indication, "Disease") => {
                if let Some(d) = self.drug.as_mut() {
                    d.diseases.push(val);
                }
            }
            _ => {}
        }
    }

    /// A formulary no `Plan` names still needs its own record (see the module docs).
    fn emit_standalone(&mut self, emit: &mut dyn FnMut(Item)) {
        let Some(f) = self.formulary.as_ref() else {
            return;
        };
        if f.plans > 0 || f.standalone_emitted {
            return;
        }
        let at = self.position(f.line, f.offset, f.path.clone());
        let item = self.plan_record(String::new(), None, Party::default(), Vec::new(), at);
        if let Some(f) = self.formulary.as_mut() {
            f.standalone_emitted = true;
        }
        emit(item);
    }

    fn formulary_context(&self) -> Result<FormularyCtx, Bad> {
        let Some(f) = self.formulary.as_ref() else {
            return Err(Bad {
                reason: Reason::Malformed,
                message: "record outside a Formulary".into(),
                line: self.leaf_line,
                path: self.path_str(),
            });
        };
        let id = match &f.id {
            None => {
                return Err(Bad {
                    reason: Reason::MissingValue,
                    message: format!("{}: FormularyId is missing", f.path),
                    line: f.line,
                    path: f.path.clone(),
                })
            }
            Some(v) if !pattern_formulary_id(&v.text) => {
                return Err(Bad::at(
                    v,
                    Reason::Malformed,
                    format!("{}: {:?} is not 1-8 characters 0-9 A-Z", v.path, v.text),
                ))
            }
            Some(v) => v.text.clone(),
        };
        let year = match f.year.as_ref().or(self.header_year.as_ref()) {
            Some(v) if v.text.len() == 4 && v.text.bytes().all(|b| b.is_ascii_digit()) => {
                Some(v.text.clone())
            }
            Some(v) => {
                return Err(Bad::at(
                    v,
                    Reason::BadDate,
                    format!("{}: {:?} is not a year", v.path, v.text),
                ))
            }
            None => None,
        };
        let effective = match &f.effective {
            Some(v) if is_iso_date(&v.text) => Some(v.text.clone()),
            Some(v) => {
                return Err(Bad::at(
                    v,
                    Reason::BadDate,
                    format!("{}: {:?} is not a date (YYYY-MM-DD)", v.path, v.text),
                ))
            }
            None => None,
        };
        let version = f.version.as_ref().map(|v| v.text.clone());
        Ok(FormularyCtx {
            start: effective.or_else(|| year.as_ref().map(|y| format!("{y}-01-01"))),
            end: year.as_ref().map(|y| format!("{y}-12-31")),
            id,
            version,
            year,
        })
    }

    fn reject(&self, bad: Bad, offset: u64, stage: Stage, raw: String) -> Item {
        let position = self.position(bad.line, offset, bad.path);
        Err(Reject::new(position, stage, bad.reason, bad.message, raw))
    }

    fn plan_record(
        &self,
        plan_id: String,
        plan_type: Option<&str>,
        payer: Party,
        coverage_areas: Vec<String>,
        position: Position,
    ) -> Item {
        let ctx = match self.formulary_context() {
            Ok(c) => c,
            Err(bad) => {
                let at = position.byte_offset;
                return self.reject(bad, at, Stage::Validate, String::new());
            }
        };
        Ok(SourceRecord::FormularyPlan(Box::new(FormularyPlan {
            plan_id,
            plan_name: None,
            plan_type: plan_type.map(String::from),
            formulary_id: ctx.id,
            formulary_name: None,
            payer,
            tiers: Vec::new(),
            coverage_areas,
            period_start: ctx.start,
            period_end: ctx.end,
            contacts: Vec::new(),
            change: Change::Upsert,
            position,
        })))
    }

    fn finish_plan(&self, p: PlanAcc) -> Item {
        let raw = String::new();
        if let Some(bad) = p.problem {
            return self.reject(bad, p.offset, Stage::Validate, raw);
        }
        let check = |v: &Option<Val>, ok: fn(&str) -> bool, shape: &str| match v {
            Some(v) if ok(&v.text) => Ok(Some(v.text.clone())),
            Some(v) => Err(Bad::at(
                v,
                Reason::Malformed,
                format!("{}: {:?} is not {shape}", v.path, v.text),
            )),
            None => Ok(None),
        };
        let mut areas: Vec<String> = Vec::new();
        for v in &p.states {
            if !super::is_us_state(&v.text) {
                let message = format!("{}: {:?} is not a USPS state code", v.path, v.text);
                return self.reject(
                    Bad::at(v, Reason::Malformed, message),
                    p.offset,
                    Stage::Validate,
                    raw,
                );
            }
            if !areas.contains(&v.text) {
                areas.push(v.text.clone());
            }
        }
        let result = (|| -> Result<(String, &'static str, Party), Bad> {
            if let Some(h) = check(&p.hios, pattern_hios, "a 14-character HIOS plan id")? {
                let payer = Party {
                    id: Some(h[..5].into()),
                    id_kind: Some("hios-issuer".into()),
                    ..Party::default()
                };
                return Ok((h, "qhp", payer));
            }
            let contract = check(&p.contract, pattern_contract, "a contract id (A9999)")?;
            let plan = check(&p.plan, pattern_digits3, "3 digits")?;
            let segment = check(&p.segment, pattern_digits3, "3 digits")?;
            let (Some(contract), Some(plan)) = (contract, plan) else {
                return Err(Bad {
                    reason: Reason::MissingValue,
                    message: format!("{}: needs ContractId and PlanId, or HiosPlanId", p.path),
                    line: p.line,
                    path: p.path.clone(),
                });
            };
            // CMS contract prefixes: S = stand-alone prescription drug plan; H, R (and others)
            // = Medicare Advantage with drug coverage.
            let kind = if contract.starts_with('S') {
                "medid"
            } else {
                "mediadv"
            };
            let id = match segment {
                Some(s) => format!("{contract}-{plan}-{s}"),
                None => format!("{contract}-{plan}"),
            };
            let payer = Party {
                id: Some(contract.into()),
                id_kind: Some("cms-contract".into()),
                ..Party::default()
            };
            Ok((id, kind, payer))
        })();
        match result {
            Ok((id, kind, payer)) => {
                // Without State elements, a HIOS plan id names the state it was issued in.
                if areas.is_empty() && kind == "qhp" {
                    areas.extend(super::hios_state(&id).map(String::from));
                }
                let at = self.position(p.line, p.offset, p.path);
                self.plan_record(id, Some(kind), payer, areas, at)
            }
            Err(bad) => self.reject(bad, p.offset, Stage::Validate, raw),
        }
    }

    fn finish_tier(&mut self, t: TierAcc) {
        let (Some(level), Some(label)) = (t.level, t.label) else {
            let (line, path) = (self.leaf_line, self.path_str());
            self.notice(
                line,
                path,
                "TierDefinition without TierLevelValue or TierLabel; ignored".into(),
            );
            return;
        };
        let Some(n) = parse_tier_level(&level.text) else {
            self.notice(
                level.line,
                level.path.clone(),
                format!("TierLevelValue {:?} is not 1-10; tier ignored", level.text),
            );
            return;
        };
        let code = tier_code(&label.text);
        if code.is_none() {
            self.notice(
                label.line,
                label.path.clone(),
                format!(
                    "TierLabel {:?} is not a known drug tier; drugs on tier {n} will be rejected",
                    label.text
                ),
            );
        }
        if let Some(f) = self.formulary.as_mut() {
            f.tiers.retain(|(l, _, _)| *l != n);
            f.tiers.push((n, code, label.text));
        }
    }

    fn finish_drug(&self, d: DrugAcc, raw: Vec<u8>) -> Item {
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let offset = d.offset;
        match self.build_drug(d) {
            Ok(drug) => Ok(SourceRecord::FormularyDrug(Box::new(drug))),
            Err((bad, stage)) => self.reject(bad, offset, stage, raw),
        }
    }

    fn build_drug(&self, mut d: DrugAcc) -> Result<FormularyDrug, (Bad, Stage)> {
        if let Some(bad) = d.problem.take() {
            let stage = if bad.reason == Reason::Malformed || bad.reason == Reason::Encoding {
                Stage::Parse
            } else {
                Stage::Validate
            };
            return Err((bad, stage));
        }
        let v = |b: Bad| (b, Stage::Validate);
        let ctx = self.formulary_context().map_err(v)?;
        let change = match d.change.as_ref().map(|c| c.text.as_str()) {
            None | Some("ADD") | Some("UPD") => Change::Upsert,
            Some("DEL") => Change::Delete,
            Some(other) => {
                let c = d.change.as_ref().expect("present");
                return Err(v(Bad::at(
                    c,
                    Reason::UnknownCode,
                    format!("{}: {other:?} is not ADD, UPD or DEL", c.path),
                )));
            }
        };
        let rxnorm = match &d.rxcui {
            None => {
                return Err(v(Bad {
                    reason: Reason::MissingValue,
                    message: format!("{}: RxCUI is missing", d.path),
                    line: d.line,
                    path: d.path.clone(),
                }))
            }
            Some(r) if r.text.is_empty() || r.text.len() > 8 || !all_digits(&r.text) => {
                return Err(v(Bad::at(
                    r,
                    Reason::Malformed,
                    format!("{}: {:?} is not 1-8 digits", r.path, r.text),
                )))
            }
            Some(r) => r.text.clone(),
        };
        let mut ndcs = Vec::with_capacity(d.ndcs.len());
        for n in &d.ndcs {
            if n.text.len() != 11 || !all_digits(&n.text) {
                return Err(v(Bad::at(
                    n,
                    Reason::Malformed,
                    format!("{}: {:?} is not an 11-digit NDC", n.path, n.text),
                )));
            }
            ndcs.push(n.text.clone());
        }
        let yn = |f: &Option<Val>| -> Result<Option<bool>, (Bad, Stage)> {
            match f {
                None => Ok(None),
                Some(x) if x.text == "Y" => Ok(Some(true)),
                Some(x) if x.text == "N" => Ok(Some(false)),
                Some(x) => Err(v(Bad::at(
                    x,
                    Reason::UnknownCode,
                    format!("{}: {:?} is not Y or N", x.path, x.text),
                ))),
            }
        };
        let prior_auth = yn(&d.pa)?;
        let step_therapy = yn(&d.st)?;
        let quantity_limit = yn(&d.ql)?;
        let selected_drug = yn(&d.selected)?;
        let excluded_drug = yn(&d.excluded)?;
        let capped_benefit = yn(&d.capped)?;
        let ql_type = match &d.ql_type {
            None => None,
            Some(x) if x.text == "DAILY" || x.text == "OVER_TIME" => Some(x.text.clone()),
            Some(x) => {
                return Err(v(Bad::at(
                    x,
                    Reason::UnknownCode,
                    format!("{}: {:?} is not DAILY or OVER_TIME", x.path, x.text),
                )))
            }
        };
        let amount = match &d.ql_amount {
            None => None,
            Some(x) if valid_ql_amount(&x.text) => Some(x.text.clone()),
            Some(x) => {
                return Err(v(Bad::at(
                    x,
                    Reason::BadNumber,
                    format!(
                        "{}: {:?} is not a decimal in (0, 9999.99999] with at most 5 decimals",
                        x.path, x.text
                    ),
                )))
            }
        };
        let days = match &d.ql_days {
            None => None,
            Some(x) => match x.text.parse::<u16>() {
                Ok(n) if (1..=999).contains(&n) && all_digits(&x.text) => Some(n.to_string()),
                _ => {
                    return Err(v(Bad::at(
                        x,
                        Reason::BadNumber,
                        format!("{}: {:?} is not a whole number 1-999", x.path, x.text),
                    )))
                }
            },
        };
        // Co-constraints of the XSD header.
        if quantity_limit == Some(true) {
            let flag = d.ql.as_ref().expect("flag present");
            for (value, element) in [
                (&amount, "QuantityLimitAmount"),
                (&days, "QuantityLimitDays"),
            ] {
                if value.is_none() {
                    return Err(v(Bad::at(
                        flag,
                        Reason::Rule,
                        format!(
                            "{}: QuantityLimitYN is Y but {element} is missing",
                            flag.path
                        ),
                    )));
                }
            }
        } else {
            let flag = match quantity_limit {
                Some(false) => "N",
                _ => "absent",
            };
            if let Some(x) = d.ql_amount.as_ref().or(d.ql_days.as_ref()) {
                return Err(v(Bad::at(
                    x,
                    Reason::Rule,
                    format!(
                        "{}: given while QuantityLimitYN is {flag} (allowed only when Y)",
                        x.path
                    ),
                )));
            }
        }
        let tier = match &d.tier {
            None => None,
            Some(t) => {
                let Some(level) = parse_tier_level(&t.text) else {
                    return Err(v(Bad::at(
                        t,
                        Reason::BadNumber,
                        format!("{}: {:?} is not a tier level 1-10", t.path, t.text),
                    )));
                };
                let tiers = self
                    .formulary
                    .as_ref()
                    .map(|f| f.tiers.as_slice())
                    .unwrap_or(&[]);
                match tiers.iter().find(|(l, _, _)| *l == level) {
                    Some((_, Some(code), _)) => Some((*code).to_string()),
                    Some((_, None, label)) => {
                        return Err(v(Bad::at(
                            t,
                            Reason::UnknownCode,
                            format!(
                                "{}: tier {level} is labelled {label:?}, which is not a known drug tier",
                                t.path
                            ),
                        )))
                    }
                    None => {
                        return Err(v(Bad::at(
                            t,
                            Reason::UnknownCode,
                            format!(
                                "{}: tier {level} has no TierDefinition in formulary {}",
                                t.path, ctx.id
                            ),
                        )))
                    }
                }
            }
        };
        Ok(FormularyDrug {
            formulary_id: ctx.id,
            formulary_name: None,
            rxnorm,
            drug_name: d.name.map(|n| n.text).filter(|n| !n.is_empty()),
            ndcs,
            dose_form: None,
            tier,
            pharmacy_benefit_types: Vec::new(),
            prior_auth,
            step_therapy,
            quantity_limit,
            quantity_limit_amount: amount,
            quantity_limit_days: days,
            quantity_limit_type: ql_type,
            effective_start: ctx.start,
            effective_end: ctx.end,
            formulary_version: ctx.version,
            contract_year: ctx.year,
            selected_drug,
            excluded_drug,
            capped_benefit,
            indications: d
                .diseases
                .into_iter()
                .map(|x| x.text)
                .filter(|x| !x.is_empty())
                .collect(),
            change,
            position: self.position(d.line, d.offset, d.path),
        })
    }

    fn check_trailer(&mut self) {
        if !self.seen_trailer {
            if !self
                .summary
                .notices
                .iter()
                .any(|n| n.message.starts_with("reading stopped"))
            {
                let line = self.line();
                self.notice(
                    line,
                    ROOT.into(),
                    "no Trailer: record counts not checked".into(),
                );
            }
            return;
        }
        let pairs = [
            (
                self.trailer_formularies.clone(),
                self.formularies_read,
                "FormularyCount",
                "Formulary",
            ),
            (
                self.trailer_drugs.clone(),
                self.drugs_read,
                "DrugRecordCount",
                "Drug",
            ),
        ];
        for (val, read, element, what) in pairs {
            match val {
                None => {
                    let line = self.line();
                    self.notice(
                        line,
                        format!("{ROOT}/Trailer"),
                        format!("Trailer has no {element}"),
                    );
                }
                Some(v) => match v.text.parse::<u64>() {
                    Ok(n) if n == read => {}
                    Ok(n) => self.notice(
                        v.line,
                        v.path.clone(),
                        format!("trailer {element} is {n} but {read} {what} elements were read"),
                    ),
                    Err(_) => self.notice(
                        v.line,
                        v.path.clone(),
                        format!("trailer {element} {:?} is not a count", v.text),
                    ),
                },
            }
        }
    }
}

struct FormularyCtx {
    id: String,
    version: Option<String>,
    year: Option<String>,
    start: Option<String>,
    end: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    Root,
    Header,
    Trailer,
    Formulary,
    Plan,
    Tier,
    Drug,
    Indication,
    Other,
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn pattern_formulary_id(s: &str) -> bool {
    (1..=8).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

fn pattern_contract(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 5 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_digit)
}

fn pattern_digits3(s: &str) -> bool {
    s.len() == 3 && all_digits(s)
}

fn pattern_hios(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14
        && b[..5].iter().all(u8::is_ascii_digit)
        && b[5..7].iter().all(u8::is_ascii_uppercase)
        && b[7..].iter().all(u8::is_ascii_digit)
}

fn parse_tier_level(s: &str) -> Option<u8> {
    if !all_digits(s) {
        return None;
    }
    s.parse::<u8>().ok().filter(|n| (1..=10).contains(n))
}

fn valid_ql_amount(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !all_digits(int)
        || frac.len() > 5
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return false;
    }
    match s.parse::<f64>() {
        Ok(x) => x > 0.0 && x <= 9999.99999,
        Err(_) => false,
    }
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (y, m, d) = (&s[..4], &s[5..7], &s[8..]);
    if !(all_digits(y) && all_digits(m) && all_digits(d)) {
        return false;
    }
    let number = |t: &str| t.parse::<u32>().unwrap_or(0);
    crate::layout::valid_ymd(number(y) as i32, number(m), number(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(xml: &str) -> (Vec<Item>, FileSummary) {
        let mut items = Vec::new();
        let summary = FormularyXmlReader::new()
            .read_from("t.xml", xml.as_bytes(), &mut |i| items.push(i))
            .expect("reads");
        (items, summary)
    }

    const HEAD: &str = "<?xml version=\"1.0\"?>\n<FormularyExtract xmlns=\"urn:example:payer:formulary-extract:1\" schemaVersion=\"1.0\">\n<Header><ExtractType>DELTA</ExtractType><ContractYear>2026</ContractYear></Header>\n<Formulary><FormularyId>F1</FormularyId><FormularyVersion>1</FormularyVersion><ContractYear>2026</ContractYear>\n<TierDefinition><TierLevelValue>1</TierLevelValue><TierLabel>GENERIC</TierLabel></TierDefinition>\n";

    #[test]
    fn sniffs_by_namespace_not_by_prefix() {
        assert!(sniff_xml(b"\xEF\xBB\xBF<?xml version=\"1.0\"?><!-- c --><f:FormularyExtract xmlns:f=\"urn:example:payer:formulary-extract:1\">"));
        assert!(!sniff_xml(b"<FormularyExtract xmlns=\"urn:other\">"));
        assert!(!sniff_xml(b"<FormularyExtract>"));
        assert!(!sniff_xml(b"[{\"rxnorm_id\": 1}]"));
    }

    #[test]
    fn lines_and_paths_point_at_the_element() {
        let xml = format!(
            "{HEAD}<Drug><RxCUI>1</RxCUI><TierLevelValue>1</TierLevelValue></Drug>\n<Drug>\n<RxCUI>2</RxCUI>\n<TierLevelValue>1</TierLevelValue>\n<QuantityLimitYN>N</QuantityLimitYN>\n<QuantityLimitDays>30</QuantityLimitDays>\n</Drug>\n</Formulary>\n<Trailer><FormularyCount>1</FormularyCount><DrugRecordCount>2</DrugRecordCount></Trailer></FormularyExtract>"
        );
        let (items, summary) = read(&xml);
        // standalone formulary record, then 2 drugs
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(
            matches!(&items[0], Ok(SourceRecord::FormularyPlan(p)) if p.plan_id.is_empty() && p.formulary_id == "F1")
        );
        let Ok(SourceRecord::FormularyDrug(d)) = &items[1] else {
            panic!("{:?}", items[1])
        };
        assert_eq!(d.position.line, 6);
        assert_eq!(d.tier.as_deref(), Some("generic"));
        assert_eq!(
            d.position.context.as_deref(),
            Some("FormularyExtract/Formulary[1]/Drug[1]")
        );
        let Err(r) = &items[2] else {
            panic!("expected reject")
        };
        assert_eq!(r.reason, Reason::Rule);
        assert_eq!(r.position.line, 11);
        assert_eq!(
            r.position.context.as_deref(),
            Some("FormularyExtract/Formulary[1]/Drug[2]/QuantityLimitDays")
        );
        assert!(
            r.raw.starts_with("<Drug>") && r.raw.ends_with("</Drug>"),
            "{}",
            r.raw
        );
        assert!(summary.notices.is_empty(), "{:?}", summary.notices);
    }

    #[test]
    fn a_plans_states_are_its_service_area() {
        let tail = "</Formulary>\n<Trailer><FormularyCount>1</FormularyCount><DrugRecordCount>0</DrugRecordCount></Trailer></FormularyExtract>";
        let xml = format!(
            "{HEAD}<Plan><ContractId>S9999</ContractId><PlanId>001</PlanId><State>ME</State><State>NH</State><State>ME</State></Plan>\n<Plan><HiosPlanId>12345VT9876543</HiosPlanId></Plan>\n<Plan><HiosPlanId>12345XX9876543</HiosPlanId></Plan>\n<Plan><ContractId>H9999</ContractId><PlanId>002</PlanId><State>Maine</State></Plan>\n{tail}"
        );
        let (items, _) = read(&xml);
        let areas: Vec<Result<Vec<String>, String>> = items
            .iter()
            // Not the formulary's own record (no plan).
            .filter(|i| !matches!(i, Ok(SourceRecord::FormularyPlan(p)) if p.plan_id.is_empty()))
            .map(|i| match i {
                Ok(SourceRecord::FormularyPlan(p)) => Ok(p.coverage_areas.clone()),
                Ok(other) => panic!("{other:?}"),
                Err(r) => Err(r.message.clone()),
            })
            .collect();
        assert_eq!(areas[0], Ok(vec!["ME".to_string(), "NH".to_string()]));
        // A HIOS plan id names its state; "XX" is none.
        assert_eq!(areas[1], Ok(vec!["VT".to_string()]));
        assert_eq!(areas[2], Ok(vec![]));
        let Err(message) = &areas[3] else {
            panic!("{:?}", areas[3])
        };
        assert!(
            message.contains("\"Maine\" is not a USPS state code"),
            "{message}"
        );
    }

    #[test]
    fn dates_and_numbers() {
        assert!(is_iso_date("2024-02-29"));
        assert!(!is_iso_date("2023-02-29"));
        assert!(valid_ql_amount("6"));
        assert!(valid_ql_amount("0.00001"));
        assert!(!valid_ql_amount("0"));
        assert!(!valid_ql_amount("10000"));
        assert!(!valid_ql_amount("1.123456"));
        assert_eq!(parse_tier_level("10"), Some(10));
        assert_eq!(parse_tier_level("11"), None);
    }

    #[test]
    fn entities_and_cdata_become_text() {
        let xml = format!(
            "{HEAD}<Drug><RxCUI>1</RxCUI><DrugName>A &amp; B <![CDATA[<x>]]> &#233;</DrugName><TierLevelValue>1</TierLevelValue></Drug></Formulary><Trailer><FormularyCount>1</FormularyCount><DrugRecordCount>1</DrugRecordCount></Trailer></FormularyExtract>"
        );
        let (items, _) = read(&xml);
        let Ok(SourceRecord::FormularyDrug(d)) = &items[1] else {
            panic!("{:?}", items)
        };
        assert_eq!(d.drug_name.as_deref(), Some("A & B <x> é"));
    }
}
