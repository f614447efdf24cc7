//! Delimiters and the segment tokenizer: ISA parsing and a buffered, streaming segment source.
//!
//! The tokenizer knows bytes, not loops: it finds the interchange header, learns the
//! delimiters it declares and cuts the stream into segments (borrowed slices of one reusable
//! buffer). Memory grows only with the longest segment, capped at [`MAX_SEGMENT`].

use std::io::{self, Read};

use memchr::memmem;

use crate::model::Text;

/// Length of the fixed-width ISA segment including its terminator.
pub(crate) const ISA_LEN: usize = 106;
/// Byte offsets of the 16 element separators inside the fixed-width ISA.
const ISA_SEPS: [usize; 16] = [
    3, 6, 17, 20, 31, 34, 50, 53, 69, 76, 81, 83, 89, 99, 101, 103,
];
/// Longest segment the tokenizer keeps; a longer one is cut and reported.
pub(crate) const MAX_SEGMENT: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

/// The delimiters one interchange declares in its ISA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Element separator (ISA byte 3).
    pub element: u8,
    /// Component (sub-element) separator (ISA16).
    pub component: u8,
    /// Repetition separator (ISA11), only for versions 00402 and later.
    pub repetition: Option<u8>,
    /// Segment terminator (the byte after ISA16).
    pub segment: u8,
}

/// What the ISA header says, besides its delimiters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Isa {
    pub delims: Delimiters,
    /// ISA13 interchange control number (trimmed).
    pub control: String,
}

/// Why bytes that should start an interchange do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IsaError {
    /// Not single-byte text (UTF-16, NULs, binary).
    Encoding(String),
    /// Text, but not a well-formed ISA.
    Envelope(String),
}

fn looks_utf16(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xFE])
        || b.starts_with(&[0xFE, 0xFF])
        || b.iter().take(8).any(|&c| c == 0)
}

/// Parse the fixed-width ISA at the start of `b` (which holds up to [`ISA_LEN`] bytes).
pub(crate) fn parse_isa(b: &[u8]) -> Result<Isa, IsaError> {
    if looks_utf16(b) {
        return Err(IsaError::Encoding(
            "interchange is not single-byte text (UTF-16 or binary: NUL bytes or a UTF-16 byte-order mark)"
                .into(),
        ));
    }
    if !b.starts_with(b"ISA") {
        let id: String = b
            .iter()
            .take(3)
            .take_while(|c| c.is_ascii_alphanumeric())
            .map(|&c| c as char)
            .collect();
        return Err(IsaError::Envelope(format!(
            "interchange must start with ISA, found {id:?}"
        )));
    }
    if b.len() < ISA_LEN {
        return Err(IsaError::Envelope(format!(
            "ISA truncated: {} bytes, the fixed-width ISA needs {ISA_LEN}",
            b.len()
        )));
    }
    let isa = &b[..ISA_LEN];
    if isa.iter().any(|&c| c == 0 || c >= 0x80) {
        return Err(IsaError::Encoding("ISA holds non-ASCII bytes".into()));
    }
    let element = isa[3];
    if element.is_ascii_alphanumeric() || element.is_ascii_whitespace() {
        return Err(IsaError::Envelope(format!(
            "ISA element separator {:?} is alphanumeric or whitespace",
            element as char
        )));
    }
    for &p in &ISA_SEPS {
        if isa[p] != element {
            return Err(IsaError::Envelope(format!(
                "ISA is not fixed-width: element separator {:?} expected at byte offset {p}, found {:?}",
                element as char, isa[p] as char
            )));
        }
    }
    let component = isa[104];
    let segment = isa[105];
    if component.is_ascii_alphanumeric()
        || segment.is_ascii_alphanumeric()
        || component == element
        || segment == element
        || segment == component
        || segment == b' '
    {
        return Err(IsaError::Envelope(format!(
            "ISA delimiters are ambiguous: element {:?}, component {:?}, segment {:?}",
            element as char, component as char, segment as char
        )));
    }
    let version = &isa[84..89];
    let rep = isa[82];
    let repetition = (version >= &b"00402"[..]
        && !rep.is_ascii_alphanumeric()
        && rep != element
        && rep != component
        && rep != segment
        && rep != b' ')
        .then_some(rep);
    let control = String::from_utf8_lossy(&isa[90..99]).trim().to_string();
    Ok(Isa {
        delims: Delimiters {
            element,
            component,
            repetition,
            segment,
        },
        control,
    })
}

/// A buffered byte source cut into segments.
///
/// The buffer is held as a `String` whenever its bytes are valid UTF-8 (checked once per
/// read, not per element): segments and elements are then slices of text that need no
/// further check. Otherwise (non-UTF-8 bytes, or a read that ended inside a character) it is
/// held as bytes and each segment is checked on its own.
pub(crate) struct Source<R> {
    rdr: R,
    /// The buffer while it is not known to be UTF-8 (empty while `text` holds it).
    raw: Vec<u8>,
    /// The buffer while it is valid UTF-8 (empty while `raw` holds it).
    text: String,
    is_text: bool,
    pos: usize,
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    /// Set while discarding the tail of an over-long segment.
    skipping: bool,
    pub(crate) bytes: u64,
}

/// One segment as the tokenizer found it.
pub(crate) struct RawSeg<'a> {
    /// The bytes, without terminator and surrounding whitespace.
    pub data: &'a [u8],
    /// The same bytes as text, when the buffer they sit in is known to be UTF-8.
    pub text: Option<&'a str>,
    /// File offset of the first byte.
    pub offset: u64,
    /// Whether the segment was longer than [`MAX_SEGMENT`] and was cut.
    pub oversized: bool,
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

impl<R: Read> Source<R> {
    pub(crate) fn new(rdr: R) -> Self {
        Self::at(rdr, 0)
    }

    /// A source whose first byte is at file offset `base` (a piece of a file).
    pub(crate) fn at(rdr: R, base: u64) -> Self {
        Self {
            rdr,
            raw: vec![0; CHUNK * 2],
            text: String::new(),
            is_text: false,
            pos: 0,
            end: 0,
            base,
            eof: false,
            skipping: false,
            bytes: 0,
        }
    }

    /// The buffer's bytes.
    #[inline]
    fn buf(&self) -> &[u8] {
        if self.is_text {
            self.text.as_bytes()
        } else {
            &self.raw
        }
    }

    /// Read more bytes; returns false at end of input.
    fn fill_more(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut buf = if self.is_text {
            std::mem::take(&mut self.text).into_bytes()
        } else {
            std::mem::take(&mut self.raw)
        };
        let r = self.fill_into(&mut buf);
        // One UTF-8 check of the whole buffer per read (the bytes kept from the last read
        // are checked again: cheap next to reading them).
        match String::from_utf8(buf) {
            Ok(text) => {
                self.text = text;
                self.is_text = true;
            }
            Err(e) => {
                self.raw = e.into_bytes();
                self.is_text = false;
            }
        }
        r
    }

    fn fill_into(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        if self.pos > 0 && (self.pos == self.end || buf.len() - self.end < CHUNK) {
            buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
        }
        if buf.len() - self.end < CHUNK {
            let new_len = (buf.len() * 2).max(self.end + CHUNK);
            buf.resize(new_len, 0);
        }
        loop {
            match self.rdr.read(&mut buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    self.bytes += n as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Make at least `n` bytes available (fewer only at end of input).
    fn ensure(&mut self, n: usize) -> io::Result<()> {
        while self.end - self.pos < n {
            if !self.fill_more()? {
                break;
            }
        }
        Ok(())
    }

    /// File offset of the next unread byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Skip UTF-8 byte-order marks and whitespace; false at end of input.
    pub(crate) fn skip_ws(&mut self) -> io::Result<bool> {
        loop {
            self.ensure(3)?;
            let avail = &self.buf()[self.pos..self.end];
            if avail.is_empty() {
                return Ok(false);
            }
            if avail.starts_with(&[0xEF, 0xBB, 0xBF]) {
                self.pos += 3;
                continue;
            }
            match avail.iter().position(|&c| !is_ws(c)) {
                Some(0) => return Ok(true),
                // Look for a byte-order mark after the whitespace too (with 3 bytes
                // available), whatever the boundaries of the reads.
                Some(i) => self.pos += i,
                None => self.pos = self.end,
            }
        }
    }

    /// The next bytes (up to [`ISA_LEN`]), for ISA detection.
    pub(crate) fn peek_isa(&mut self) -> io::Result<&[u8]> {
        self.ensure(ISA_LEN)?;
        let n = (self.end - self.pos).min(ISA_LEN);
        Ok(&self.buf()[self.pos..self.pos + n])
    }

    /// Whether the next bytes start a new ISA (after whitespace was skipped).
    pub(crate) fn at_isa(&mut self) -> io::Result<bool> {
        self.ensure(4)?;
        let a = &self.buf()[self.pos..self.end];
        Ok(a.len() >= 4 && a.starts_with(b"ISA") && !a[3].is_ascii_alphanumeric())
    }

    /// Consume `n` bytes.
    pub(crate) fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.end);
    }

    /// Discard bytes up to the next plausible `ISA` at or after `from` bytes ahead, copying
    /// up to `cap` of the discarded bytes into `raw`. Returns false at end of input.
    pub(crate) fn seek_isa(
        &mut self,
        from: usize,
        raw: &mut Vec<u8>,
        cap: usize,
    ) -> io::Result<bool> {
        let finder = memmem::Finder::new(b"ISA");
        let mut skip = from;
        loop {
            self.ensure(skip + 4)?;
            let avail = self.end - self.pos;
            let start = skip.min(avail);
            let hit = finder.find(&self.buf()[self.pos + start..self.end]);
            let upto = match hit {
                Some(i) => start + i,
                None => avail.saturating_sub(2).max(start.min(avail)),
            };
            let take = upto.min(cap.saturating_sub(raw.len()));
            raw.extend_from_slice(&self.buf()[self.pos..self.pos + take]);
            self.pos += upto;
            skip = 0;
            if hit.is_some() {
                return Ok(true);
            }
            if !self.fill_more()? {
                let rest = self.end - self.pos;
                let take = rest.min(cap.saturating_sub(raw.len()));
                raw.extend_from_slice(&self.buf()[self.pos..self.pos + take]);
                self.pos = self.end;
                return Ok(false);
            }
        }
    }

    /// The next segment ended by `term`, or `None` at end of input.
    pub(crate) fn next_segment(&mut self, term: u8) -> io::Result<Option<RawSeg<'_>>> {
        if self.skipping {
            // Discard the rest of an over-long segment.
            loop {
                if let Some(i) = memchr::memchr(term, &self.buf()[self.pos..self.end]) {
                    self.pos += i + 1;
                    self.skipping = false;
                    break;
                }
                self.pos = self.end;
                if !self.fill_more()? {
                    self.skipping = false;
                    return Ok(None);
                }
            }
        }
        // Leading whitespace (CR/LF after terminators, indentation).
        loop {
            let a = &self.buf()[self.pos..self.end];
            match a.iter().position(|&c| !is_ws(c) || c == term) {
                Some(i) => {
                    self.pos += i;
                    if self.buf()[self.pos] == term {
                        // An empty segment: skip its terminator.
                        self.pos += 1;
                        continue;
                    }
                    break;
                }
                None => {
                    self.pos = self.end;
                    if !self.fill_more()? {
                        return Ok(None);
                    }
                }
            }
        }
        let mut scanned = 0;
        loop {
            if let Some(i) = memchr::memchr(term, &self.buf()[self.pos + scanned..self.end]) {
                let start = self.pos;
                let stop = start + scanned + i;
                self.pos = stop + 1;
                return Ok(Some(self.seg(start, stop, false)));
            }
            scanned = self.end - self.pos;
            if scanned >= MAX_SEGMENT {
                let start = self.pos;
                self.pos += scanned;
                self.skipping = true;
                return Ok(Some(self.seg(start, start + 256, true)));
            }
            let before = self.pos;
            if !self.fill_more()? {
                // Last segment without terminator.
                let start = self.pos;
                self.pos = self.end;
                if start == self.end {
                    return Ok(None);
                }
                return Ok(Some(self.seg(start, self.end, false)));
            }
            // fill_more may have compacted the buffer.
            debug_assert!(self.pos <= before);
        }
    }

    fn seg(&self, start: usize, mut stop: usize, oversized: bool) -> RawSeg<'_> {
        let buf = self.buf();
        while stop > start && is_ws(buf[stop - 1]) {
            stop -= 1;
        }
        RawSeg {
            data: &buf[start..stop],
            // `get` is `None` when a cut (oversized) segment ends inside a character.
            text: if self.is_text {
                self.text.get(start..stop)
            } else {
                None
            },
            offset: self.base + start as u64,
            oversized,
        }
    }

    /// Where the next segment starts (after leading whitespace, relative to `pos`) when it is
    /// the plain case of [`Self::plain_span`]; `None` otherwise.
    #[inline]
    fn plain_start(&self, term: u8) -> Option<usize> {
        if self.skipping {
            return None;
        }
        let a = &self.buf()[self.pos..self.end];
        if a.len() < 3 || a.starts_with(&[0xEF, 0xBB, 0xBF]) {
            return None;
        }
        let i = a.iter().position(|&c| !is_ws(c))?;
        let a = &a[i..];
        if a.len() < 4
            || a[0] == term
            || a[0] == 0xEF
            || (a.starts_with(b"ISA") && !a[3].is_ascii_alphanumeric())
        {
            return None;
        }
        Some(i)
    }

    /// Where the next segment starts and ends (its terminator) when it is the plain case: no
    /// byte-order mark or empty segment before it, not an `ISA`, and wholly in the buffer.
    #[inline]
    fn plain_span(&self, term: u8) -> Option<(usize, usize)> {
        let start = self.pos + self.plain_start(term)?;
        let stop = memchr::memchr(term, &self.buf()[start..self.end])?;
        Some((start, start + stop))
    }

    /// The next segment of the current interchange; `None` at the end of the input or at the
    /// next `ISA`. The plain case ([`Self::plain_span`]) skips the refill checks of
    /// `skip_ws`, `at_isa` and `next_segment`, which take every other case.
    pub(crate) fn next_in_interchange(&mut self, term: u8) -> io::Result<Option<RawSeg<'_>>> {
        if let Some((start, end)) = self.plain_span(term) {
            self.pos = end + 1;
            return Ok(Some(self.seg(start, end, false)));
        }
        if !self.skip_ws()? || self.at_isa()? {
            return Ok(None);
        }
        self.next_segment(term)
    }

    /// The plain case of [`Self::next_in_interchange`] (`None`, nothing consumed, otherwise),
    /// finding the element separators (into `ends`) in the same pass as the terminator.
    #[inline]
    pub(crate) fn next_plain_split(
        &mut self,
        d: &Delimiters,
        ends: &mut Bounds,
    ) -> Option<RawSeg<'_>> {
        let term = d.segment;
        let i = self.plain_start(term)?;
        let a = &self.buf()[self.pos + i..self.end];
        // One pass, eight bytes at a time: element separators up to the terminator.
        let (t_splat, e_splat) = (
            u64::from_ne_bytes([term; 8]),
            u64::from_ne_bytes([d.element; 8]),
        );
        ends.n = 0;
        let mut room = true;
        let mut chunks = a.chunks_exact(8);
        let mut base = 0usize;
        let mut stop = None;
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            let mut m = eq_bytes(w, e_splat);
            let t = eq_bytes(w, t_splat);
            if t != 0 {
                // Only the separators before the terminator.
                let k = t.trailing_zeros() as usize;
                m &= (1u64 << k) - 1;
                if room {
                    ends.push_mask(m, base);
                }
                stop = Some(base + k / 8);
                break;
            }
            if room {
                room = ends.push_mask(m, base);
            }
            base += 8;
        }
        let stop = match stop {
            Some(s) => s,
            None => {
                let tail = chunks.remainder();
                let k = tail.iter().position(|&c| c == term)?;
                for (j, &c) in tail[..k].iter().enumerate() {
                    if c == d.element && ends.n + 1 < MAX_ELEMENTS {
                        ends.at[ends.n] = (base + j) as u32;
                        ends.n += 1;
                    }
                }
                base + k
            }
        };
        let start = self.pos + i;
        self.pos = start + stop + 1;
        let seg = self.seg(start, start + stop, false);
        // Trailing whitespace holds no separator (separators are not whitespace).
        ends.finish(seg.data.len());
        Some(seg)
    }
}

/// A segment split into elements. The boundaries live in an [`Bounds`] the caller reuses from
/// segment to segment (no allocation, no copy).
pub(crate) struct Seg<'a> {
    pub data: &'a [u8],
    /// `data` as text, when it is valid UTF-8 (checked once per segment at most).
    utf8: Option<&'a str>,
    ends: &'a Bounds,
    pub comp: u8,
}

/// Where the elements of a segment end: up to [`MAX_ELEMENTS`] boundaries.
pub(crate) struct Bounds {
    at: [u32; MAX_ELEMENTS],
    n: usize,
}

/// Elements kept per segment; later ones are ignored (no 837 segment that fhirlake reads has
/// more).
pub(crate) const MAX_ELEMENTS: usize = 32;

const LO7: u64 = 0x7F7F_7F7F_7F7F_7F7F;

/// 0x80 in each byte of `w` that equals the byte splatted in `splat`, 0 elsewhere (exact: no
/// carries between bytes).
#[inline]
fn eq_bytes(w: u64, splat: u64) -> u64 {
    let x = w ^ splat;
    !(((x & LO7) + LO7) | x | LO7)
}

impl Bounds {
    pub(crate) fn new() -> Self {
        Self {
            at: [0; MAX_ELEMENTS],
            n: 0,
        }
    }

    /// Record the separators flagged (0x80 per byte) in `mask`, the word at `base`; false once
    /// [`MAX_ELEMENTS`] is reached (the last element then keeps the rest of the segment).
    #[inline]
    fn push_mask(&mut self, mut mask: u64, base: usize) -> bool {
        while mask != 0 {
            if self.n + 1 >= MAX_ELEMENTS {
                return false;
            }
            self.at[self.n] = (base + (mask.trailing_zeros() / 8) as usize) as u32;
            self.n += 1;
            mask &= mask - 1;
        }
        true
    }

    /// Close the list: the last element ends at `len`.
    #[inline]
    fn finish(&mut self, len: usize) {
        self.at[self.n] = len as u32;
        self.n += 1;
    }

    /// Find the element separators of `data`, eight bytes at a time (segments are short, and
    /// memchr's setup costs more than it saves here).
    fn find(&mut self, data: &[u8], element: u8) {
        self.n = 0;
        let splat = u64::from_ne_bytes([element; 8]);
        let mut chunks = data.chunks_exact(8);
        let mut base = 0usize;
        let mut room = true;
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            room = self.push_mask(eq_bytes(w, splat), base);
            if !room {
                break;
            }
            base += 8;
        }
        if room {
            for (i, &c) in chunks.remainder().iter().enumerate() {
                if c == element {
                    if self.n + 1 >= MAX_ELEMENTS {
                        break;
                    }
                    self.at[self.n] = (base + i) as u32;
                    self.n += 1;
                }
            }
        }
        self.finish(data.len());
    }
}

impl<'a> Seg<'a> {
    /// Split `data` into elements, using `ends` for the boundaries; `text` is `data` as text
    /// when the caller knows it (else it is checked here).
    pub(crate) fn split(
        data: &'a [u8],
        text: Option<&'a str>,
        d: &Delimiters,
        ends: &'a mut Bounds,
    ) -> Self {
        ends.find(data, d.element);
        Self::with_ends(data, text, d, ends)
    }

    /// A segment whose boundaries are already in `ends` (see [`Source::next_plain_split`]).
    pub(crate) fn with_ends(
        data: &'a [u8],
        text: Option<&'a str>,
        d: &Delimiters,
        ends: &'a Bounds,
    ) -> Self {
        let utf8 = match text {
            Some(t) => Some(t),
            None => std::str::from_utf8(data).ok(),
        };
        Self {
            data,
            utf8,
            ends,
            comp: d.component,
        }
    }

    /// The segment id (element 0).
    pub(crate) fn id(&self) -> &'a [u8] {
        self.el(0)
    }

    /// Element `i` (0 = id), empty if absent.
    #[inline]
    pub(crate) fn el(&self, i: usize) -> &'a [u8] {
        let e = self.ends;
        if i >= e.n {
            return &[];
        }
        let start = if i == 0 { 0 } else { e.at[i - 1] as usize + 1 };
        let end = e.at[i] as usize;
        self.data.get(start..end).unwrap_or(&[])
    }

    /// Number of elements after the id.
    pub(crate) fn len(&self) -> usize {
        self.ends.n - 1
    }

    /// Component `j` (0-based) of element `i`.
    #[cfg(test)]
    pub(crate) fn comp(&self, i: usize, j: usize) -> &'a [u8] {
        component(self.el(i), self.comp, j)
    }

    /// Element `i` as trimmed text, `None` if empty.
    #[inline]
    pub(crate) fn s(&self, i: usize) -> Option<Text> {
        self.text(self.el(i))
    }

    /// `part` (a slice of this segment's bytes, e.g. an element or a component) as trimmed
    /// text, `None` if empty. Slices the segment's text when it is UTF-8, without checking
    /// again; other bytes are converted lossily.
    #[inline]
    pub(crate) fn text(&self, part: &[u8]) -> Option<Text> {
        let t = part.trim_ascii();
        if t.is_empty() {
            return None;
        }
        Some(self.to_text(t))
    }

    /// `part` (a slice of this segment's bytes) as trimmed text, empty if blank.
    #[inline]
    pub(crate) fn lossy(&self, part: &[u8]) -> Text {
        self.to_text(part.trim_ascii())
    }

    #[inline]
    fn to_text(&self, t: &[u8]) -> Text {
        // Where `t` sits in `data` (any other slice falls back to a checked conversion).
        let off = (t.as_ptr() as usize).wrapping_sub(self.data.as_ptr() as usize);
        match self
            .utf8
            .filter(|_| off <= self.data.len() && t.len() <= self.data.len() - off)
            .and_then(|s| s.get(off..off + t.len()))
        {
            Some(s) => Text::new(s),
            None => to_text(t),
        }
    }
}

/// The segment id: the bytes before the first element separator.
#[inline]
pub(crate) fn seg_id(data: &[u8], element: u8) -> &[u8] {
    match data.iter().position(|&c| c == element) {
        Some(k) => &data[..k],
        None => data,
    }
}

/// Component `j` of a composite.
#[inline]
pub(crate) fn component(el: &[u8], sep: u8, j: usize) -> &[u8] {
    let mut rest = el;
    for _ in 0..j {
        match rest.iter().position(|&c| c == sep) {
            Some(k) => rest = &rest[k + 1..],
            None => return &[],
        }
    }
    match rest.iter().position(|&c| c == sep) {
        Some(k) => &rest[..k],
        None => rest,
    }
}

/// Bytes as text, invalid UTF-8 replaced (valid text, the usual case, is copied directly;
/// up to 24 bytes without a heap allocation).
pub(crate) fn to_text(b: &[u8]) -> Text {
    match std::str::from_utf8(b) {
        Ok(s) => Text::new(s),
        Err(_) => Text::from(String::from_utf8_lossy(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISA: &[u8] = b"ISA*00*          *01*SECRET    *ZZ*SUBMITTERS.ID  *ZZ*RECEIVERS.ID   *030101*1253*^*00501*000000905*1*T*:~";

    #[test]
    fn isa_delimiters() {
        let isa = parse_isa(ISA).unwrap();
        assert_eq!(isa.delims.element, b'*');
        assert_eq!(isa.delims.component, b':');
        assert_eq!(isa.delims.segment, b'~');
        assert_eq!(isa.delims.repetition, Some(b'^'));
        assert_eq!(isa.control, "000000905");
    }

    #[test]
    fn isa_u_is_not_repetition() {
        let mut v = ISA.to_vec();
        v[82] = b'U';
        assert_eq!(parse_isa(&v).unwrap().delims.repetition, None);
    }

    #[test]
    fn short_isa_rejected() {
        let mut v = ISA.to_vec();
        v.remove(10);
        assert!(matches!(parse_isa(&v), Err(IsaError::Envelope(_))));
        assert!(matches!(parse_isa(&ISA[..50]), Err(IsaError::Envelope(_))));
        assert!(matches!(
            parse_isa(b"I\0S\0A\0"),
            Err(IsaError::Encoding(_))
        ));
    }

    #[test]
    fn segments_across_chunks() {
        let mut data = Vec::new();
        for i in 0..50_000 {
            data.extend_from_slice(format!("AB*{i}~\r\n  ").as_bytes());
        }
        data.extend_from_slice(b"ZZ*last");
        let mut src = Source::new(&data[..]);
        let mut n = 0;
        let mut last = Vec::new();
        while let Some(s) = src.next_segment(b'~').unwrap() {
            n += 1;
            last = s.data.to_vec();
        }
        assert_eq!(n, 50_001);
        assert_eq!(last, b"ZZ*last");
    }

    /// Delimiters with `~` ending segments and no repetition separator.
    fn delims(element: u8, component: u8) -> Delimiters {
        Delimiters {
            element,
            component,
            repetition: None,
            segment: b'~',
        }
    }

    #[test]
    fn split_elements() {
        let d = delims(b'*', b':');
        let mut e = Bounds::new();
        let s = Seg::split(b"SV1*HC:99213:25*40**1", None, &d, &mut e);
        assert_eq!(s.id(), b"SV1");
        assert_eq!(s.comp(1, 1), b"99213");
        assert_eq!(s.comp(1, 2), b"25");
        assert_eq!(s.comp(1, 7), b"");
        assert_eq!(s.el(3), b"");
        assert_eq!(s.el(4), b"1");
        assert_eq!(s.el(40), b"");
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn split_many_elements_and_ids() {
        let d = delims(b'|', b'>');
        // More separators than MAX_ELEMENTS: the last element keeps the rest.
        let long: Vec<u8> = std::iter::once(&b"XX"[..])
            .chain(std::iter::repeat_n(&b"|a"[..], 40))
            .flatten()
            .copied()
            .collect();
        let mut e = Bounds::new();
        let s = Seg::split(&long, None, &d, &mut e);
        assert_eq!(s.len(), MAX_ELEMENTS - 1);
        assert_eq!(s.el(30), b"a");
        assert_eq!(s.el(31).len(), 2 * 40 - 2 * 30 - 1);
        assert_eq!(s.el(32), b"");
        // Separators at every offset of the 8-byte words.
        for n in 0..20 {
            let data: Vec<u8> = (0..n)
                .map(|i| if i % 3 == 2 { b'|' } else { b'x' })
                .collect();
            let mut e = Bounds::new();
            let s = Seg::split(&data, None, &d, &mut e);
            let want: Vec<&[u8]> = data.split(|&c| c == b'|').collect();
            assert_eq!(s.len() + 1, want.len(), "{n}");
            for (i, w) in want.iter().enumerate() {
                assert_eq!(s.el(i), *w, "{n} {i}");
            }
        }
        assert_eq!(seg_id(b"NM1|85", b'|'), b"NM1");
        assert_eq!(seg_id(b"IEA", b'|'), b"IEA");
        assert_eq!(component(b"HC>99213>25", b'>', 2), b"25");
        assert_eq!(component(b"", b'>', 0), b"");
        assert_eq!(component(b"HC", b'>', 1), b"");
    }

    #[test]
    fn element_text_from_the_segment_text() {
        let d = delims(b'*', b':');
        let data = "NM1*IL*1*MÜLLER * JOSÉ".as_bytes();
        // Text known (the buffer was UTF-8) or checked here: the same values.
        for text in [std::str::from_utf8(data).ok(), None] {
            let mut e = Bounds::new();
            let s = Seg::split(data, text, &d, &mut e);
            assert_eq!(s.s(3).as_deref(), Some("MÜLLER"));
            assert_eq!(s.s(4).as_deref(), Some("JOSÉ"));
            assert_eq!(s.s(5), None);
            assert_eq!(s.lossy(s.el(1)), "IL");
            // A slice from elsewhere is converted on its own.
            assert_eq!(s.text(b" X ").as_deref(), Some("X"));
        }
        let bad = b"NM1*IL*1*M\xFCLLER*JOS\xC3\x89";
        let mut e = Bounds::new();
        let s = Seg::split(bad, None, &d, &mut e);
        assert_eq!(s.s(3).as_deref(), Some("M\u{FFFD}LLER"));
        assert_eq!(s.s(4).as_deref(), Some("JOSÉ"));
    }

    #[test]
    fn one_pass_split_matches_split() {
        let d = delims(b'*', b':');
        // Segments of every length up to 80 bytes (separators at every offset of the 8-byte
        // words, more than MAX_ELEMENTS of them), with and without trailing whitespace.
        let mut data = Vec::new();
        let mut want = Vec::new();
        for len in 2..80usize {
            for pad in [&b""[..], b" \r\n"] {
                let seg: Vec<u8> = (0..len)
                    .map(|i| {
                        if i % (1 + len % 3) == 1 {
                            b'*'
                        } else {
                            b'A' + (i % 26) as u8
                        }
                    })
                    .collect();
                want.push(seg.clone());
                data.extend_from_slice(&seg);
                data.extend_from_slice(pad);
                data.push(b'~');
                data.extend_from_slice(b"\n");
            }
        }
        data.extend_from_slice(b"LAST*WITHOUT*TERMINATOR");
        let mut src = Source::new(&data[..]);
        // Fill the buffer (it holds the whole input).
        assert!(src.skip_ws().unwrap());
        let mut fast = Bounds::new();
        let mut slow = Bounds::new();
        for w in &want {
            let rs = src.next_plain_split(&d, &mut fast).expect("plain segment");
            assert_eq!(rs.data, &w[..]);
            let a = Seg::with_ends(rs.data, rs.text, &d, &fast);
            let b = Seg::split(w, None, &d, &mut slow);
            assert_eq!(a.len(), b.len(), "{:?}", String::from_utf8_lossy(w));
            for i in 0..=MAX_ELEMENTS {
                assert_eq!(
                    a.el(i),
                    b.el(i),
                    "{:?} element {i}",
                    String::from_utf8_lossy(w)
                );
            }
        }
        // No terminator in the buffer: the general path takes it, nothing consumed.
        let at = src.offset();
        assert!(src.next_plain_split(&d, &mut fast).is_none());
        assert_eq!(src.offset(), at);
        let last = src.next_segment(b'~').unwrap().expect("last segment");
        assert_eq!(last.data, b"LAST*WITHOUT*TERMINATOR");
    }
}
