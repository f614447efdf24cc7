//! The 837 reader proper: envelopes (ISA/GS/ST/SE/GE/IEA), the HL hierarchy (2000A/B/C), and
//! claims (2300 with its 2310/2320/2330 loops and 2400 lines).
//!
//! The driver pulls segments from the tokenizer one at a time and never looks back: each
//! finished claim is emitted at once (as a record or a reject). A defect taints the smallest
//! unit whose data depends on it — the claim (2300/2400), the patient (2000C), the subscriber
//! (2000B), the billing provider (2000A) or the transaction set header (1000A/B) — and every
//! claim under a tainted unit becomes one reject that names the defect's position.

use std::io::{self, Read};
use std::sync::Arc;

use crate::model::{
    Adjustment, Amount, Change, Claim, ClaimKind, ClaimLine, CoverageSpan, Diagnosis, Ident,
    Member, Party, Position, Procedure, SourceRecord, Supporting, Text,
};
use crate::reject::{Notice, Reason, Reject, Stage};
use crate::{FileSummary, Item};

use super::token::{
    component, parse_isa, seg_id, Bounds, Delimiters, IsaError, Seg, Source, ISA_LEN,
};

/// Cap on the raw bytes kept with a reject.
pub(crate) const RAW_CAP: usize = 64 * 1024;

/// A defect found in a unit, and where.
#[derive(Debug, Clone)]
struct Taint {
    reason: Reason,
    message: String,
    position: Position,
}

/// Where rejects, records and notices go.
struct Out<'e> {
    file: Arc<str>,
    emit: &'e mut dyn FnMut(Item),
    notices: Vec<Notice>,
}

impl Out<'_> {
    fn pos(&self, segment: u64, offset: u64, context: &str) -> Position {
        Position {
            file: self.file.clone(),
            line: 0,
            byte_offset: offset,
            segment: Some(segment),
            context: Some(Text::new(context)),
        }
    }

    fn notice(&mut self, position: Position, message: String) {
        self.notices.push(Notice { position, message });
    }

    fn reject(&mut self, t: Taint, message: String, raw: &[u8]) {
        let raw = String::from_utf8_lossy(&raw[..raw.len().min(RAW_CAP)]).into_owned();
        let stage = match t.reason {
            Reason::MissingValue | Reason::BadDate | Reason::BadNumber => Stage::Validate,
            _ => Stage::Parse,
        };
        (self.emit)(Err(Reject::new(t.position, stage, t.reason, message, raw)));
    }
}

fn push_raw(raw: &mut Vec<u8>, data: &[u8], term: u8) {
    if raw.len() < RAW_CAP {
        let n = data.len().min(RAW_CAP - raw.len());
        raw.extend_from_slice(&data[..n]);
        if raw.len() < RAW_CAP {
            raw.push(term);
        }
    }
}

/// Read a whole X12 stream. See the module docs of `x12` for the rules.
pub(crate) fn run<R: Read>(
    file: &str,
    rdr: R,
    emit: &mut dyn FnMut(Item),
) -> io::Result<FileSummary> {
    run_piece(file, rdr, Piece::default(), emit)
}

/// One part of an X12 file that reads on its own: reading the pieces one after another gives
/// exactly what reading the file gives, positions included.
///
/// A piece starts at the start of the file, where the whole-file reader is between
/// interchanges (nothing open, only the segment count carried), or right before a transaction
/// set (`ST`) inside an interchange, where the reader has closed the previous set with its
/// `SE` and holds only the envelope: the interchange's delimiters, control number and group
/// count, and the open group's control number, version and set count. Such a piece carries
/// that envelope in `resume`, and the piece before it has `open_end`: it ends inside the
/// interchange, so the end of its bytes is not a missing `GE`/`IEA`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Piece {
    /// Byte offset of the piece's first byte in the file.
    pub start: u64,
    /// Byte offset just past the piece's last byte.
    pub end: u64,
    /// Segments (ISA included) in the file before the piece.
    pub segments_before: u64,
    /// The envelope open where the piece starts, when it starts inside an interchange.
    pub resume: Option<Envelope>,
    /// Whether the piece ends inside an interchange that the next piece goes on reading.
    pub open_end: bool,
}

/// The envelope a piece that starts inside an interchange reads under (see [`Piece`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The interchange's delimiters, from its ISA.
    pub delimiters: Delimiters,
    /// ISA13, the interchange control number.
    pub control: Text,
    /// Segment number and byte offset of the ISA.
    pub isa_at: (u64, u64),
    /// Functional groups (GS) the interchange has opened before the piece.
    pub groups: u64,
    /// The functional group open where the piece starts, if any.
    pub group: Option<GroupEnvelope>,
}

/// The functional group open where a piece starts (see [`Envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEnvelope {
    /// GS06, the group control number.
    pub control: Text,
    /// GS08, the version / release / industry identifier code.
    pub version: Text,
    /// Transaction sets (ST) the group has opened before the piece.
    pub sets: u64,
    /// Segment number and byte offset of the GS.
    pub gs_at: (u64, u64),
}

/// The splitter's view of the interchange it is walking: what the reader would hold.
struct Walk {
    envelope: Envelope,
    /// A transaction set is open (ST seen, its SE not yet).
    set_open: bool,
    /// The last segment was an SE that closed an open set: the reader holds nothing but the
    /// envelope, so a piece may start at an ST here.
    clean: bool,
}

/// Cuts an X12 stream into [`Piece`]s of about `target` bytes, between interchanges or
/// between the transaction sets of one.
///
/// It walks the stream as [`run`] does (the same tokenizer, the same rules for where an
/// interchange ends and for skipping bad ones) without building anything, counting segments,
/// so that each piece knows its first segment number, and following the envelope (ISA, GS,
/// ST, SE, GE) so that a piece that starts inside an interchange knows it.
pub(crate) struct Splitter<R> {
    src: Source<R>,
    target: u64,
    seg_no: u64,
    start: u64,
    start_seg: u64,
    start_resume: Option<Envelope>,
    /// The interchange being walked, between calls.
    walk: Option<Walk>,
    ends: Bounds,
    /// Whether the last unit ended cleanly (IEA, or a rejected interchange).
    closed: bool,
    done: bool,
}

impl<R: Read> Splitter<R> {
    pub(crate) fn new(rdr: R, target: u64) -> Self {
        Self {
            src: Source::new(rdr),
            target: target.max(1),
            seg_no: 0,
            start: 0,
            start_seg: 0,
            start_resume: None,
            walk: None,
            ends: Bounds::new(),
            closed: true,
            done: false,
        }
    }

    /// End the current piece at `off` and start the next one there.
    fn cut(&mut self, off: u64, resume: Option<Envelope>) -> Piece {
        let piece = Piece {
            start: self.start,
            end: off,
            segments_before: self.start_seg,
            open_end: resume.is_some(),
            resume: self.start_resume.take(),
        };
        self.start = off;
        self.start_seg = self.seg_no;
        self.start_resume = resume;
        piece
    }

    /// The next piece, `None` after the last one.
    pub(crate) fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        if self.done {
            return Ok(None);
        }
        let mut sink = Vec::new();
        loop {
            if let Some(w) = &mut self.walk {
                // `Driver::interchange` and `Driver::segment`, following the envelope only.
                let d = w.envelope.delimiters;
                let Some(rs) = self.src.next_in_interchange(d.segment)? else {
                    // End of input, or an ISA: the interchange ended without IEA.
                    self.walk = None;
                    continue;
                };
                let off = rs.offset;
                let id = seg_id(rs.data, d.element);
                if id == b"ST" && w.clean && off - self.start >= self.target {
                    let resume = w.envelope.clone();
                    let piece = self.cut(off, Some(resume));
                    self.seg_no += 1;
                    if let Some(w) = &mut self.walk {
                        w.st();
                    }
                    return Ok(Some(piece));
                }
                self.seg_no += 1;
                w.clean = false;
                match id {
                    b"IEA" => {
                        self.closed = true;
                        self.walk = None;
                    }
                    b"GS" => {
                        let seg = Seg::split(rs.data, rs.text, &d, &mut self.ends);
                        w.set_open = false;
                        w.envelope.groups += 1;
                        w.envelope.group = Some(GroupEnvelope {
                            control: lossy(seg.el(6)),
                            version: lossy(seg.el(8)),
                            sets: 0,
                            gs_at: (self.seg_no, off),
                        });
                    }
                    b"GE" => {
                        w.set_open = false;
                        w.envelope.group = None;
                    }
                    b"ST" => w.st(),
                    b"SE" => {
                        w.clean = w.set_open;
                        w.set_open = false;
                    }
                    // Anything else belongs to the open set, or is an orphan the reader
                    // holds until the next envelope segment.
                    _ => {}
                }
                continue;
            }
            // The top of `run`'s loop: the reader's state is empty here.
            if !self.src.skip_ws()? {
                break;
            }
            let off = self.src.offset();
            // Not before a byte-order mark (`skip_ws` has skipped every one it could see;
            // this only guards the last bytes of the input).
            // Nor after an interchange that ended without IEA: the reader places that notice
            // on the segment after it, which only the whole file has.
            if self.closed
                && off - self.start >= self.target
                && !self.src.peek_isa()?.starts_with(&[0xEF, 0xBB, 0xBF])
            {
                return Ok(Some(self.cut(off, None)));
            }
            self.seg_no += 1;
            match parse_isa(self.src.peek_isa()?) {
                Ok(isa) => {
                    self.src.advance(ISA_LEN);
                    self.closed = false;
                    self.walk = Some(Walk {
                        envelope: Envelope {
                            delimiters: isa.delims,
                            control: isa.control.into(),
                            isa_at: (self.seg_no, off),
                            groups: 0,
                            group: None,
                        },
                        set_open: false,
                        clean: false,
                    });
                }
                Err(_) => {
                    self.closed = true;
                    while self.src.seek_isa(1, &mut sink, 0)? {
                        if parse_isa(self.src.peek_isa()?).is_ok() {
                            break;
                        }
                    }
                }
            }
        }
        self.done = true;
        let end = self.src.bytes;
        Ok(Some(self.cut(end, None)))
    }
}

impl Walk {
    /// An ST: it opens a set (closing one left open) and counts in the open group.
    fn st(&mut self) {
        self.set_open = true;
        if let Some(g) = &mut self.envelope.group {
            g.sets += 1;
        }
    }
}

/// Read one piece of an X12 file; `rdr` yields the piece's bytes only.
pub(crate) fn run_piece<R: Read>(
    file: &str,
    rdr: R,
    piece: Piece,
    emit: &mut dyn FnMut(Item),
) -> io::Result<FileSummary> {
    let mut src = Source::at(rdr, piece.start);
    let mut d = Driver {
        file: Arc::from(file),
        out: Out {
            file: Arc::from(file),
            emit,
            notices: Vec::new(),
        },
        seg_no: piece.segments_before,
        ic: None,
        grp: None,
        set: None,
        orphan: None,
        open_end: piece.open_end,
    };
    if let Some(env) = piece.resume {
        // The piece starts at an ST inside an interchange: take up its envelope.
        d.ic = Some(Ic {
            control: env.control,
            groups: env.groups,
            pos: d.out.pos(env.isa_at.0, env.isa_at.1, "ISA"),
        });
        d.grp = env.group.map(|g| Grp {
            control: g.control,
            version: g.version,
            sets: g.sets,
            pos: d.out.pos(g.gs_at.0, g.gs_at.1, "GS"),
        });
        d.interchange(&mut src, env.delimiters)?;
    }
    let mut raw = Vec::new();
    while src.skip_ws()? {
        let off = src.offset();
        let head = src.peek_isa()?;
        match parse_isa(head) {
            Ok(isa) => {
                d.seg_no += 1;
                d.ic = Some(Ic {
                    control: isa.control.into(),
                    groups: 0,
                    pos: d.out.pos(d.seg_no, off, "ISA"),
                });
                src.advance(ISA_LEN);
                d.interchange(&mut src, isa.delims)?;
            }
            Err(e) => {
                d.seg_no += 1;
                let (reason, msg) = match e {
                    IsaError::Encoding(m) => (Reason::Encoding, m),
                    IsaError::Envelope(m) => (Reason::Envelope, m),
                };
                raw.clear();
                // Skip to the next ISA that parses: everything before it is this interchange.
                while src.seek_isa(1, &mut raw, RAW_CAP)? {
                    if parse_isa(src.peek_isa()?).is_ok() {
                        break;
                    }
                }
                let t = Taint {
                    reason,
                    message: msg.clone(),
                    position: d.out.pos(d.seg_no, off, "ISA"),
                };
                d.out
                    .reject(t, format!("interchange rejected: {msg}"), &raw);
            }
        }
    }
    Ok(FileSummary {
        bytes: src.bytes,
        units: d.seg_no - piece.segments_before,
        notices: d.out.notices,
    })
}

struct Ic {
    control: Text,
    groups: u64,
    pos: Position,
}

struct Grp {
    control: Text,
    version: Text,
    sets: u64,
    pos: Position,
}

/// Segments found outside any transaction set (ST missing).
struct Orphan {
    pos: Position,
    raw: Vec<u8>,
    segments: u64,
    claims: u64,
}

struct Driver<'e> {
    /// The file name for positions, apart from `out` so that it can be lent while `out` is
    /// borrowed mutably (cloning an `Arc` per segment costs two atomic operations).
    file: Arc<str>,
    out: Out<'e>,
    seg_no: u64,
    ic: Option<Ic>,
    grp: Option<Grp>,
    set: Option<SetCtx>,
    orphan: Option<Orphan>,
    /// The input ends inside an interchange that the next piece goes on reading.
    open_end: bool,
}

fn lossy(b: &[u8]) -> Text {
    super::token::to_text(b.trim_ascii())
}

/// An unsigned integer (as `u64::from_str` reads it: an optional `+`, digits), trimmed.
fn num(b: &[u8]) -> Option<u64> {
    let b = b.trim_ascii();
    let digits = b.strip_prefix(b"+").unwrap_or(b);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &c| {
        if c.is_ascii_digit() {
            v.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

/// Whether a segment id may appear inside an 837 transaction set.
fn known(id: &[u8]) -> bool {
    matches!(
        id,
        b"BHT"
            | b"NM1"
            | b"PER"
            | b"HL"
            | b"PRV"
            | b"CUR"
            | b"N3"
            | b"N4"
            | b"REF"
            | b"SBR"
            | b"PAT"
            | b"DMG"
            | b"CLM"
            | b"DTP"
            | b"CL1"
            | b"PWK"
            | b"CN1"
            | b"AMT"
            | b"K3"
            | b"NTE"
            | b"CR1"
            | b"CR2"
            | b"CR3"
            | b"CR5"
            | b"CR6"
            | b"CR7"
            | b"CRC"
            | b"HI"
            | b"HCP"
            | b"QTY"
            | b"MEA"
            | b"LX"
            | b"SV1"
            | b"SV2"
            | b"SV3"
            | b"SV5"
            | b"TOO"
            | b"PS1"
            | b"LIN"
            | b"CTP"
            | b"SVD"
            | b"CAS"
            | b"MOA"
            | b"MIA"
            | b"OI"
            | b"LQ"
            | b"FRM"
            | b"N2"
    )
}

impl Driver<'_> {
    /// Read the segments of one interchange; returns at IEA, at a new ISA, or at end of input.
    fn interchange<R: Read>(&mut self, src: &mut Source<R>, delims: Delimiters) -> io::Result<()> {
        let mut ends = Bounds::new();
        loop {
            if let Some(rs) = src.next_plain_split(&delims, &mut ends) {
                self.seg_no += 1;
                let seg = Seg::with_ends(rs.data, rs.text, &delims, &ends);
                if self.segment(&seg, rs.offset, rs.oversized, &delims) {
                    return Ok(());
                }
                continue;
            }
            if !src.skip_ws()? {
                break;
            }
            if src.at_isa()? {
                let p = self.out.pos(self.seg_no + 1, src.offset(), "IEA");
                self.close_interchange(p, None);
                return Ok(());
            }
            let Some(rs) = src.next_segment(delims.segment)? else {
                break;
            };
            self.seg_no += 1;
            let seg = Seg::split(rs.data, rs.text, &delims, &mut ends);
            if self.segment(&seg, rs.offset, rs.oversized, &delims) {
                return Ok(());
            }
        }
        if !self.open_end {
            let p = self.out.pos(self.seg_no, src.offset(), "IEA");
            self.close_interchange(p, None);
        }
        Ok(())
    }

    /// Handle one segment; true when the interchange ended (IEA).
    fn segment(&mut self, seg: &Seg<'_>, offset: u64, oversized: bool, d: &Delimiters) -> bool {
        let n = self.seg_no;
        match seg.id() {
            b"GS" => {
                let p = self.out.pos(n, offset, "GS");
                self.close_set_truncated(p.clone());
                self.close_orphan();
                if let Some(g) = self.grp.take() {
                    self.out
                        .notice(p.clone(), format!("GE missing for group {}", g.control));
                }
                if let Some(ic) = &mut self.ic {
                    ic.groups += 1;
                }
                self.grp = Some(Grp {
                    control: lossy(seg.el(6)),
                    version: lossy(seg.el(8)),
                    sets: 0,
                    pos: p,
                });
            }
            b"GE" => {
                let p = self.out.pos(n, offset, "GE");
                self.close_set_truncated(p.clone());
                self.close_orphan();
                match self.grp.take() {
                    Some(g) => {
                        if num(seg.el(1)) != Some(g.sets) {
                            self.out.notice(
                                p.clone(),
                                format!(
                                    "GE01 says {} transaction sets, group {} holds {}",
                                    lossy(seg.el(1)),
                                    g.control,
                                    g.sets
                                ),
                            );
                        }
                        if seg.el(2).trim_ascii() != g.control.as_bytes() {
                            self.out.notice(
                                p,
                                format!(
                                    "GE02 {} does not match GS06 {} (GS at segment {})",
                                    lossy(seg.el(2)),
                                    g.control,
                                    g.pos.segment.unwrap_or(0)
                                ),
                            );
                        }
                    }
                    None => self.out.notice(p, "GE without GS".into()),
                }
            }
            b"IEA" => {
                let p = self.out.pos(n, offset, "IEA");
                self.close_interchange(p, Some(seg));
                return true;
            }
            b"ST" => {
                let p = self.out.pos(n, offset, "ST");
                self.close_set_truncated(p.clone());
                self.close_orphan();
                let gs_version = match &mut self.grp {
                    Some(g) => {
                        g.sets += 1;
                        g.version.clone()
                    }
                    None => {
                        self.out.notice(
                            p.clone(),
                            "ST outside a functional group (GS missing)".into(),
                        );
                        Text::default()
                    }
                };
                let mut set = SetCtx::new(seg, p, gs_version, &mut self.out);
                push_raw(&mut set.raw, seg.data, d.segment);
                self.set = Some(set);
            }
            b"SE" => {
                let p = self.out.pos(n, offset, "SE");
                match self.set.take() {
                    Some(mut set) => {
                        set.count += 1;
                        push_raw(&mut set.raw, seg.data, d.segment);
                        if num(seg.el(1)) != Some(set.count) {
                            self.out.notice(
                                p.clone(),
                                format!(
                                    "SE01 says {} segments, transaction set {} holds {}",
                                    lossy(seg.el(1)),
                                    set.control,
                                    set.count
                                ),
                            );
                        }
                        if seg.el(2).trim_ascii() != set.control.as_bytes() {
                            self.out.notice(
                                p.clone(),
                                format!(
                                    "SE02 {} does not match ST02 {}",
                                    lossy(seg.el(2)),
                                    set.control
                                ),
                            );
                        }
                        set.close(&mut self.out, None);
                    }
                    None => {
                        self.orphan_segment(seg, offset, d);
                    }
                }
            }
            b"TA1" => {}
            _ => {
                if let Some(set) = &mut self.set {
                    set.count += 1;
                    // The set's own raw text is only used when it holds no claim.
                    if set.claims == 0 {
                        push_raw(&mut set.raw, seg.data, d.segment);
                    }
                    let at = SegAt {
                        n,
                        offset,
                        oversized,
                        file: &self.file,
                    };
                    set.segment(seg, at, d, &mut self.out);
                } else {
                    self.orphan_segment(seg, offset, d);
                }
            }
        }
        false
    }

    fn orphan_segment(&mut self, seg: &Seg<'_>, offset: u64, d: &Delimiters) {
        let n = self.seg_no;
        let o = self.orphan.get_or_insert_with(|| Orphan {
            pos: Position {
                file: self.out.file.clone(),
                line: 0,
                byte_offset: offset,
                segment: Some(n),
                context: Some("ST".into()),
            },
            raw: Vec::new(),
            segments: 0,
            claims: 0,
        });
        o.segments += 1;
        if seg.id() == b"CLM" {
            o.claims += 1;
        }
        push_raw(&mut o.raw, seg.data, d.segment);
    }

    fn close_orphan(&mut self) {
        if let Some(o) = self.orphan.take() {
            let msg = format!(
                "{} segments ({} claims) outside a transaction set: ST missing",
                o.segments, o.claims
            );
            let t = Taint {
                reason: Reason::Envelope,
                message: msg.clone(),
                position: o.pos,
            };
            self.out.reject(t, msg, &o.raw);
        }
    }

    fn close_set_truncated(&mut self, at: Position) {
        if let Some(set) = self.set.take() {
            set.close(&mut self.out, Some(at));
        }
    }

    fn close_interchange(&mut self, p: Position, iea: Option<&Seg<'_>>) {
        self.close_set_truncated(p.clone());
        self.close_orphan();
        if let Some(g) = self.grp.take() {
            self.out
                .notice(p.clone(), format!("GE missing for group {}", g.control));
        }
        let Some(ic) = self.ic.take() else {
            return;
        };
        match iea {
            None => self.out.notice(
                p,
                format!(
                    "IEA missing for interchange {} (ISA at segment {})",
                    ic.control,
                    ic.pos.segment.unwrap_or(0)
                ),
            ),
            Some(seg) => {
                if num(seg.el(1)) != Some(ic.groups) {
                    self.out.notice(
                        p.clone(),
                        format!(
                            "IEA01 says {} functional groups, interchange {} holds {}",
                            lossy(seg.el(1)),
                            ic.control,
                            ic.groups
                        ),
                    );
                }
                if seg.el(2).trim_ascii() != ic.control.as_bytes() {
                    self.out.notice(
                        p,
                        format!(
                            "IEA02 {} does not match ISA13 {}",
                            lossy(seg.el(2)),
                            ic.control
                        ),
                    );
                }
            }
        }
    }
}

/// Which party an NM1 sub-loop fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    None,
    Billing,
    Subscriber,
    Payer,
    Patient,
    /// Index into the claim's care team.
    Care(usize),
    Facility,
    LineRendering,
}

/// Where inside a claim the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cl {
    C2300,
    C2310,
    C2320,
    C2330,
    L2400,
    L2410,
    L2420,
    L2430,
    L2440,
}

/// Which HL units end right after the claim being finished: their data can be moved into the
/// record instead of cloned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ends {
    /// The next claim is under the same subscriber and patient (CLM).
    Nothing,
    /// A new patient follows under the same subscriber (HL 23).
    Patient,
    /// A new billing provider or subscriber follows, or the set ends.
    Subscriber,
}

/// The value itself when `take` (its unit ends), else a copy.
fn take_or_clone<T: Clone + Default>(slot: &mut T, take: bool) -> T {
    if take {
        std::mem::take(slot)
    } else {
        slot.clone()
    }
}

/// The coverage key: `payer-plan`, lower-cased, every other character than an ASCII letter or
/// digit turned into `-`.
fn coverage_key(payer: &str, plan: Option<&str>) -> Text {
    // One `-` per character that is not an ASCII letter or digit, so the key has at most as
    // many bytes as its parts.
    let mut key = Vec::with_capacity(payer.len() + plan.map_or(0, |p| p.len() + 1));
    let mut push = |s: &str| {
        for ch in s.chars() {
            key.push(if ch.is_ascii_alphanumeric() {
                ch.to_ascii_lowercase() as u8
            } else {
                b'-'
            });
        }
    };
    push(payer);
    if let Some(p) = plan {
        push("-");
        push(p);
    }
    // Only ASCII bytes were pushed.
    std::str::from_utf8(&key).map(Text::new).unwrap_or_default()
}

/// The person part of 2010BA/2010CA.
#[derive(Debug, Default, Clone)]
struct Person {
    id: Option<Text>,
    family: Option<Text>,
    given: Vec<Text>,
    gender: Option<Text>,
    birth: Option<Text>,
    lines: Vec<Text>,
    city: Option<Text>,
    state: Option<Text>,
    postal: Option<Text>,
}

impl Person {
    /// The details a member record takes (all but the id): moved out when `take`.
    fn details(&mut self, take: bool) -> Person {
        if take {
            return std::mem::take(self);
        }
        Person {
            id: None,
            family: self.family.clone(),
            given: self.given.clone(),
            gender: self.gender.clone(),
            birth: self.birth.clone(),
            lines: self.lines.clone(),
            city: self.city.clone(),
            state: self.state.clone(),
            postal: self.postal.clone(),
        }
    }
}

struct Billing {
    party: Option<Party>,
    taint: Option<Taint>,
    pos: Position,
}

struct Subscriber {
    group: Option<Text>,
    group_name: Option<Text>,
    filing: Option<Text>,
    person: Option<Person>,
    payer: Option<Party>,
    taint: Option<Taint>,
}

struct Patient {
    pat01: Option<Text>,
    person: Option<Person>,
    taint: Option<Taint>,
}

struct ClaimCtx {
    /// Boxed from the start: the record is emitted as a `Box<Claim>` without moving it again.
    claim: Box<Claim>,
    clm_pos: Position,
    taint: Option<Taint>,
    state: Cl,
    /// Whether the last of `claim.lines` is the open 2400 line (lines are built in place).
    line_open: bool,
    /// Whether the current line has its SV1/SV2.
    line_has_service: bool,
    /// Segment number and byte offset of the current line's LX.
    line_at: (u64, u64),
    /// Any payer adjudication (2320 AMT/CAS, 2430 SVD) seen.
    adjudicated: bool,
    paid: Option<Text>,
    line_paid_positive: bool,
    /// Facility code (CLM05-1) for 837P place of service.
    facility_code: Option<Text>,
}

/// Where a segment is: its number, byte offset, whether it was cut, and the file name.
struct SegAt<'f> {
    n: u64,
    offset: u64,
    oversized: bool,
    file: &'f Arc<str>,
}

/// State of one transaction set.
struct SetCtx {
    control: Text,
    institutional: bool,
    unsupported: Option<String>,
    pos: Position,
    count: u64,
    raw: Vec<u8>,
    taint: Option<Taint>,
    seen_1000a: bool,
    seen_1000b: bool,
    created: Option<Text>,
    billing: Option<Billing>,
    sub: Option<Subscriber>,
    pat: Option<Patient>,
    claim: Option<ClaimCtx>,
    claims: u64,
    /// The open claim's segments (reused buffer, capped), for its reject.
    claim_raw: Vec<u8>,
    loop_id: &'static str,
    /// Order rank inside the current loop or NM1 sub-loop.
    rank: u8,
    /// Whether an NM1 sub-loop is open at HL level.
    nm1_open: bool,
    target: Target,
    hi_notice: bool,
}

/// Rank of a segment inside an NM1 sub-loop (N3, N4, DMG/PRV/DTP, REF, PER).
fn nm1_rank(id: &[u8]) -> Option<u8> {
    Some(match id {
        b"N2" => 1,
        b"N3" => 2,
        b"N4" => 3,
        b"DMG" | b"PRV" | b"DTP" => 4,
        b"REF" => 5,
        b"PER" => 6,
        _ => return None,
    })
}

/// Rank of a 2300 segment (before the 2310 loops).
fn rank_2300(id: &[u8]) -> Option<u8> {
    Some(match id {
        b"DTP" => 1,
        b"CL1" => 2,
        b"PWK" => 3,
        b"CN1" => 4,
        b"AMT" => 5,
        b"REF" => 6,
        b"K3" => 7,
        b"NTE" => 8,
        b"CR1" => 9,
        b"CR2" => 10,
        b"CRC" => 11,
        b"HI" => 12,
        b"HCP" => 13,
        _ => return None,
    })
}

/// Rank of a 2400 segment (before 2410/2420/2430/2440).
fn rank_2400(id: &[u8]) -> Option<u8> {
    Some(match id {
        b"SV1" | b"SV2" => 1,
        b"SV5" => 2,
        b"PWK" => 3,
        b"CR1" => 4,
        b"CR3" => 5,
        b"CRC" => 6,
        b"DTP" => 7,
        b"QTY" => 8,
        b"MEA" => 9,
        b"CN1" => 10,
        b"REF" => 11,
        b"AMT" => 12,
        b"K3" => 13,
        b"NTE" => 14,
        b"PS1" => 15,
        b"HCP" => 16,
        _ => return None,
    })
}

/// Rank of a 2320 segment (before 2330).
fn rank_2320(id: &[u8]) -> Option<u8> {
    Some(match id {
        b"CAS" => 1,
        b"AMT" => 2,
        b"OI" => 3,
        b"MIA" => 4,
        b"MOA" => 5,
        _ => return None,
    })
}

/// Rank of a 2430 segment.
fn rank_2430(id: &[u8]) -> Option<u8> {
    Some(match id {
        b"CAS" => 1,
        b"DTP" => 2,
        b"AMT" => 3,
        _ => return None,
    })
}

fn id_str(id: &[u8]) -> String {
    String::from_utf8_lossy(id).into_owned()
}

/// `CCYYMMDD` to ISO, if it is a plausible date.
pub(crate) fn d8(b: &[u8]) -> Option<Text> {
    let b = b.trim_ascii();
    if b.len() < 8 || !b[..8].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    let (y, m, d) = (digits(0) * 100 + digits(2), digits(4), digits(6));
    // CCYYMMDD is a calendar date: no 31 April, 29 February only in a leap year.
    if !crate::layout::valid_ymd(y as i32, m, d) {
        return None;
    }
    let mut s = [0u8; 10];
    s[..4].copy_from_slice(&b[..4]);
    s[4] = b'-';
    s[5..7].copy_from_slice(&b[4..6]);
    s[7] = b'-';
    s[8..].copy_from_slice(&b[6..8]);
    // Ten ASCII digits and dashes: always valid UTF-8.
    std::str::from_utf8(&s).ok().map(Text::new)
}

/// A DTP date or period: `(from, thru)`; `Err` when the value does not parse.
fn dtp_period(fmt: &[u8], val: &[u8]) -> Result<(Option<Text>, Option<Text>), ()> {
    match fmt {
        b"D8" => {
            let d = d8(val).filter(|_| val.trim_ascii().len() == 8).ok_or(())?;
            Ok((Some(d.clone()), Some(d)))
        }
        b"RD8" => {
            let v = val.trim_ascii();
            let dash = v.iter().position(|&c| c == b'-').ok_or(())?;
            let a = d8(&v[..dash]).ok_or(())?;
            let b = d8(&v[dash + 1..]).ok_or(())?;
            Ok((Some(a), Some(b)))
        }
        b"DT" => {
            let d = d8(val).ok_or(())?;
            Ok((Some(d.clone()), Some(d)))
        }
        // A time alone (TM) carries no date.
        b"TM" => Ok((None, None)),
        _ => Err(()),
    }
}

/// Whether the text is a plain decimal (`-12.50`, `100`, `.5`).
pub(crate) fn is_decimal(b: &[u8]) -> bool {
    let b = b.trim_ascii();
    let b = b.strip_prefix(b"-").unwrap_or(b);
    let mut digits = 0;
    let mut dots = 0;
    for &c in b {
        match c {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return false,
        }
    }
    digits > 0 && dots <= 1
}

/// Whether the amount is a number above zero.
fn positive(s: &str) -> bool {
    let b = s.as_bytes();
    if is_decimal(b) && b == s.trim_ascii().as_bytes() {
        // A plain decimal: positive when unsigned with a non-zero digit.
        return b[0] != b'-' && b.iter().any(|&c| (b'1'..=b'9').contains(&c));
    }
    s.parse::<f64>().map(|v| v > 0.0).unwrap_or(false)
}

fn relationship(code: &str) -> &'static str {
    match code {
        "18" => "self",
        "01" => "spouse",
        "19" => "child",
        _ => "other",
    }
}

fn gender(code: &[u8]) -> Option<Text> {
    Some(
        match code.trim_ascii() {
            b"M" => "male",
            b"F" => "female",
            b"U" => "unknown",
            _ => return None,
        }
        .into(),
    )
}

/// Human-readable claim filing indicator (SBR09).
fn filing_display(code: &str) -> Option<&'static str> {
    Some(match code {
        "11" => "Other Non-Federal Programs",
        "12" => "Preferred Provider Organization (PPO)",
        "13" => "Point of Service (POS)",
        "14" => "Exclusive Provider Organization (EPO)",
        "15" => "Indemnity Insurance",
        "16" => "Health Maintenance Organization (HMO) Medicare Risk",
        "17" => "Dental Maintenance Organization",
        "AM" => "Automobile Medical",
        "BL" => "Blue Cross/Blue Shield",
        "CH" => "Champus",
        "CI" => "Commercial Insurance Co.",
        "DS" => "Disability",
        "FI" => "Federal Employees Program",
        "HM" => "Health Maintenance Organization",
        "LM" => "Liability Medical",
        "MA" => "Medicare Part A",
        "MB" => "Medicare Part B",
        "MC" => "Medicaid",
        "OF" => "Other Federal Program",
        "TV" => "Title V",
        "VA" => "Veterans Affairs Plan",
        "WC" => "Workers' Compensation Health Claim",
        "ZZ" => "Mutually Defined",
        _ => return None,
    })
}

fn id_kind(qual: &[u8]) -> Option<Text> {
    let q = qual.trim_ascii();
    if q.is_empty() {
        return None;
    }
    Some(
        match q {
            b"XX" => "npi",
            b"24" => "tax",
            b"34" => "ssn",
            b"PI" | b"XV" => "payerid",
            b"MI" | b"II" => "member",
            b"46" => "etin",
            _ => return Some(lossy(q).to_ascii_lowercase()),
        }
        .into(),
    )
}

/// A Party from an NM1 (name `Family, Given` for persons).
fn nm1_party(seg: &Seg<'_>) -> Party {
    let person = seg.el(2) == b"1";
    let name = if person {
        match (seg.s(3), seg.s(4)) {
            (Some(f), Some(g)) => Some(compact_str::format_compact!("{f}, {g}")),
            (f, g) => f.or(g),
        }
    } else {
        seg.s(3)
    };
    let id = seg.s(9);
    Party {
        id_kind: id.as_ref().and_then(|_| id_kind(seg.el(8))),
        id,
        name,
        person,
        ..Party::default()
    }
}

fn nm1_person(seg: &Seg<'_>) -> Person {
    let mut given = Vec::new();
    given.extend(seg.s(4));
    given.extend(seg.s(5));
    Person {
        id: seg.s(9),
        family: seg.s(3),
        given,
        ..Person::default()
    }
}

/// Diagnosis qualifiers: (kind, ICD revision).
fn diag_qual(q: &[u8]) -> Option<(&'static str, u8)> {
    Some(match q {
        b"ABK" => ("principal", 10),
        b"ABF" => ("secondary", 10),
        b"ABJ" => ("admitting", 10),
        b"ABN" => ("externalcauseofinjury", 10),
        b"APR" => ("patientreasonforvisit", 10),
        b"BK" => ("principal", 9),
        b"BF" => ("secondary", 9),
        b"BJ" => ("admitting", 9),
        b"BN" => ("externalcauseofinjury", 9),
        b"PR" => ("patientreasonforvisit", 9),
        _ => return None,
    })
}

/// Procedure qualifiers: (kind, ICD revision).
fn proc_qual(q: &[u8]) -> Option<(&'static str, u8)> {
    Some(match q {
        b"BBR" => ("principal", 10),
        b"BBQ" => ("other", 10),
        b"BR" => ("principal", 9),
        b"BQ" => ("other", 9),
        _ => return None,
    })
}

/// 837I claim kind from the facility type code (CLM05-1): inpatient for hospital inpatient
/// (11, 12), swing bed (18), skilled nursing inpatient (21) and religious non-medical
/// inpatient (41); outpatient otherwise.
pub(crate) fn institutional_kind(facility: &str) -> ClaimKind {
    match facility {
        "11" | "12" | "18" | "21" | "41" => ClaimKind::Inpatient,
        _ => ClaimKind::Outpatient,
    }
}

impl SetCtx {
    fn new(st: &Seg<'_>, pos: Position, gs_version: Text, out: &mut Out<'_>) -> Self {
        let st03 = lossy(st.el(3));
        let version = if st03.is_empty() {
            gs_version.clone()
        } else {
            st03.clone()
        };
        if !st03.is_empty() && !gs_version.is_empty() && st03 != gs_version {
            out.notice(
                pos.clone(),
                format!("ST03 {st03} differs from GS08 {gs_version}; ST03 decides the claim type"),
            );
        }
        let unsupported = if st.el(1) != b"837" {
            Some(format!("transaction set {} is not an 837", lossy(st.el(1))))
        } else if !(version.contains("X222") || version.contains("X223")) {
            Some(format!(
                "837 implementation guide {version:?} is neither 005010X222 (837P) nor 005010X223 (837I)"
            ))
        } else {
            None
        };
        Self {
            control: lossy(st.el(2)),
            institutional: version.contains("X223"),
            unsupported,
            pos,
            count: 1,
            raw: Vec::new(),
            taint: None,
            seen_1000a: false,
            seen_1000b: false,
            created: None,
            billing: None,
            sub: None,
            pat: None,
            claim: None,
            claims: 0,
            claim_raw: Vec::with_capacity(4096),
            loop_id: "ST",
            rank: 0,
            nm1_open: false,
            target: Target::None,
            hi_notice: false,
        }
    }

    /// Taint the innermost open unit (first defect wins).
    fn taint(&mut self, t: Taint) {
        let slot = if let Some(c) = &mut self.claim {
            &mut c.taint
        } else if let Some(p) = &mut self.pat {
            &mut p.taint
        } else if let Some(s) = &mut self.sub {
            &mut s.taint
        } else if let Some(b) = &mut self.billing {
            &mut b.taint
        } else {
            &mut self.taint
        };
        if slot.is_none() {
            *slot = Some(t);
        }
    }

    fn segment(&mut self, seg: &Seg<'_>, at: SegAt<'_>, d: &Delimiters, out: &mut Out<'_>) {
        let SegAt {
            n,
            offset,
            oversized,
            file,
        } = at;
        if self.unsupported.is_some() {
            return;
        }
        let id = seg.id();
        if self.claim.is_some() && id != b"HL" && id != b"CLM" {
            push_raw(&mut self.claim_raw, seg.data, d.segment);
        }
        let here = |ctx: &str| Position {
            file: file.clone(),
            line: 0,
            byte_offset: offset,
            segment: Some(n),
            context: Some(Text::new(ctx)),
        };
        if oversized {
            let t = Taint {
                reason: Reason::Segment,
                message: format!("segment {n} is longer than 1 MiB"),
                position: here(self.loop_id),
            };
            self.taint(t);
            return;
        }
        // Every known id is a valid one (an uppercase letter, then uppercase letters or digits).
        if !known(id) {
            let t = Taint {
                reason: Reason::Segment,
                message: format!(
                    "segment {n} has an invalid or unknown segment id {:?}",
                    String::from_utf8_lossy(id)
                ),
                position: here(self.loop_id),
            };
            self.taint(t);
            return;
        }
        match id {
            b"HL" => {
                let ctx = match seg.el(3) {
                    b"20" => "2000A",
                    b"22" => "2000B",
                    b"23" => "2000C",
                    _ => self.loop_id,
                };
                self.hl(seg, &|| here(ctx), out)
            }
            b"CLM" => {
                self.finish_claim(out, None, Ends::Nothing);
                let p = here("2300");
                self.start_claim(seg, p, d);
            }
            _ => {
                if self.claim.is_some() {
                    self.claim_segment(seg, n, offset, file, out);
                } else {
                    self.hl_segment(seg, n, offset, file, out);
                }
            }
        }
    }

    fn out_of_order(&mut self, id: &[u8], pos: Position) {
        let t = Taint {
            reason: Reason::Segment,
            message: format!(
                "segment {} {} is out of order in loop {}",
                pos.segment.unwrap_or(0),
                id_str(id),
                self.loop_id
            ),
            position: pos,
        };
        self.taint(t);
    }

    fn not_expected(&mut self, id: &[u8], pos: Position) {
        let t = Taint {
            reason: Reason::Segment,
            message: format!(
                "segment {} {} is not expected in loop {}",
                pos.segment.unwrap_or(0),
                id_str(id),
                self.loop_id
            ),
            position: pos,
        };
        self.taint(t);
    }

    /// `pos` builds the HL's position (only when a defect needs it).
    fn hl(&mut self, seg: &Seg<'_>, pos: &dyn Fn() -> Position, out: &mut Out<'_>) {
        let ends = match seg.el(3) {
            b"20" | b"22" => Ends::Subscriber,
            b"23" => Ends::Patient,
            _ => Ends::Nothing,
        };
        self.finish_claim(out, None, ends);
        self.nm1_open = false;
        self.target = Target::None;
        self.rank = 0;
        if self.taint.is_none() && (!self.seen_1000a || !self.seen_1000b) {
            let (l, what) = if !self.seen_1000a {
                ("1000A", "submitter (NM1*41)")
            } else {
                ("1000B", "receiver (NM1*40)")
            };
            let pos = pos();
            let mut p = pos.clone();
            p.context = Some(l.into());
            self.taint = Some(Taint {
                reason: Reason::Segment,
                message: format!(
                    "required loop {l} {what} missing before the first HL (segment {})",
                    pos.segment.unwrap_or(0)
                ),
                position: p,
            });
            // Report the header once.
            self.seen_1000a = true;
            self.seen_1000b = true;
        }
        match seg.el(3) {
            b"20" => {
                self.check_billing_complete();
                self.pat = None;
                self.sub = None;
                let p = pos();
                self.billing = Some(Billing {
                    party: None,
                    taint: None,
                    pos: p,
                });
                self.loop_id = "2000A";
            }
            b"22" => {
                self.check_billing_complete();
                self.pat = None;
                if self.billing.is_none() {
                    self.taint_set_once(Taint {
                        reason: Reason::Segment,
                        message: "subscriber HL (2000B) before any billing provider HL (2000A)"
                            .into(),
                        position: pos(),
                    });
                }
                self.sub = Some(Subscriber {
                    group: None,
                    group_name: None,
                    filing: None,
                    person: None,
                    payer: None,
                    taint: None,
                });
                self.loop_id = "2000B";
            }
            b"23" => {
                let p = pos();
                if self.sub.is_none() {
                    self.taint_set_once(Taint {
                        reason: Reason::Segment,
                        message: "patient HL (2000C) without a subscriber HL (2000B)".into(),
                        position: p.clone(),
                    });
                }
                self.pat = Some(Patient {
                    pat01: None,
                    person: None,
                    taint: None,
                });
                self.loop_id = "2000C";
            }
            other => {
                let t = Taint {
                    reason: Reason::Segment,
                    message: format!(
                        "HL03 level code {:?} is not 20, 22 or 23",
                        String::from_utf8_lossy(other)
                    ),
                    position: pos(),
                };
                // An unknown level taints what it would hold: the subscriber or billing level.
                self.pat = None;
                self.taint(t);
            }
        }
    }

    fn taint_set_once(&mut self, t: Taint) {
        if self.taint.is_none() {
            self.taint = Some(t);
        }
    }

    /// A billing provider HL must carry its 2010AA name.
    fn check_billing_complete(&mut self) {
        if let Some(b) = &mut self.billing {
            if b.party.is_none() && b.taint.is_none() {
                b.taint = Some(Taint {
                    reason: Reason::MissingValue,
                    message: "billing provider loop 2010AA (NM1*85) missing".into(),
                    position: b.pos.clone(),
                });
            }
        }
    }

    /// Segments at HL level (header, 2000A/B/C and their NM1 sub-loops).
    fn hl_segment(
        &mut self,
        seg: &Seg<'_>,
        n: u64,
        offset: u64,
        file: &Arc<str>,
        out: &mut Out<'_>,
    ) {
        let id = seg.id();
        let pos = |ctx: &str| Position {
            file: file.clone(),
            line: 0,
            byte_offset: offset,
            segment: Some(n),
            context: Some(Text::new(ctx)),
        };
        if id == b"NM1" {
            self.rank = 0;
            self.nm1_open = true;
            let code = seg.el(1);
            if code.is_empty() || seg.el(2).is_empty() {
                let which = if code.is_empty() { "NM101" } else { "NM102" };
                if self.billing.is_none() {
                    // Header names (submitter, receiver) feed nothing fhirlake keeps.
                    out.notice(
                        pos(self.loop_id),
                        format!(
                            "segment {n} NM1*{}: required element {which} missing (header loop, not used)",
                            lossy(code)
                        ),
                    );
                } else {
                    let t = Taint {
                        reason: Reason::MissingValue,
                        message: format!("segment {n} NM1: required element {which} missing"),
                        position: pos(self.loop_id),
                    };
                    self.taint(t);
                }
            }
            if self.pat.is_some() {
                if code == b"QC" {
                    self.loop_id = "2010CA";
                    self.target = Target::Patient;
                    if let Some(p) = &mut self.pat {
                        p.person = Some(nm1_person(seg));
                    }
                } else {
                    self.not_expected(id, pos("2000C"));
                    self.target = Target::None;
                }
            } else if self.sub.is_some() {
                match code {
                    b"IL" => {
                        self.loop_id = "2010BA";
                        self.target = Target::Subscriber;
                        if let Some(s) = &mut self.sub {
                            s.person = Some(nm1_person(seg));
                        }
                    }
                    b"PR" => {
                        self.loop_id = "2010BB";
                        self.target = Target::Payer;
                        if let Some(s) = &mut self.sub {
                            s.payer = Some(nm1_party(seg));
                        }
                    }
                    _ => {
                        self.not_expected(id, pos("2000B"));
                        self.target = Target::None;
                    }
                }
            } else if self.billing.is_some() {
                match code {
                    b"85" => {
                        self.loop_id = "2010AA";
                        self.target = Target::Billing;
                        if let Some(b) = &mut self.billing {
                            b.party = Some(nm1_party(seg));
                        }
                    }
                    b"87" => {
                        self.loop_id = "2010AB";
                        self.target = Target::None;
                    }
                    b"PE" => {
                        self.loop_id = "2010AC";
                        self.target = Target::None;
                    }
                    _ => {
                        self.not_expected(id, pos("2000A"));
                        self.target = Target::None;
                    }
                }
            } else {
                match code {
                    b"41" => {
                        self.loop_id = "1000A";
                        self.seen_1000a = true;
                    }
                    b"40" => {
                        self.loop_id = "1000B";
                        self.seen_1000b = true;
                    }
                    _ => self.not_expected(id, pos("1000A")),
                }
                self.target = Target::None;
            }
            return;
        }
        if let (true, Some(r)) = (self.nm1_open, nm1_rank(id)) {
            if r < self.rank {
                self.out_of_order(id, pos(self.loop_id));
                return;
            }
            self.rank = r;
            self.fill_nm1_detail(seg);
            return;
        }
        // Loop-level segments.
        let ok = match id {
            b"BHT" if self.billing.is_none() && !self.nm1_open => {
                self.created = d8(seg.el(4));
                true
            }
            b"PRV" | b"CUR" => self.billing.is_some() && self.sub.is_none() && !self.nm1_open,
            b"PER" | b"REF" => self.billing.is_none(),
            b"SBR" => {
                if let (Some(s), None, false) = (&mut self.sub, &self.pat, self.nm1_open) {
                    s.group = seg.s(3);
                    s.group_name = seg.s(4);
                    s.filing = seg.s(9);
                    true
                } else {
                    false
                }
            }
            b"PAT" => {
                if let (Some(p), false) = (&mut self.pat, self.nm1_open) {
                    p.pat01 = seg.s(1);
                    true
                } else {
                    // 2000B PAT (patient deceased/weight) is allowed before the NM1s.
                    self.sub.is_some() && self.pat.is_none() && !self.nm1_open
                }
            }
            _ => false,
        };
        if !ok {
            if self.nm1_open && matches!(id, b"PRV" | b"CUR" | b"SBR" | b"PAT" | b"BHT") {
                self.out_of_order(id, pos(self.loop_id));
            } else {
                self.not_expected(id, pos(self.loop_id));
            }
        }
    }

    /// N3/N4/DMG/REF of the current NM1 sub-loop at HL level.
    fn fill_nm1_detail(&mut self, seg: &Seg<'_>) {
        let id = seg.id();
        match self.target {
            Target::Billing => {
                if let Some(p) = self.billing.as_mut().and_then(|b| b.party.as_mut()) {
                    party_detail(p, seg);
                }
            }
            Target::Payer => {
                if let Some(p) = self.sub.as_mut().and_then(|s| s.payer.as_mut()) {
                    if id != b"REF" {
                        party_detail(p, seg);
                    }
                }
            }
            Target::Subscriber => {
                if let Some(p) = self.sub.as_mut().and_then(|s| s.person.as_mut()) {
                    person_detail(p, seg);
                }
            }
            Target::Patient => {
                if let Some(p) = self.pat.as_mut().and_then(|s| s.person.as_mut()) {
                    person_detail(p, seg);
                }
            }
            _ => {}
        }
    }

    fn start_claim(&mut self, seg: &Seg<'_>, pos: Position, d: &Delimiters) {
        self.claims += 1;
        self.loop_id = "2300";
        self.nm1_open = false;
        self.target = Target::None;
        self.rank = 0;
        self.claim_raw.clear();
        push_raw(&mut self.claim_raw, seg.data, d.segment);
        let mut claim = Box::new(Claim {
            claim_id: seg.lossy(seg.el(1)),
            position: pos.clone(),
            created: self.created.clone(),
            type_code: Some(
                if self.institutional {
                    "institutional"
                } else {
                    "professional"
                }
                .into(),
            ),
            ..Claim::default()
        });
        let mut taint = None;
        let mut missing = |what: &str| {
            if taint.is_none() {
                taint = Some(Taint {
                    reason: Reason::MissingValue,
                    message: format!("segment {} CLM: {what} missing", pos.segment.unwrap_or(0)),
                    position: pos.clone(),
                });
            }
        };
        if claim.claim_id.is_empty() {
            missing("CLM01 (patient control number, the claim id)");
        }
        let charge = seg.el(2);
        if charge.trim_ascii().is_empty() {
            missing("CLM02 (total charge)");
        }
        let fc = component(seg.el(5), d.component, 0).trim_ascii();
        let freq = component(seg.el(5), d.component, 2).trim_ascii();
        if fc.is_empty() {
            missing("CLM05-1 (facility code / place of service)");
        }
        if freq.is_empty() {
            missing("CLM05-3 (claim frequency code)");
        }
        if taint.is_none() && !is_decimal(charge) {
            taint = Some(Taint {
                reason: Reason::BadNumber,
                message: format!("CLM02 {:?} is not a decimal", lossy(charge)),
                position: pos.clone(),
            });
        }
        if !charge.trim_ascii().is_empty() {
            claim.amounts.push(Amount {
                category: "submitted".into(),
                value: seg.lossy(charge),
            });
        }
        // A 3-character facility code with a leading zero is the type of bill's 0 prefix.
        let fc = if fc.len() == 3 && fc[0] == b'0' {
            &fc[1..]
        } else {
            fc
        };
        let fc = seg.lossy(fc);
        claim.change = match freq {
            b"7" => Change::Replace,
            b"8" => Change::Cancel,
            _ => Change::Upsert,
        };
        if self.institutional {
            claim.kind = Some(institutional_kind(&fc));
            if !fc.is_empty() {
                let tob = compact_str::format_compact!("{fc}{}", seg.lossy(freq));
                claim.type_of_bill = Some(tob.clone());
                claim.supporting.push(Supporting {
                    category: "typeofbill".into(),
                    value: tob,
                });
            }
        } else {
            claim.kind = Some(ClaimKind::Professional);
        }
        if !claim.claim_id.is_empty() {
            claim.supporting.push(Supporting {
                category: "patientaccountnumber".into(),
                value: claim.claim_id.clone(),
            });
        }
        self.claim = Some(ClaimCtx {
            claim,
            clm_pos: pos,
            taint,
            state: Cl::C2300,
            line_open: false,
            line_has_service: false,
            line_at: (0, 0),
            adjudicated: false,
            paid: None,
            line_paid_positive: false,
            facility_code: (!fc.is_empty()).then_some(fc),
        });
    }

    /// A segment inside a claim (2300 and below).
    fn claim_segment(
        &mut self,
        seg: &Seg<'_>,
        n: u64,
        offset: u64,
        file: &Arc<str>,
        out: &mut Out<'_>,
    ) {
        let id = seg.id();
        let institutional = self.institutional;
        let comp = seg.comp;
        let pos = |ctx: &str| Position {
            file: file.clone(),
            line: 0,
            byte_offset: offset,
            segment: Some(n),
            context: Some(Text::new(ctx)),
        };
        let Some(c) = self.claim.as_mut() else {
            return;
        };
        // Transitions between loops.
        match id {
            b"NM1" => {
                let code = seg.el(1);
                if code.is_empty() || seg.el(2).is_empty() {
                    let t = Taint {
                        reason: Reason::MissingValue,
                        message: format!("segment {n} NM1: required element NM101/NM102 missing"),
                        position: pos(self.loop_id),
                    };
                    c.taint.get_or_insert(t);
                }
                self.rank = 0;
                self.target = Target::None;
                match c.state {
                    Cl::C2300 | Cl::C2310 => {
                        c.state = Cl::C2310;
                        let (l, role) = if institutional {
                            match code {
                                b"71" => ("2310A", Some("attending")),
                                b"72" => ("2310B", Some("operating")),
                                b"ZZ" => ("2310C", Some("otheroperating")),
                                b"82" => ("2310D", Some("rendering")),
                                b"77" => ("2310E", None),
                                b"DN" => ("2310F", Some("referring")),
                                _ => ("2310", None),
                            }
                        } else {
                            match code {
                                b"DN" => ("2310A", Some("referring")),
                                b"P3" => ("2310A", Some("primary")),
                                b"82" => ("2310B", Some("rendering")),
                                b"77" => ("2310C", None),
                                b"DQ" => ("2310D", Some("supervisor")),
                                b"PW" => ("2310E", None),
                                b"45" => ("2310F", None),
                                _ => ("2310", None),
                            }
                        };
                        self.loop_id = l;
                        if code == b"77" {
                            c.claim.facility = Some(nm1_party(seg));
                            self.target = Target::Facility;
                        } else if let Some(role) = role {
                            c.claim.care_team.push((role.into(), nm1_party(seg)));
                            self.target = Target::Care(c.claim.care_team.len() - 1);
                        }
                    }
                    Cl::C2320 | Cl::C2330 => {
                        c.state = Cl::C2330;
                        self.loop_id = match code {
                            b"IL" => "2330A",
                            b"PR" => "2330B",
                            _ => "2330",
                        };
                    }
                    Cl::L2400 | Cl::L2410 | Cl::L2420 => {
                        c.state = Cl::L2420;
                        self.loop_id = "2420";
                        if code == b"82" {
                            if let Some(l) = open_line(c) {
                                l.rendering = Some(nm1_party(seg));
                                self.target = Target::LineRendering;
                            }
                        }
                    }
                    Cl::L2430 | Cl::L2440 => {
                        let p = pos("2420");
                        oo(&mut c.taint, id, p, self.loop_id);
                    }
                }
                return;
            }
            b"SBR" => {
                match c.state {
                    Cl::C2300 | Cl::C2310 | Cl::C2320 | Cl::C2330 => {
                        c.state = Cl::C2320;
                        self.loop_id = "2320";
                        self.rank = 0;
                    }
                    _ => {
                        let p = pos(self.loop_id);
                        oo(&mut c.taint, id, p, self.loop_id);
                    }
                }
                return;
            }
            b"LX" => {
                Self::finish_line(c);
                c.state = Cl::L2400;
                self.loop_id = "2400";
                self.rank = 0;
                let number = num(seg.el(1)).and_then(|v| u32::try_from(v).ok());
                if number.is_none() {
                    c.taint.get_or_insert(Taint {
                        reason: Reason::MissingValue,
                        message: format!(
                            "segment {n} LX: LX01 line number missing or not a number"
                        ),
                        position: pos("2400"),
                    });
                }
                c.claim.lines.push(ClaimLine {
                    number: number.unwrap_or(0),
                    ..ClaimLine::default()
                });
                c.line_open = true;
                c.line_has_service = false;
                c.line_at = (n, offset);
                return;
            }
            b"LIN" if matches!(c.state, Cl::L2400) => {
                c.state = Cl::L2410;
                self.loop_id = "2410";
                self.rank = 0;
                if let Some(l) = open_line(c) {
                    if seg.el(2) == b"N4" {
                        l.ndc = seg.s(3);
                    }
                }
                return;
            }
            b"SVD" if matches!(c.state, Cl::L2400 | Cl::L2410 | Cl::L2420 | Cl::L2430) => {
                c.state = Cl::L2430;
                self.loop_id = "2430";
                self.rank = 0;
                c.adjudicated = true;
                if let (true, Some(l), Some(paid)) =
                    (c.line_open, c.claim.lines.last_mut(), seg.s(2))
                {
                    if positive(&paid) {
                        c.line_paid_positive = true;
                    }
                    l.payment_status = Some(if positive(&paid) { "paid" } else { "denied" }.into());
                    l.amounts.push(Amount {
                        category: "paidtoprovider".into(),
                        value: paid,
                    });
                }
                return;
            }
            b"LQ"
                if matches!(
                    c.state,
                    Cl::L2400 | Cl::L2410 | Cl::L2420 | Cl::L2430 | Cl::L2440
                ) =>
            {
                c.state = Cl::L2440;
                self.loop_id = "2440";
                return;
            }
            _ => {}
        }
        // Segments inside the current loop, with their order.
        match c.state {
            Cl::C2300 => match rank_2300(id) {
                Some(r) if r >= self.rank => {
                    self.rank = r;
                    Self::claim_2300(c, seg, n, &pos, institutional, &mut self.hi_notice, out);
                }
                Some(_) => oo(&mut c.taint, id, pos("2300"), self.loop_id),
                None => ne(&mut c.taint, id, pos("2300"), self.loop_id),
            },
            Cl::C2310 | Cl::C2330 | Cl::L2420 => match nm1_rank(id) {
                Some(r) if r >= self.rank => {
                    self.rank = r;
                    let target = self.target;
                    let party = match target {
                        Target::Care(i) => c.claim.care_team.get_mut(i).map(|(_, p)| p),
                        Target::Facility => c.claim.facility.as_mut(),
                        Target::LineRendering => open_line(c).and_then(|l| l.rendering.as_mut()),
                        _ => None,
                    };
                    if let Some(p) = party {
                        if id != b"REF" {
                            party_detail(p, seg);
                        }
                    }
                }
                _ => {
                    if rank_2300(id).is_some()
                        || rank_2320(id).is_some()
                        || rank_2400(id).is_some()
                        || nm1_rank(id).is_some()
                    {
                        let p = pos(self.loop_id);
                        oo(&mut c.taint, id, p, self.loop_id);
                    } else {
                        let p = pos(self.loop_id);
                        ne(&mut c.taint, id, p, self.loop_id);
                    }
                }
            },
            Cl::C2320 => match rank_2320(id) {
                Some(r) if r >= self.rank => {
                    self.rank = r;
                    Self::claim_2320(c, seg);
                }
                Some(_) => oo(&mut c.taint, id, pos("2320"), self.loop_id),
                None => ne(&mut c.taint, id, pos("2320"), self.loop_id),
            },
            Cl::L2400 => match rank_2400(id) {
                Some(r) if r >= self.rank => {
                    if r > 1 && !c.line_has_service {
                        let p = pos("2400");
                        let t = Taint {
                            reason: Reason::Segment,
                            message: format!(
                                "segment {n} {}: 2400 line without its SV1/SV2 first",
                                id_str(id)
                            ),
                            position: p,
                        };
                        c.taint.get_or_insert(t);
                    }
                    self.rank = r;
                    Self::line_2400(c, seg, n, &pos, institutional);
                }
                Some(_) => oo(&mut c.taint, id, pos("2400"), self.loop_id),
                None => ne(&mut c.taint, id, pos("2400"), self.loop_id),
            },
            Cl::L2410 => match id {
                b"CTP" if self.rank < 1 => {
                    self.rank = 1;
                    if let (true, Some(l), Some(q)) =
                        (c.line_open, c.claim.lines.last_mut(), seg.s(4))
                    {
                        // The drug quantity of an NDC line is the line's quantity.
                        l.quantity = Some(q);
                    }
                }
                b"REF" if self.rank < 2 => self.rank = 2,
                _ => {
                    let p = pos("2410");
                    oo(&mut c.taint, id, p, self.loop_id);
                }
            },
            Cl::L2430 => match rank_2430(id) {
                Some(r) if r >= self.rank => {
                    self.rank = r;
                    if let Some(l) = open_line(c) {
                        match id {
                            b"CAS" => cas(seg, &mut l.amounts, &mut l.adjustments),
                            b"AMT" => amt(seg, &mut l.amounts),
                            _ => {}
                        }
                    }
                }
                Some(_) => oo(&mut c.taint, id, pos("2430"), self.loop_id),
                None => ne(&mut c.taint, id, pos("2430"), self.loop_id),
            },
            Cl::L2440 => {
                if id != b"FRM" {
                    ne(&mut c.taint, id, pos("2440"), self.loop_id);
                }
            }
        }
        let _ = comp;
    }

    fn claim_2300(
        c: &mut ClaimCtx,
        seg: &Seg<'_>,
        n: u64,
        at: &dyn Fn(&str) -> Position,
        institutional: bool,
        hi_notice: &mut bool,
        out: &mut Out<'_>,
    ) {
        let claim = &mut c.claim;
        match seg.id() {
            b"DTP" => {
                let q = seg.el(1);
                let fmt = seg.el(2).trim_ascii();
                let Ok((from, thru)) = dtp_period(fmt, seg.el(3)) else {
                    c.taint.get_or_insert(Taint {
                        reason: Reason::BadDate,
                        message: format!(
                            "segment {n} DTP*{}: {:?} is not a valid {} date",
                            lossy(q),
                            lossy(seg.el(3)),
                            lossy(fmt)
                        ),
                        position: at("2300"),
                    });
                    return;
                };
                match q {
                    b"434" => {
                        claim.from = from;
                        claim.thru = thru;
                    }
                    b"435" => set_period(&mut claim.supporting, from, true),
                    b"096" => set_period(&mut claim.supporting, thru, false),
                    b"050" => {
                        if let Some(d) = from {
                            claim.received = Some(d.clone());
                            claim.supporting.push(Supporting {
                                category: "clmrecvddate".into(),
                                value: d,
                            });
                        }
                    }
                    _ => {}
                }
            }
            b"CL1" => {
                for (i, cat) in [
                    (1, "admtype"),
                    (2, "pointoforigin"),
                    (3, "discharge-status"),
                ] {
                    if let Some(v) = seg.s(i) {
                        claim.supporting.push(Supporting {
                            category: cat.into(),
                            value: v,
                        });
                    }
                }
            }
            b"REF" => {
                let kind = match seg.el(1) {
                    b"D9" => "clearinghouse",
                    b"F8" => "payer-claim-control",
                    _ => return,
                };
                if let Some(v) = seg.s(2) {
                    claim.identifiers.push(Ident {
                        kind: kind.into(),
                        value: v,
                    });
                }
            }
            b"HI" => {
                if let Err(t) = hi(claim, seg, n, at, institutional, hi_notice, out) {
                    c.taint.get_or_insert(t);
                }
            }
            _ => {}
        }
    }

    fn claim_2320(c: &mut ClaimCtx, seg: &Seg<'_>) {
        match seg.id() {
            b"CAS" => {
                c.adjudicated = true;
                cas(seg, &mut c.claim.amounts, &mut c.claim.adjustments);
            }
            b"AMT" => {
                if seg.el(1) == b"D" {
                    c.adjudicated = true;
                    if c.paid.is_none() {
                        c.paid = seg.s(2);
                    }
                }
                amt(seg, &mut c.claim.amounts);
            }
            _ => {}
        }
    }

    fn line_2400(
        c: &mut ClaimCtx,
        seg: &Seg<'_>,
        n: u64,
        at: &dyn Fn(&str) -> Position,
        institutional: bool,
    ) {
        let Some(l) = (if c.line_open {
            c.claim.lines.last_mut()
        } else {
            None
        }) else {
            return;
        };
        match seg.id() {
            b"SV1" | b"SV2" => {
                let sv2 = seg.id() == b"SV2";
                if sv2 != institutional {
                    c.taint.get_or_insert(Taint {
                        reason: Reason::Segment,
                        message: format!(
                            "segment {n} {} in an {}",
                            id_str(seg.id()),
                            if institutional {
                                "837I (expects SV2)"
                            } else {
                                "837P (expects SV1)"
                            }
                        ),
                        position: at("2400"),
                    });
                }
                c.line_has_service = true;
                let (code_el, charge_el, qty_el) = if sv2 { (2, 3, 5) } else { (1, 2, 4) };
                if sv2 {
                    l.revenue_code = seg.s(1);
                }
                // Components 1 (the code) and 2–5 (modifiers), in one pass.
                let mut parts = seg.el(code_el).split(|&b| b == seg.comp).skip(1);
                l.service_code = parts.next().and_then(|code| seg.text(code));
                for m in parts.take(4) {
                    if let Some(m) = seg.text(m) {
                        l.modifiers.push(m);
                    }
                }
                let charge = seg.el(charge_el);
                let required_missing = if sv2 {
                    l.revenue_code.is_none()
                } else {
                    l.service_code.is_none()
                };
                if required_missing || charge.trim_ascii().is_empty() {
                    c.taint.get_or_insert(Taint {
                        reason: Reason::MissingValue,
                        message: format!(
                            "segment {n} {}: {} missing",
                            id_str(seg.id()),
                            if required_missing {
                                if sv2 {
                                    "SV201 revenue code"
                                } else {
                                    "SV101-2 procedure code"
                                }
                            } else if sv2 {
                                "SV203 charge"
                            } else {
                                "SV102 charge"
                            }
                        ),
                        position: at("2400"),
                    });
                } else if !is_decimal(charge) {
                    c.taint.get_or_insert(Taint {
                        reason: Reason::BadNumber,
                        message: format!(
                            "segment {n}: charge {:?} is not a decimal",
                            lossy(charge)
                        ),
                        position: at("2400"),
                    });
                } else {
                    l.amounts.push(Amount {
                        category: "submitted".into(),
                        value: seg.lossy(charge),
                    });
                }
                l.quantity = seg.s(qty_el);
                if !sv2 {
                    l.place_of_service = seg.s(5).or_else(|| c.facility_code.clone());
                    for p in seg.el(7).split(|&b| b == seg.comp).take(4) {
                        if let Some(p) = num(p).and_then(|v| u32::try_from(v).ok()) {
                            l.diagnosis_pointers.push(p);
                        }
                    }
                }
            }
            b"DTP" if seg.el(1) == b"472" => match dtp_period(seg.el(2).trim_ascii(), seg.el(3)) {
                Ok((f, t)) => {
                    l.from = f;
                    l.thru = t;
                }
                Err(()) => {
                    c.taint.get_or_insert(Taint {
                        reason: Reason::BadDate,
                        message: format!(
                            "segment {n} DTP*472: {:?} is not a valid {} date",
                            lossy(seg.el(3)),
                            lossy(seg.el(2))
                        ),
                        position: at("2400"),
                    });
                }
            },
            _ => {}
        }
    }

    /// Close the open line (it already sits in `claim.lines`): it must have had its SV1/SV2.
    fn finish_line(c: &mut ClaimCtx) {
        if std::mem::take(&mut c.line_open) && !c.line_has_service {
            let number = c.claim.lines.last().map_or(0, |l| l.number);
            c.taint.get_or_insert(Taint {
                reason: Reason::MissingValue,
                message: format!(
                    "line {number} (segment {}) has no SV1/SV2 service segment",
                    c.line_at.0
                ),
                position: Position {
                    file: c.clm_pos.file.clone(),
                    line: 0,
                    byte_offset: c.line_at.1,
                    segment: Some(c.line_at.0),
                    context: Some("2400".into()),
                },
            });
        }
    }

    /// Emit the open claim (if any) as a record or a reject. `truncated` names where the
    /// set ended without SE.
    fn finish_claim(&mut self, out: &mut Out<'_>, truncated: Option<&Position>, ends: Ends) {
        let Some(mut c) = self.claim.take() else {
            return;
        };
        self.loop_id = if self.pat.is_some() {
            "2000C"
        } else if self.sub.is_some() {
            "2000B"
        } else {
            "2000A"
        };
        self.rank = 0;
        self.nm1_open = false;
        Self::finish_line(&mut c);
        let mut taints: Vec<&Taint> = Vec::new();
        taints.extend(self.taint.as_ref());
        taints.extend(self.billing.as_ref().and_then(|b| b.taint.as_ref()));
        taints.extend(self.sub.as_ref().and_then(|b| b.taint.as_ref()));
        taints.extend(self.pat.as_ref().and_then(|b| b.taint.as_ref()));
        taints.extend(c.taint.as_ref());
        let trunc_taint;
        if let Some(p) = truncated {
            trunc_taint = Taint {
                reason: Reason::Envelope,
                message: format!(
                    "transaction set {} ends without SE (truncated) inside this claim",
                    self.control
                ),
                position: p.clone(),
            };
            taints.push(&trunc_taint);
        }
        let first = taints
            .into_iter()
            .min_by_key(|t| t.position.segment.unwrap_or(u64::MAX))
            .cloned();
        let first = first.or_else(|| {
            let missing = if self
                .billing
                .as_ref()
                .and_then(|b| b.party.as_ref())
                .is_none()
            {
                Some("billing provider (2000A/2010AA)")
            } else if self.sub.is_none() {
                Some("subscriber (2000B)")
            } else if self.sub.as_ref().and_then(|s| s.person.as_ref()).is_none() {
                Some("subscriber name (2010BA)")
            } else {
                None
            };
            missing.map(|m| Taint {
                reason: Reason::MissingValue,
                message: format!("claim has no {m}"),
                position: c.clm_pos.clone(),
            })
        });
        if let Some(t) = first {
            let msg = format!(
                "claim {:?} (CLM at segment {}) rejected: {}",
                c.claim.claim_id,
                c.clm_pos.segment.unwrap_or(0),
                t.message
            );
            out.reject(t, msg, &self.claim_raw);
            return;
        }
        let mut claim = c.claim;
        // Billing provider, payer, member. Data of a unit that ends with this claim is moved
        // into the record; data that later claims may still need is cloned.
        let (take_sub, take_pat) = (ends == Ends::Subscriber, ends >= Ends::Patient);
        claim.billing = self.billing.as_ref().and_then(|b| b.party.clone());
        let mut sub = self.sub.as_mut();
        if let Some(s) = sub.as_deref_mut() {
            claim.payer = take_or_clone(&mut s.payer, take_sub).unwrap_or_default();
        }
        let subscriber_id = sub
            .as_deref()
            .and_then(|s| s.person.as_ref())
            .and_then(|p| p.id.clone());
        let rel = match &self.pat {
            Some(p) => relationship(p.pat01.as_deref().unwrap_or("")),
            None => "self",
        };
        let pat_person = self.pat.as_mut().and_then(|p| p.person.as_mut());
        let member_id = match &pat_person {
            Some(q) => q.id.clone().or_else(|| subscriber_id.clone()),
            None => subscriber_id.clone(),
        };
        let member_id = member_id.unwrap_or_default();
        if member_id.is_empty() {
            let t = Taint {
                reason: Reason::MissingValue,
                message: "no member id: 2010BA NM109 (and 2010CA NM109) missing".into(),
                position: c.clm_pos.clone(),
            };
            let msg = format!(
                "claim {:?} (CLM at segment {}) rejected: {}",
                claim.claim_id,
                c.clm_pos.segment.unwrap_or(0),
                t.message
            );
            out.reject(t, msg, &self.claim_raw);
            return;
        }
        let person = match pat_person {
            Some(p) => Some(p.details(take_pat)),
            None => sub
                .as_deref_mut()
                .and_then(|s| s.person.as_mut())
                .map(|p| p.details(take_sub)),
        };
        let (group, group_name, filing) = match sub {
            Some(s) => (
                take_or_clone(&mut s.group, take_sub),
                take_or_clone(&mut s.group_name, take_sub),
                take_or_clone(&mut s.filing, take_sub),
            ),
            None => (None, None, None),
        };
        let key = coverage_key(
            claim
                .payer
                .id
                .as_deref()
                .or(claim.payer.name.as_deref())
                .unwrap_or("payer"),
            group.as_deref().or(filing.as_deref()),
        );
        let coverage = CoverageSpan {
            key: key.clone(),
            type_display: filing.as_deref().and_then(filing_display).map(Text::from),
            type_code: filing,
            subscriber_id: subscriber_id.clone(),
            relationship: Some(rel.into()),
            group,
            group_name,
            payer: claim.payer.clone(),
            ..CoverageSpan::default()
        };
        let mut member = Member {
            member_id: member_id.clone(),
            coverages: vec![coverage],
            position: claim.position.clone(),
            ..Member::default()
        };
        if let Some(p) = person {
            member.family = p.family;
            member.given = p.given;
            member.gender = p.gender;
            member.birth_date = p.birth;
            member.address_lines = p.lines;
            member.city = p.city;
            member.state = p.state;
            member.postal_code = p.postal;
        }
        claim.coverage_key = Some(key);
        claim.member_identifiers.reserve_exact(2);
        claim.member_identifiers.push(Ident {
            kind: "member".into(),
            value: member_id.clone(),
        });
        if let Some(s) = subscriber_id.filter(|s| *s != member_id) {
            claim.member_identifiers.push(Ident {
                kind: "subscriber".into(),
                value: s,
            });
        }
        claim.member_id = member_id;
        claim.member = Some(Box::new(member));
        // Dates from lines when the claim has no statement period.
        if claim.from.is_none() {
            claim.from = claim
                .lines
                .iter()
                .filter_map(|l| l.from.as_ref())
                .min()
                .cloned();
        }
        if claim.thru.is_none() {
            claim.thru = claim
                .lines
                .iter()
                .filter_map(|l| l.thru.as_ref())
                .max()
                .cloned();
        }
        // Adjudication.
        claim.adjudicated = c.adjudicated;
        if c.adjudicated {
            let paid = match &c.paid {
                Some(p) => positive(p),
                None => c.line_paid_positive,
            };
            claim.payment_status = Some(if paid { "paid" } else { "denied" }.into());
        }
        (out.emit)(Ok(SourceRecord::Claim(claim)));
    }

    /// Close the set at SE (`truncated` = None) or because it ended without SE.
    fn close(mut self, out: &mut Out<'_>, truncated: Option<Position>) {
        if let Some(reason) = self.unsupported.take() {
            let t = Taint {
                reason: Reason::Unsupported,
                message: reason.clone(),
                position: self.pos.clone(),
            };
            out.reject(t, reason, &self.raw);
            return;
        }
        let had_claim_open = self.claim.is_some();
        self.finish_claim(out, truncated.as_ref(), Ends::Subscriber);
        if self.claims > 0 {
            if let (Some(p), false) = (&truncated, had_claim_open) {
                out.notice(
                    p.clone(),
                    format!("transaction set {} ends without SE", self.control),
                );
            }
            return;
        }
        // No claim at all: the set itself is the rejected unit.
        let t = self
            .taint
            .clone()
            .or_else(|| self.billing.as_ref().and_then(|b| b.taint.clone()))
            .or_else(|| self.sub.as_ref().and_then(|b| b.taint.clone()))
            .or_else(|| self.pat.as_ref().and_then(|b| b.taint.clone()))
            .or_else(|| {
                truncated.clone().map(|p| Taint {
                    reason: Reason::Envelope,
                    message: "transaction set ends without SE (truncated)".into(),
                    position: p,
                })
            })
            .unwrap_or_else(|| {
                let missing = if self.billing.is_none() {
                    "billing provider loop 2000A"
                } else if self.sub.is_none() {
                    "subscriber loop 2000B"
                } else {
                    "claim loop 2300"
                };
                Taint {
                    reason: Reason::Segment,
                    message: format!("required {missing} missing: the set holds no claim"),
                    position: self.pos.clone(),
                }
            });
        let msg = format!(
            "transaction set {} (ST at segment {}) rejected: {}",
            self.control,
            self.pos.segment.unwrap_or(0),
            t.message
        );
        out.reject(t, msg, &self.raw);
    }
}

/// The open 2400 line of a claim, if any.
fn open_line(c: &mut ClaimCtx) -> Option<&mut ClaimLine> {
    if c.line_open {
        c.claim.lines.last_mut()
    } else {
        None
    }
}

fn oo(slot: &mut Option<Taint>, id: &[u8], pos: Position, loop_id: &str) {
    let message = format!(
        "segment {} {} is out of order in loop {loop_id}",
        pos.segment.unwrap_or(0),
        id_str(id)
    );
    slot.get_or_insert(Taint {
        reason: Reason::Segment,
        message,
        position: pos,
    });
}

fn ne(slot: &mut Option<Taint>, id: &[u8], pos: Position, loop_id: &str) {
    let message = format!(
        "segment {} {} is not expected in loop {loop_id}",
        pos.segment.unwrap_or(0),
        id_str(id)
    );
    slot.get_or_insert(Taint {
        reason: Reason::Segment,
        message,
        position: pos,
    });
}

/// Set the start or the end of the `admissionperiod` supporting entry (`start/end`).
fn set_period(sup: &mut Vec<Supporting>, date: Option<Text>, start: bool) {
    let Some(date) = date else {
        return;
    };
    let idx = match sup.iter().position(|s| s.category == "admissionperiod") {
        Some(i) => i,
        None => {
            sup.push(Supporting {
                category: "admissionperiod".into(),
                value: "/".into(),
            });
            sup.len() - 1
        }
    };
    let v = &mut sup[idx].value;
    let (a, b) = v.split_once('/').unwrap_or(("", ""));
    *v = if start {
        compact_str::format_compact!("{date}/{b}")
    } else {
        compact_str::format_compact!("{a}/{date}")
    };
}

fn party_detail(p: &mut Party, seg: &Seg<'_>) {
    match seg.id() {
        b"N3" => {
            p.address_lines.extend(seg.s(1));
            p.address_lines.extend(seg.s(2));
        }
        b"N4" => {
            p.city = seg.s(1);
            p.state = seg.s(2);
            p.postal_code = seg.s(3);
        }
        b"REF" if seg.el(1) == b"EI" => p.tax_id = seg.s(2),
        _ => {}
    }
}

fn person_detail(p: &mut Person, seg: &Seg<'_>) {
    match seg.id() {
        b"N3" => {
            p.lines.extend(seg.s(1));
            p.lines.extend(seg.s(2));
        }
        b"N4" => {
            p.city = seg.s(1);
            p.state = seg.s(2);
            p.postal = seg.s(3);
        }
        b"DMG" => {
            if seg.el(1) == b"D8" {
                p.birth = d8(seg.el(2));
            }
            p.gender = gender(seg.el(3));
        }
        _ => {}
    }
}

/// CAS: group, then up to six (reason, amount, quantity) triplets. Patient responsibility
/// reasons 1/2/3 become `deductible`/`coinsurance`/`copay` amounts; every other triplet is
/// kept as an adjustment.
fn cas(seg: &Seg<'_>, amounts: &mut Vec<Amount>, adjustments: &mut Vec<Adjustment>) {
    let group = seg.s(1);
    for k in 0..6 {
        let Some(reason) = seg.s(2 + 3 * k) else {
            continue;
        };
        let amount = seg.s(3 + 3 * k);
        let cat = match (group.as_deref(), reason.as_str()) {
            (Some("PR"), "1") => Some("deductible"),
            (Some("PR"), "2") => Some("coinsurance"),
            (Some("PR"), "3") => Some("copay"),
            _ => None,
        };
        match (cat, amount) {
            (Some(cat), Some(v)) => amounts.push(Amount {
                category: cat.into(),
                value: v,
            }),
            (_, amount) => adjustments.push(Adjustment {
                group: group.clone(),
                reason,
                amount,
            }),
        }
    }
}

/// AMT: payer paid (D) → `paidtoprovider`, remaining patient liability (EAF) →
/// `memberliability`, non-covered charges (A8) → `noncovered`.
fn amt(seg: &Seg<'_>, amounts: &mut Vec<Amount>) {
    let cat = match seg.el(1) {
        b"D" => "paidtoprovider",
        b"EAF" => "memberliability",
        b"A8" => "noncovered",
        _ => return,
    };
    if let Some(v) = seg.s(2) {
        amounts.push(Amount {
            category: cat.into(),
            value: v,
        });
    }
}

/// HI: diagnoses, ICD procedures and the DRG.
fn hi(
    claim: &mut Claim,
    seg: &Seg<'_>,
    n: u64,
    at: &dyn Fn(&str) -> Position,
    institutional: bool,
    hi_notice: &mut bool,
    out: &mut Out<'_>,
) -> Result<(), Taint> {
    let mut i = 1;
    let len = seg.len();
    while i <= len {
        let el = seg.el(i);
        i += 1;
        if el.is_empty() {
            continue;
        }
        let has_comp = el.contains(&seg.comp);
        let qual = component(el, seg.comp, 0).trim_ascii();
        let (code, el) = if !has_comp
            && (diag_qual(qual).is_some() || proc_qual(qual).is_some())
            && i <= len
            && !seg.el(i).contains(&seg.comp)
        {
            // Lenient: qualifier and code in separate elements (ICD-9 era senders).
            if !*hi_notice {
                *hi_notice = true;
                out.notice(
                    at("2300"),
                    format!(
                        "segment {n} HI: qualifier and code in separate elements instead of a composite (read leniently)"
                    ),
                );
            }
            let code = seg.el(i);
            i += 1;
            (code, el)
        } else {
            (component(el, seg.comp, 1), el)
        };
        let code = code.trim_ascii();
        if let Some((kind, ver)) = diag_qual(qual) {
            if code.is_empty() {
                return Err(Taint {
                    reason: Reason::MissingValue,
                    message: format!("segment {n} HI: {} diagnosis without a code", lossy(qual)),
                    position: at("2300"),
                });
            }
            let poa = if institutional {
                seg.text(component(el, seg.comp, 8))
            } else {
                None
            };
            claim.diagnoses.push(Diagnosis {
                code: seg.lossy(code),
                icd_version: ver,
                kind: kind.into(),
                poa,
            });
        } else if let Some((kind, ver)) = proc_qual(qual) {
            if code.is_empty() {
                return Err(Taint {
                    reason: Reason::MissingValue,
                    message: format!("segment {n} HI: {} procedure without a code", lossy(qual)),
                    position: at("2300"),
                });
            }
            let date = if component(el, seg.comp, 2) == b"D8" {
                d8(component(el, seg.comp, 3))
            } else {
                None
            };
            claim.procedures.push(Procedure {
                code: seg.lossy(code),
                icd_version: ver,
                kind: kind.into(),
                date,
            });
        } else if qual == b"DR" && !code.is_empty() {
            claim.supporting.push(Supporting {
                category: "drg".into(),
                value: seg.lossy(code),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims that share a subscriber or patient get the same member data whether it was
    /// cloned (another claim follows) or moved (the unit ends): CLM after CLM, HL 23 after a
    /// subscriber's claim, HL 23 after a patient's claim, HL 22 and SE.
    #[test]
    fn shared_units_give_every_claim_the_same_member() {
        let isa = "ISA*00*          *00*          *ZZ*SUBMITTER      *ZZ*RECEIVER       *240101*1200*^*00501*000000001*0*P*:~";
        let mut x = String::from(isa);
        x.push_str("GS*HC*S*R*20240101*1200*1*X*005010X222A1~ST*837*0001*005010X222A1~");
        x.push_str("BHT*0019*00*1*20240101*1200*CH~NM1*41*2*SUB*****46*S1~NM1*40*2*REC*****46*R1~");
        x.push_str("HL*1**20*1~NM1*85*2*CLINIC*****XX*1234567893~N3*1 MAIN ST~N4*TOWN*IL*62701~");
        let sub = "SBR*P*18*GRP1******CI~NM1*IL*1*DOE*JANE****MI*M1~N3*2 OAK AVE~N4*TOWN*IL*62704~DMG*D8*19800101*F~NM1*PR*2*PAYER*****PI*P1~";
        let clm = |id: &str| {
            format!("CLM*{id}*10***11:B:1*Y*A*Y*Y~HI*ABK:I10~LX*1~SV1*HC:99213*10*UN*1***1~DTP*472*D8*20240102~")
        };
        x.push_str(&format!("HL*2*1*22*1~{sub}"));
        x.push_str(&clm("A1"));
        x.push_str(&clm("A2"));
        x.push_str(
            "HL*3*2*23*0~PAT*19~NM1*QC*1*DOE*KID~N3*3 ELM ST~N4*TOWN*IL*62704~DMG*D8*20100101*M~",
        );
        x.push_str(&clm("K1"));
        x.push_str(&clm("K2"));
        x.push_str("HL*4*2*23*0~PAT*19~NM1*QC*1*DOE*TWO~");
        x.push_str(&clm("T1"));
        x.push_str(&format!("HL*5*1*22*0~{}", sub.replace("*M1~", "*M5~")));
        x.push_str(&clm("B1"));
        x.push_str("SE*1*0001~GE*1*1~IEA*1*000000001~");
        let mut claims = Vec::new();
        super::super::read_bytes("t", x.as_bytes(), &mut |i| match i {
            Ok(SourceRecord::Claim(c)) => claims.push(*c),
            other => panic!("unexpected {other:?}"),
        });
        let ids: Vec<_> = claims.iter().map(|c| c.claim_id.as_str()).collect();
        assert_eq!(ids, ["A1", "A2", "K1", "K2", "T1", "B1"]);
        let member = |i: usize| {
            let mut m = claims[i].member.clone().expect("member");
            m.position = Position::default();
            m
        };
        let (a1, a2, k1, k2, t1, b1) = (
            member(0),
            member(1),
            member(2),
            member(3),
            member(4),
            member(5),
        );
        assert_eq!(a1, a2);
        assert_eq!(k1, k2);
        assert_eq!(a1.member_id, "M1");
        assert_eq!(a1.family.as_deref(), Some("DOE"));
        assert_eq!(a1.given, ["JANE"]);
        assert_eq!(a1.address_lines, ["2 OAK AVE"]);
        assert_eq!(a1.birth_date.as_deref(), Some("1980-01-01"));
        assert_eq!(k1.given, ["KID"]);
        assert_eq!(k1.address_lines, ["3 ELM ST"]);
        assert_eq!(k1.member_id, "M1");
        assert_eq!(t1.given, ["TWO"]);
        assert!(t1.address_lines.is_empty());
        assert_eq!(b1.member_id, "M5");
        assert_eq!(b1.given, ["JANE"]);
        for (m, rel) in [(&a1, "self"), (&k1, "child"), (&t1, "child"), (&b1, "self")] {
            let cov = &m.coverages[0];
            assert_eq!(cov.key, "p1-grp1");
            assert_eq!(cov.group.as_deref(), Some("GRP1"));
            assert_eq!(cov.type_code.as_deref(), Some("CI"));
            assert_eq!(cov.relationship.as_deref(), Some(rel));
            assert_eq!(cov.payer.id.as_deref(), Some("P1"));
            assert_eq!(cov.payer.name.as_deref(), Some("PAYER"));
        }
        for c in &claims {
            assert_eq!(c.payer.id.as_deref(), Some("P1"));
            assert_eq!(c.coverage_key.as_deref(), Some("p1-grp1"));
            assert_eq!(c.from.as_deref(), Some("2024-01-02"));
            let b = c.billing.as_ref().expect("billing");
            assert_eq!(b.address_lines, ["1 MAIN ST"]);
        }
    }

    #[test]
    fn dates() {
        assert_eq!(d8(b"20240115").as_deref(), Some("2024-01-15"));
        assert_eq!(d8(b"20241315"), None);
        // Calendar dates only: month lengths and leap years (2000 was one, 1900 was not).
        for (good, date) in [
            (true, b"20240229"),
            (false, b"20230229"),
            (true, b"20000229"),
            (false, b"19000229"),
            (false, b"20240231"),
            (false, b"20240431"),
            (true, b"20241231"),
            (false, b"20240100"),
        ] {
            assert_eq!(
                d8(date).is_some(),
                good,
                "{}",
                String::from_utf8_lossy(date)
            );
        }
        assert!(dtp_period(b"RD8", b"20240201-20240230").is_err());
        assert_eq!(
            dtp_period(b"RD8", b"20050314-20050325"),
            Ok((Some("2005-03-14".into()), Some("2005-03-25".into())))
        );
        assert!(dtp_period(b"D8", b"2005031").is_err());
        assert_eq!(
            dtp_period(b"DT", b"201903101402"),
            Ok((Some("2019-03-10".into()), Some("2019-03-10".into())))
        );
    }

    #[test]
    fn numbers_and_amounts() {
        for (b, want) in [
            (&b"12"[..], Some(12)),
            (b" 7 ", Some(7)),
            (b"+3", Some(3)),
            (b"+", None),
            (b"", None),
            (b"-1", None),
            (b"1.0", None),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
        ] {
            assert_eq!(num(b), want, "{b:?}");
            let std = std::str::from_utf8(b.trim_ascii())
                .ok()
                .and_then(|s| s.parse().ok());
            assert_eq!(num(b), std, "{b:?} as u64::from_str reads it");
        }
        for s in [
            "10", "0.01", ".5", "5.", "0", "0.00", "-3", "-0.0", "+2", "1e3", " 5", "abc", "",
        ] {
            let std = s.parse::<f64>().map(|v| v > 0.0).unwrap_or(false);
            assert_eq!(positive(s), std, "{s:?}");
        }
        assert_eq!(coverage_key("PAYER01", Some("Grp 1/Ü")), "payer01-grp-1--");
        assert_eq!(coverage_key("P", None), "p");
    }

    #[test]
    fn decimals() {
        assert!(is_decimal(b"12.25"));
        assert!(is_decimal(b"-3"));
        assert!(!is_decimal(b"1.2.3"));
        assert!(!is_decimal(b""));
        assert!(!is_decimal(b"12a"));
    }

    #[test]
    fn kinds() {
        assert_eq!(institutional_kind("11"), ClaimKind::Inpatient);
        assert_eq!(institutional_kind("21"), ClaimKind::Inpatient);
        assert_eq!(institutional_kind("13"), ClaimKind::Outpatient);
        assert_eq!(institutional_kind("14"), ClaimKind::Outpatient);
    }

    #[test]
    fn admission_period() {
        let mut s = Vec::new();
        set_period(&mut s, Some("2019-03-12".into()), false);
        set_period(&mut s, Some("2019-03-10".into()), true);
        assert_eq!(s[0].value, "2019-03-10/2019-03-12");
    }
}
