//! Splitting a delimited stream into records, the way the `csv` crate reads it with a
//! one-byte delimiter, an optional quote (doubled inside a quoted field), `\r`, `\n` or `\r\n`
//! ends of records, blank lines skipped and any number of fields per row.
//!
//! A record is found by looking for the end of its line with `memchr` and copied once. A line
//! with no quote byte (every line of an unquoted layout such as CMS RIF) is then cut at its
//! delimiters, found eight bytes at a time. A line with quotes is cut by the same scan of its
//! delimiters and quotes, a quoted field being the run between its quotes. Only a record whose
//! quoted field holds a line end goes through the byte-by-byte state machine. The file is read
//! straight into one buffer, with no layer of buffering in between.
//!
//! The `csv` crate is the oracle of the differential test below: the same records, fields and
//! positions for any bytes, read whole or in pieces of any size.

use std::io::{self, Read};
use std::ops::Range;

/// Bytes read from the file at a time; a record longer than this grows the buffer.
const READ_SIZE: usize = 1 << 20;

/// The longest record kept (a CMS RIF line is under 2 KB). A longer one (a file that is not
/// delimited text, a quote never closed) is read on without being kept, and comes back as
/// [`Record::is_oversized`], so that memory stays bounded whatever the input.
pub(crate) const MAX_RECORD: usize = 16 << 20;

/// The UTF-8 byte-order mark, skipped at the start of a stream (offsets count after it).
const BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

/// One record: a buffer of bytes and where each field is in it.
///
/// A field is a range of the buffer, which holds the record's line as read (delimiters and
/// quotes included) followed by the unescaped text of the few fields that need it (a doubled
/// quote, bytes after a closing quote, a quoted line end). Everything outside the fields is
/// ASCII, so one UTF-8 check over [`Record::as_slice`] checks every field.
#[derive(Debug, Default, Clone)]
pub(crate) struct Record {
    bytes: Vec<u8>,
    bounds: Vec<(usize, usize)>,
    oversized: bool,
}

impl Record {
    fn clear(&mut self) {
        self.bytes.clear();
        self.bounds.clear();
        self.oversized = false;
    }

    /// Whether the record was longer than [`MAX_RECORD`]: it was read past, and has no fields.
    pub(crate) fn is_oversized(&self) -> bool {
        self.oversized
    }

    fn drop_oversized(&mut self) {
        self.clear();
        self.oversized = true;
    }

    /// Number of fields.
    pub(crate) fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Where field `i` is in [`Record::as_slice`].
    pub(crate) fn range(&self, i: usize) -> Option<Range<usize>> {
        self.bounds.get(i).map(|&(start, end)| start..end)
    }

    /// Field `i`'s bytes.
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        self.range(i).map(|r| &self.bytes[r])
    }

    /// The fields in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.bounds
            .iter()
            .map(|&(start, end)| &self.bytes[start..end])
    }

    /// The buffer every field is a part of.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// End the last field of a record of `len` bytes (as read), or drop the record when it is
    /// longer than `max`.
    fn end_last_field(&mut self, start: usize, len: usize, max: usize) {
        if len > max {
            self.drop_oversized();
        } else {
            self.end_field(start);
        }
    }

    /// End a field that started at `start` at the end of the buffer.
    fn end_field(&mut self, start: usize) {
        self.bounds.push((start, self.bytes.len()));
    }
}

/// Where a record starts, as the `csv` crate reports it: the line (1-based, counting `\n`
/// bytes) and byte offset the reader was at when it started reading the record, that is,
/// right after the previous record and its line end (blank lines in between are not skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: u64,
    pub(crate) byte: u64,
}

/// Reads records from a delimited stream.
pub(crate) struct Splitter<R> {
    rdr: R,
    /// Bytes asked of the stream at a time, at least.
    read_size: usize,
    /// The longest record kept ([`MAX_RECORD`]).
    max_record: usize,
    buf: Vec<u8>,
    /// The unread bytes are `buf[at..len]`.
    at: usize,
    len: usize,
    eof: bool,
    bom_checked: bool,
    /// Stream offset and line of `buf[at]`.
    byte: u64,
    line: u64,
    delimiter: u8,
    quote: Option<u8>,
    /// Delimiter and quote positions of a quoted line, kept for their memory.
    scratch: (Vec<usize>, Vec<usize>),
}

impl<R: Read> Splitter<R> {
    /// A splitter with this delimiter and, for quoted layouts, quote byte.
    pub(crate) fn new(rdr: R, delimiter: u8, quote: Option<u8>) -> Self {
        Self::with_read_size(rdr, delimiter, quote, READ_SIZE)
    }

    /// A splitter that asks the stream for `read_size` bytes at a time.
    pub(crate) fn with_read_size(
        rdr: R,
        delimiter: u8,
        quote: Option<u8>,
        read_size: usize,
    ) -> Self {
        Self {
            rdr,
            read_size,
            max_record: MAX_RECORD,
            buf: vec![0; read_size],
            at: 0,
            len: 0,
            eof: false,
            bom_checked: false,
            byte: 0,
            line: 1,
            delimiter,
            quote,
            scratch: Default::default(),
        }
    }

    /// The offset just past what has been read (the stream's size once it is all read).
    pub(crate) fn position(&self) -> Pos {
        Pos {
            line: self.line,
            byte: self.byte,
        }
    }

    /// Read more bytes after the unread ones, which move to the front of the buffer; false when
    /// the input has no more.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.at > 0 {
            self.buf.copy_within(self.at..self.len, 0);
            self.len -= self.at;
            self.at = 0;
        }
        let before = self.len;
        loop {
            if self.buf.len() - self.len < self.read_size / 2 + 1 {
                let grow = self.read_size.max(self.buf.len() / 2);
                self.buf.resize(self.buf.len() + grow, 0);
            }
            match self.rdr.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if !self.bom_checked {
                // The mark may arrive over several reads: decide once it is whole or cannot be.
                let head = &self.buf[..self.len];
                if head.len() < BOM.len() && BOM.starts_with(head) && !self.eof {
                    continue;
                }
                self.bom_checked = true;
                if head.starts_with(BOM) {
                    self.at = BOM.len();
                }
            }
            return Ok(self.len > before);
        }
    }

    /// Consume `n` unread bytes.
    fn consume(&mut self, n: usize) {
        let taken = &self.buf[self.at..self.at + n];
        self.line += memchr::memchr_iter(b'\n', taken).count() as u64;
        self.byte += n as u64;
        self.at += n;
    }

    /// Read the next record into `rec`; `None` at the end of the stream.
    ///
    /// # Errors
    /// When reading the stream fails.
    pub(crate) fn read_record(&mut self, rec: &mut Record) -> io::Result<Option<Pos>> {
        rec.clear();
        let pos = self.position();
        // Blank lines before the record.
        loop {
            let skip = self.buf[self.at..self.len]
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
            self.consume(skip);
            if self.at < self.len {
                break;
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
        // The whole line, up to its end (or the end of the stream).
        let mut scanned = 0;
        let line_len = loop {
            let rest = &self.buf[self.at + scanned..self.len];
            if let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
                break scanned + i;
            }
            scanned = self.len - self.at;
            if scanned > self.max_record {
                return self.read_past(rec, pos);
            }
            if !self.fill()? {
                break scanned;
            }
        };
        if line_len > self.max_record {
            // Found whole, but too long to keep all the same.
            return self.read_past(rec, pos);
        }
        let line = &self.buf[self.at..self.at + line_len];
        if let Some(q) = self.quote.filter(|&q| memchr::memchr(q, line).is_some()) {
            if !quoted_line(line, self.delimiter, q, rec, &mut self.scratch) {
                // A quoted field goes on past the line's end.
                rec.clear();
                return self.read_quoted(rec, pos, q);
            }
            self.end_line(line_len)?;
            return Ok(Some(pos));
        }
        rec.bytes.extend_from_slice(line);
        let mut start = 0;
        for_each_position(line, self.delimiter, |at| {
            rec.bounds.push((start, at));
            start = at + 1;
        });
        rec.bounds.push((start, line_len));
        self.end_line(line_len)?;
        Ok(Some(pos))
    }

    /// Consume a line of `len` bytes (it holds no `\n`: no lines to count) and its end.
    fn end_line(&mut self, len: usize) -> io::Result<()> {
        self.at += len;
        self.byte += len as u64;
        self.end_of_record()
    }

    /// A record longer than `max_record`: read on to its end, keeping nothing. An unquoted
    /// one ends with its line; a quoted one where the quoting rules say.
    fn read_past(&mut self, rec: &mut Record, pos: Pos) -> io::Result<Option<Pos>> {
        if let Some(q) = self.quote {
            return self.read_quoted(rec, pos, q);
        }
        self.skip_line()?;
        rec.drop_oversized();
        self.end_of_record()?;
        Ok(Some(pos))
    }

    /// Read on to the end of the line without keeping it (the line holds no `\n` or `\r`
    /// before its end, so no lines are counted).
    fn skip_line(&mut self) -> io::Result<()> {
        loop {
            let rest = &self.buf[self.at..self.len];
            if let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
                self.at += i;
                self.byte += i as u64;
                return Ok(());
            }
            self.byte += rest.len() as u64;
            self.at = self.len;
            if !self.fill()? {
                return Ok(());
            }
        }
    }

    /// After a record's last field: consume the byte that ends its line (`\n` or `\r`). The
    /// `\n` of a `\r\n` is left for the next record to skip, as `csv` does, so the next
    /// record's position is that of the `\n`.
    fn end_of_record(&mut self) -> io::Result<()> {
        if self.at == self.len && !self.fill()? {
            return Ok(());
        }
        if matches!(self.buf[self.at], b'\n' | b'\r') {
            self.consume(1);
        }
        Ok(())
    }

    /// A record with a quote in its first line, byte by byte. Quoted fields may hold
    /// delimiters, quotes (doubled) and line ends; a quote that closes a field and is followed
    /// by more bytes leaves them in the field, as `csv` does.
    fn read_quoted(&mut self, rec: &mut Record, pos: Pos, q: u8) -> io::Result<Option<Pos>> {
        #[derive(Clone, Copy, PartialEq)]
        enum St {
            FieldStart,
            Unquoted,
            Quoted,
            /// A quote inside a quoted field: doubled, or the field's closing quote.
            QuoteInQuoted,
        }
        let d = self.delimiter;
        let mut st = St::FieldStart;
        let mut start = 0;
        let mut i = self.at;
        // Past `max_record` bytes the record is read on (to know where it ends) but not kept.
        let mut keep = true;
        loop {
            if i == self.len {
                // The record's bytes seen so far stay while it is kept: `fill` moves them to
                // the front. Once it is not, they go.
                if keep && i - self.at > self.max_record {
                    keep = false;
                    rec.drop_oversized();
                }
                if !keep {
                    self.consume(i - self.at);
                }
                let done = i - self.at;
                if !self.fill()? {
                    if keep {
                        rec.end_last_field(start, done, self.max_record);
                    }
                    self.consume(done);
                    return Ok(Some(pos));
                }
                i = self.at + done;
            }
            let b = self.buf[i];
            match st {
                St::FieldStart | St::Unquoted | St::QuoteInQuoted if b == d => {
                    if keep {
                        rec.end_field(start);
                        start = rec.bytes.len();
                    }
                    st = St::FieldStart;
                }
                St::FieldStart | St::Unquoted | St::QuoteInQuoted if b == b'\n' || b == b'\r' => {
                    if keep {
                        rec.end_last_field(start, i - self.at, self.max_record);
                    }
                    self.consume(i - self.at);
                    self.end_of_record()?;
                    return Ok(Some(pos));
                }
                St::FieldStart if b == q => st = St::Quoted,
                St::Quoted if b == q => st = St::QuoteInQuoted,
                St::QuoteInQuoted if b == q => {
                    if keep {
                        rec.bytes.push(q);
                    }
                    st = St::Quoted;
                }
                St::Quoted => {
                    if keep {
                        rec.bytes.push(b);
                    }
                }
                St::FieldStart | St::Unquoted | St::QuoteInQuoted => {
                    if keep {
                        rec.bytes.push(b);
                    }
                    st = St::Unquoted;
                }
            }
            i += 1;
        }
    }
}

/// Read a line with a quote in it into `rec`, when no quoted field goes on past its end
/// (returns false, with `rec` partly filled, when one does).
///
/// The same rules as the byte-by-byte [`Splitter::read_quoted`], a run of bytes at a time: an
/// unquoted field runs to the next delimiter (a quote inside it is a byte like any other); a
/// quoted one to its closing quote, a doubled quote standing for one, and any bytes after the
/// closing quote up to the next delimiter belong to the field too. The line is copied once; a
/// quoted field is the part of it between its quotes, unless it holds a doubled quote or
/// bytes after its closing quote: then its text is put together after the line.
fn quoted_line(
    line: &[u8],
    d: u8,
    q: u8,
    rec: &mut Record,
    (delims, quotes): &mut (Vec<usize>, Vec<usize>),
) -> bool {
    delims.clear();
    quotes.clear();
    for_each_position(line, d, |at| delims.push(at));
    delims.push(line.len());
    for_each_position(line, q, |at| quotes.push(at));
    rec.bytes.extend_from_slice(line);
    // The first position at or after `i`; `at` only moves forward.
    let next = |positions: &[usize], at: &mut usize, i: usize| -> Option<usize> {
        while *at < positions.len() && positions[*at] < i {
            *at += 1;
        }
        positions.get(*at).copied()
    };
    let (mut di, mut qi) = (0, 0);
    let mut i = 0;
    loop {
        let end;
        if line.get(i) == Some(&q) {
            // Where the quoted part ends, and whether it reads as one run of the line.
            let Some(close) = next(quotes, &mut qi, i + 1) else {
                return false;
            };
            let after = close + 1;
            if after == line.len() || line[after] == d {
                rec.bounds.push((i + 1, close));
                end = after;
            } else {
                let start = rec.bytes.len();
                let mut j = i + 1;
                let mut k = close;
                loop {
                    rec.bytes.extend_from_slice(&line[j..k]);
                    if line.get(k + 1) != Some(&q) {
                        break;
                    }
                    rec.bytes.push(q);
                    j = k + 2;
                    let Some(n) = next(quotes, &mut qi, j) else {
                        return false;
                    };
                    k = n;
                }
                end = next(delims, &mut di, k + 1).unwrap_or(line.len());
                rec.bytes.extend_from_slice(&line[k + 1..end]);
                rec.end_field(start);
                // The line's copy of the field is no field's now: blank it, so that it cannot
                // fail the record's UTF-8 check (a quote removed can join a character).
                rec.bytes[i..end].fill(b' ');
            }
        } else {
            end = next(delims, &mut di, i).unwrap_or(line.len());
            rec.bounds.push((i, end));
        }
        if end >= line.len() {
            return true;
        }
        i = end + 1;
    }
}

/// Call `f` with the position of every `d` in `bytes`, in order.
///
/// Delimiters are dense in wide extracts (a CMS RIF line has a hundred fields in a few hundred
/// bytes, many empty), so one `memchr` call per delimiter costs more than its search saves.
/// This looks at eight bytes at a time instead: a word with no `d` costs a few operations,
/// and each `d` found costs one `trailing_zeros`.
fn for_each_position(bytes: &[u8], d: u8, mut f: impl FnMut(usize)) {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let pattern = u64::from_ne_bytes([d; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
        let x = word ^ pattern;
        // The high bit of each byte of `x` that is zero, exactly (no carries between bytes).
        let mut hits = !(((x & LOW7) + LOW7) | x | LOW7);
        while hits != 0 {
            f(base + (hits.trailing_zeros() / 8) as usize);
            hits &= hits - 1;
        }
        base += 8;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if b == d {
            f(base + i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes in pieces of the given sizes, in turn.
    struct Pieces<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        turn: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let size = self.sizes[self.turn % self.sizes.len()].max(1);
            self.turn += 1;
            let n = size.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    type Rows = (Vec<(Vec<Vec<u8>>, u64, u64)>, u64);

    /// What `csv` reads (fields, line, byte of each record; bytes read in all).
    fn oracle(data: &[u8], delimiter: u8, quote: Option<u8>) -> Rows {
        let mut b = csv::ReaderBuilder::new();
        b.delimiter(delimiter).has_headers(false).flexible(true);
        match quote {
            Some(q) => b.quote(q),
            None => b.quoting(false),
        };
        let data = data.strip_prefix(BOM).unwrap_or(data);
        let mut rdr = b.from_reader(data);
        let mut rec = csv::ByteRecord::new();
        let mut out = Vec::new();
        loop {
            let pos = rdr.position().clone();
            if !rdr.read_byte_record(&mut rec).expect("in memory") {
                break;
            }
            let fields = rec.iter().map(<[u8]>::to_vec).collect();
            out.push((fields, pos.line(), pos.byte()));
        }
        (out, rdr.position().byte())
    }

    /// What the splitter reads, from `data` handed out in pieces of `sizes`, with a buffer of
    /// `sizes[0] * 2` bytes to start with (so that it is moved and grown).
    fn ours(data: &[u8], sizes: Vec<usize>, delimiter: u8, quote: Option<u8>) -> Rows {
        let read_size = sizes[0] * 2;
        let rdr = Pieces {
            data,
            sizes,
            turn: 0,
        };
        let mut s = Splitter::with_read_size(rdr, delimiter, quote, read_size);
        let mut rec = Record::default();
        let mut out = Vec::new();
        while let Some(pos) = s.read_record(&mut rec).expect("in memory") {
            let fields = rec.iter().map(<[u8]>::to_vec).collect();
            out.push((fields, pos.line, pos.byte));
            let all = rec.as_slice();
            for i in 0..rec.len() {
                assert_eq!(rec.get(i), all.get(rec.range(i).unwrap()));
            }
            // One check over the buffer says what checking each field would.
            assert_eq!(
                std::str::from_utf8(all).is_ok(),
                rec.iter().all(|f| std::str::from_utf8(f).is_ok()),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
        (out, s.position().byte)
    }

    #[test]
    fn examples() {
        let data = b"a|b||\r\n\n\nc|\"d|e\"\rf\n";
        let (rows, bytes) = ours(data, vec![1 << 20], b'|', None);
        assert_eq!(rows, oracle(data, b'|', None).0);
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(
            rows[1].0,
            vec![b"c".to_vec(), b"\"d".to_vec(), b"e\"".to_vec()]
        );
        // The `\n` of `\r\n` belongs to the next record's blank lines.
        assert_eq!((rows[1].1, rows[1].2), (1, 6));
        let quoted = b"x,\"a,\"\"b\"\"\nc\",\"q\"z,\r\n";
        let (rows, _) = ours(quoted, vec![3], b',', Some(b'"'));
        assert_eq!(rows, oracle(quoted, b',', Some(b'"')).0);
        assert_eq!(rows[0].0[1], b"a,\"b\"\nc".to_vec());
        assert_eq!(rows[0].0[2], b"qz".to_vec());
    }

    #[test]
    fn positions_of_a_byte() {
        let mut rng = crate::synth::Rng::new(3);
        for _ in 0..2_000 {
            let n = rng.below(40) as usize;
            let bytes: Vec<u8> = (0..n)
                .map(|_| [b'|', b'a', 0x7C ^ 0x80, 0xFF, 0][rng.below(5) as usize])
                .collect();
            let mut got = Vec::new();
            for_each_position(&bytes, b'|', |at| got.push(at));
            let want: Vec<usize> = (0..n).filter(|&i| bytes[i] == b'|').collect();
            assert_eq!(got, want, "{bytes:?}");
        }
    }

    #[test]
    fn a_character_split_by_a_closing_quote_is_whole_once_the_quote_is_gone() {
        // `"`, the first byte of `é`, `"`, its second byte: the field is `é`.
        let split = b"\"\xC3\"\xA9,b\n".to_vec();
        assert_eq!(
            oracle(&split, b',', Some(b'"')).0[0].0[0],
            "\u{e9}".as_bytes()
        );
        let (rows, _) = ours(&split, vec![64], b',', Some(b'"'));
        assert_eq!(rows[0].0[0], "\u{e9}".as_bytes());
        let mut rdr = Splitter::new(&split[..], b',', Some(b'"'));
        let mut rec = Record::default();
        rdr.read_record(&mut rec).unwrap();
        assert!(std::str::from_utf8(rec.as_slice()).is_ok());
    }

    /// A record longer than the cap is read past, not kept: the records around it, their
    /// fields and positions are csv's, and the buffer stays small.
    #[test]
    fn an_oversized_record_is_read_past() {
        let long = "x".repeat(5_000);
        // Read in small pieces (the record is found to be long as it comes) and in large ones
        // (it is found whole).
        for (read_size, sizes) in [(64, vec![7, 300]), (1 << 16, vec![1 << 16])] {
            for quote in [None, Some(b'"')] {
                for (middle, closed) in [
                    (format!("a|{long}|b"), true),
                    (format!("\"{long}\n{long}\"|b"), true),
                    (format!("\"{long}"), false),
                ] {
                    let data = format!("h|1\r\n{middle}\nz|2\n");
                    let want = oracle(data.as_bytes(), b'|', quote).0;
                    let rdr = Pieces {
                        data: data.as_bytes(),
                        sizes: sizes.clone(),
                        turn: 0,
                    };
                    let mut s = Splitter::with_read_size(rdr, b'|', quote, read_size);
                    s.max_record = 1_000;
                    let mut rec = Record::default();
                    let mut got = Vec::new();
                    while let Some(pos) = s.read_record(&mut rec).unwrap() {
                        let fields: Vec<Vec<u8>> = rec.iter().map(<[u8]>::to_vec).collect();
                        got.push((rec.is_oversized(), fields, pos.line, pos.byte));
                    }
                    if read_size == 64 {
                        assert!(s.buf.len() < 4_000, "buffer grew to {}", s.buf.len());
                    }
                    assert_eq!(got.len(), want.len(), "{quote:?} {closed}");
                    for (g, w) in got.iter().zip(&want) {
                        let oversized = w.0.iter().map(Vec::len).sum::<usize>() > 1_000;
                        assert_eq!(g.0, oversized, "{quote:?} {closed} {read_size}");
                        if !oversized {
                            assert_eq!(g.1, w.0);
                        }
                        assert_eq!((g.2, g.3), (w.1, w.2));
                    }
                    if quote.is_some() && !closed {
                        // The quote never closes: the rest of the file is that one record.
                        assert_eq!(got.len(), 2);
                    }
                }
            }
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_not_counted() {
        let data = b"\xEF\xBB\xBFa|b\nc\n";
        let (rows, bytes) = ours(data, vec![1], b'|', None);
        assert_eq!(rows[0].0, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!((rows[1].1, rows[1].2), (2, 4));
        assert_eq!(bytes, 6);
    }

    /// Random inputs of the bytes that matter, read whole and in small pieces: the same
    /// records, fields and positions as `csv`, quoted and not.
    #[test]
    fn reads_what_csv_reads() {
        const ALPHABET: &[u8] = b"ab|,\"\n\r \xC3\xEF";
        let mut rng = crate::synth::Rng::new(7);
        for case in 0..20_000 {
            let mut data = if rng.below(4) == 0 {
                BOM.to_vec()
            } else {
                Vec::new()
            };
            let n = if case % 10 == 0 {
                rng.below(3000)
            } else {
                rng.below(120)
            } as usize;
            data.extend((0..n).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize]));
            let sizes: Vec<usize> = (0..1 + rng.below(3))
                .map(|_| 1 + rng.below(8) as usize)
                .collect();
            let delimiter = if rng.below(2) == 0 { b',' } else { b'|' };
            let quote = (rng.below(2) == 0).then_some(b'"');
            assert_eq!(
                ours(&data, sizes.clone(), delimiter, quote),
                oracle(&data, delimiter, quote),
                "case {case}: {:?} in pieces of {sizes:?}, quote {quote:?}",
                String::from_utf8_lossy(&data)
            );
            assert_eq!(
                ours(&data, vec![READ_SIZE], delimiter, quote),
                oracle(&data, delimiter, quote)
            );
        }
    }
}
