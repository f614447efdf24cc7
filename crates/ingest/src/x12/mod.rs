//! X12 837P / 837I (005010X222A1/A2, 005010X223A2/A3) claims reader.
//!
//! What it owns: turning an X12 byte stream into [`crate::model::Claim`] records — one per CLM
//! loop (2300) with its service lines (2400) — or into [`crate::reject::Reject`]s, plus
//! envelope control-count notices. What it does not own: FHIR (the mapper's job), code
//! translation beyond what the 837 itself defines, and acknowledgements (999/277CA).
//!
//! # Reading rules
//! - **Delimiters** come from each interchange's fixed-width ISA: element separator at byte 3,
//!   repetition separator ISA11 (versions ≥ 00402 only), component separator ISA16, segment
//!   terminator the byte after ISA16. CR/LF, indentation and blank lines between segments, a
//!   UTF-8 byte-order mark, one-line files and a missing terminator after the last segment
//!   are tolerated.
//! - **Streaming**: the input is read through one reusable buffer; memory grows with the
//!   longest segment (capped at 1 MiB) and with one claim, never with the file.
//! - **Parallel**: [`read_parallel`] cuts a file between interchanges and between the
//!   transaction sets of an interchange ([`Piece`] carries the envelope a piece starts
//!   under), so a file that is one interchange of many sets is read on every core, with the
//!   same records, rejects, notices and positions as a sequential read;
//!   [`read_parallel_files`] reads the pieces of several files side by side, in file order.
//! - **Claim kind**: 005010X222 → professional. 005010X223 → inpatient when the facility type
//!   code (CLM05-1, a leading `0` dropped) is 11 or 12 (hospital inpatient), 18 (swing bed),
//!   21 (skilled nursing inpatient) or 41 (religious non-medical inpatient); outpatient
//!   otherwise. ST03 decides the guide; GS08 only when ST03 is empty.
//! - **Members**: the member id is 2010BA NM109 when the claim sits under the subscriber;
//!   under a patient loop (2000C) it is 2010CA NM109 if present, else the subscriber's id.
//!   The coverage key is the payer id (2010BB NM109) plus the group number (SBR03), or plus
//!   the claim filing indicator (SBR09) when there is no group, lower-cased.
//! - **Adjudication**: the 2320/2430 loops carry another payer's adjudication (COB, encounter
//!   data). When present, the claim is `adjudicated`: AMT*D → `paidtoprovider`, AMT*EAF →
//!   `memberliability`, AMT*A8 → `noncovered`, CAS PR 1/2/3 → `deductible`/`coinsurance`/
//!   `copay`, other CAS triplets → adjustments; SVD02 → line `paidtoprovider`. Payment status
//!   is `paid` when the paid amount (AMT*D, else the lines' SVD02) is positive, `denied`
//!   otherwise. Without these loops nothing is invented: `adjudicated = false`.
//!
//! # Errors are isolated
//! - A bad interchange (no ISA, a short or non-fixed-width ISA, UTF-16 or binary bytes) is one
//!   reject (`Envelope` or `Encoding`, context `ISA`); reading resumes at the next valid ISA.
//! - A transaction set that is not an 837, or whose header is broken and holds no claim, is one
//!   reject. Segments outside any ST/SE are one `Envelope` reject per run of them.
//! - A defect taints the smallest unit whose data depends on it: the claim (2300/2400), the
//!   patient (2000C), the subscriber (2000B), the billing provider (2000A) or the set header
//!   (1000A/B). Each claim under a tainted unit is one reject (`Segment`, `MissingValue`,
//!   `BadDate` or `BadNumber`) positioned at the first defect, with the claim's own segments
//!   as raw text (capped at 64 KiB).
//! - A set that ends without SE rejects the claim that was open (it may have lost lines);
//!   claims completed before it are kept.
//! - Control-number and count mismatches (ISA13/IEA02, IEA01, GS06/GE02, GE01, ST02/SE02, SE01),
//!   missing trailers, GS08/ST03 disagreements and leniently read ICD-9-style HI segments are
//!   [`crate::Notice`]s in the file summary.

mod generate;
mod parallel;
mod parse;
mod token;

use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::Path;

pub use generate::{generate_837, generate_837_shaped, Shape};
pub use parse::{Envelope, GroupEnvelope, Piece};
pub use token::Delimiters;

use crate::{Error, FileSummary, Item, Reader};

/// The X12 837P/837I reader. See the module documentation for its rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct X12Reader;

impl X12Reader {
    /// A reader with the default rules.
    pub fn new() -> Self {
        Self
    }
}

impl Reader for X12Reader {
    fn read(&self, path: &Path, emit: &mut dyn FnMut(Item)) -> Result<FileSummary, Error> {
        let name = path.display().to_string();
        let io = |source| Error::Io {
            path: name.clone(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        read_stream(&name, file, emit).map_err(io)
    }
}

/// Read an X12 stream from any reader (buffered internally; pass a raw `File`).
///
/// `name` is the file name recorded in positions.
///
/// # Errors
/// Only I/O errors of `rdr`; everything about the content becomes rejects and notices.
pub fn read_stream<R: Read>(
    name: &str,
    rdr: R,
    emit: &mut dyn FnMut(Item),
) -> std::io::Result<FileSummary> {
    parse::run(name, rdr, emit)
}

/// Size of the pieces [`read_parallel`] cuts a large file into (they end at the first place
/// past this size where a piece may start: an ISA after a closed interchange, or an ST right
/// after the SE that closed the previous set).
pub const PIECE_BYTES: u64 = 256 << 10;

/// Cut an X12 stream into pieces of about `target` bytes that read on their own (see
/// [`Piece`]), walking it once with the tokenizer. Reading the pieces in order with
/// [`read_piece`] gives exactly what [`read_stream`] gives.
///
/// # Errors
/// Only I/O errors of `rdr`.
pub fn split_stream<R: Read>(rdr: R, target: u64) -> std::io::Result<Vec<Piece>> {
    let mut splitter = parse::Splitter::new(rdr, target);
    let mut out = Vec::new();
    while let Some(p) = splitter.next_piece()? {
        out.push(p);
    }
    Ok(out)
}

/// Read one piece of a file; `rdr` yields the piece's bytes only (`piece.start..piece.end`).
/// Positions (byte offsets, segment numbers) are the file's.
///
/// # Errors
/// Only I/O errors of `rdr`.
pub fn read_piece<R: Read>(
    name: &str,
    rdr: R,
    piece: Piece,
    emit: &mut dyn FnMut(Item),
) -> std::io::Result<FileSummary> {
    parse::run_piece(name, rdr, piece, emit)
}

/// Read an X12 file on as many threads as the current rayon pool has, cut between
/// interchanges or between the transaction sets of one (see [`Piece`]) into pieces of about
/// [`PIECE_BYTES`] that are read — and passed through `map` — in parallel. `emit` gets the
/// mapped items in file order on the calling thread, exactly as a sequential read followed by
/// `map` would give them, positions included, while the pieces after them are read.
///
/// Memory stays bounded whatever the size of a piece: the piece `emit` is at streams through
/// to it, and the pieces further on hold at most 2,048 mapped items per thread together
/// (16,384 at most) until `emit` gets to them. A file smaller than two pieces, or a pool of
/// one thread, is read sequentially.
///
/// # Errors
/// Only when the file cannot be read.
pub fn read_parallel<T: Send>(
    path: &Path,
    map: &(dyn Fn(Item) -> T + Sync),
    emit: &mut (dyn FnMut(T) + Send),
) -> Result<FileSummary, Error> {
    let name = path.display().to_string();
    let io = |source| Error::Io {
        path: name.clone(),
        source,
    };
    let threads = rayon::current_num_threads();
    let len = std::fs::metadata(path).map_err(io)?.len();
    if threads < 2 || len < 2 * PIECE_BYTES {
        let file = File::open(path).map_err(io)?;
        return read_stream(&name, file, &mut |item| emit(map(item))).map_err(io);
    }
    let mut summary = FileSummary::default();
    parallel::read(&[path], threads, map, &mut |_, event| {
        match event {
            FileEvent::Item(t) => emit(t),
            FileEvent::Done(s) => summary = s,
        }
        ControlFlow::Continue(())
    })
    .map_err(|(_, source)| io(source))?;
    Ok(summary)
}

/// What [`read_parallel_files`] hands on for a file.
#[derive(Debug)]
pub enum FileEvent<T> {
    /// One mapped item of the file, in file order.
    Item(T),
    /// The file's summary, right after its last item.
    Done(FileSummary),
}

/// Read several X12 files as [`read_parallel`] reads one, with the files' pieces side by side:
/// many small files are read on every core as one large file is. `on` gets, with the file's
/// index in `paths`, each file's mapped items in order and then its summary, the files in the
/// order of `paths`, all on the calling thread; when it returns `Break`, the read stops there
/// (the workers finish the pieces they are in without mapping them) and returns `Ok`. A pool
/// of one thread reads the files one after another.
///
/// # Errors
/// When a file cannot be opened (the files before it have had their summaries), or a read
/// fails (the read stops at once).
pub fn read_parallel_files<T: Send>(
    paths: &[&Path],
    map: &(dyn Fn(Item) -> T + Sync),
    on: &mut (dyn FnMut(usize, FileEvent<T>) -> ControlFlow<()> + Send),
) -> Result<(), Error> {
    let io = |f: Option<usize>, source| Error::Io {
        path: f.and_then(|f| paths.get(f)).map_or_else(
            || "(an X12 reader thread)".into(),
            |p| p.display().to_string(),
        ),
        source,
    };
    if rayon::current_num_threads() < 2 {
        for (f, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| io(Some(f), e))?;
            let name = path.display().to_string();
            let mut stopped = false;
            let summary = read_stream(&name, file, &mut |item| {
                if !stopped {
                    stopped = on(f, FileEvent::Item(map(item))).is_break();
                }
            })
            .map_err(|e| io(Some(f), e))?;
            if stopped || on(f, FileEvent::Done(summary)).is_break() {
                return Ok(());
            }
        }
        return Ok(());
    }
    parallel::read(paths, rayon::current_num_threads(), map, on)
        .map_err(|(f, source)| io(f, source))
}

/// Read X12 bytes held in memory (tests, fuzzing). Never fails and never panics.
pub fn read_bytes(name: &str, data: &[u8], emit: &mut dyn FnMut(Item)) -> FileSummary {
    // Reading from a slice cannot fail.
    parse::run(name, data, emit).unwrap_or_default()
}

/// Counts from a structural scan of an X12 stream (see [`scan_stream`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Bytes read.
    pub bytes: u64,
    /// Interchanges whose ISA parsed.
    pub interchanges: u64,
    /// Segments, ISA included.
    pub segments: u64,
    /// Transaction sets (ST segments).
    pub sets: u64,
    /// Claims (CLM segments).
    pub claims: u64,
    /// Bytes skipped because they were not inside a valid interchange.
    pub skipped: u64,
}

/// Structural scan: learn each interchange's delimiters and cut it into segments, counting
/// interchanges, sets and claims without building records. This is the tokenizer cost on
/// its own (used by the benchmark, and cheap enough to size or split a file before reading).
///
/// # Errors
/// Only I/O errors of `rdr`.
pub fn scan_stream<R: Read>(rdr: R) -> std::io::Result<ScanStats> {
    let mut src = token::Source::new(rdr);
    let mut st = ScanStats::default();
    let mut sink = Vec::new();
    while src.skip_ws()? {
        let isa = match token::parse_isa(src.peek_isa()?) {
            Ok(isa) => isa,
            Err(_) => {
                let before = src.offset();
                sink.clear();
                src.seek_isa(1, &mut sink, 0)?;
                st.skipped += src.offset() - before;
                continue;
            }
        };
        st.interchanges += 1;
        st.segments += 1;
        src.advance(token::ISA_LEN);
        let d = isa.delims;
        while let Some(seg) = src.next_in_interchange(d.segment)? {
            st.segments += 1;
            match token::seg_id(seg.data, d.element) {
                b"CLM" => st.claims += 1,
                b"ST" => st.sets += 1,
                b"IEA" => break,
                _ => {}
            }
        }
    }
    st.bytes = src.bytes;
    Ok(st)
}
