//! The `resource` column of a row group, encoded without an Arrow array in between.
//!
//! The JSON documents are most of a table's bytes (about 8 KB a carrier claim). Through
//! `ArrowWriter` each was copied into a `StringArray` (to put the stamp of `meta` in), then
//! into the encoder's page buffer, which starts empty for every page and grows by doubling.
//! Here each document's pieces (its text around the stamp) go once into a page buffer that is
//! kept from page to page, and the pages are compressed with one zstd context per file.
//!
//! The pages are what parquet-rs writes for the column: data pages v2, PLAIN, ZSTD level 1 (or
//! stored uncompressed when zstd does not make them smaller), no statistics, with an offset
//! index; `tests` reads a file back through parquet-rs and checks its column chunk metadata
//! against `ArrowWriter`'s.

use bytes::Bytes;
use parquet::basic::{Compression, Encoding, EncodingMask, PageType, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ColumnChunkMetaData, OffsetIndexBuilder, PageEncodingStats};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// The zstd level of this column and of the other columns unique to a row
/// ([`super::unique_columns`]).
pub(super) const ZSTD_LEVEL: i32 = 1;

/// The codec of the columns unique to a row, this one among them: zstd at [`ZSTD_LEVEL`].
pub(super) fn compression() -> Compression {
    Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).unwrap_or_default())
}

/// A page is cut when its values reach this many bytes (parquet-rs's default page size)…
const PAGE_BYTES: usize = 1 << 20;

/// …or this many rows ([`super::writer_props`]'s data page row count limit).
const PAGE_ROWS: u32 = 256;

/// The `resource` column chunk of the row group being written.
pub(super) struct JsonColumn {
    descr: ColumnDescPtr,
    /// PLAIN values of the open page: each a 4-byte little-endian length, then the bytes.
    page: Vec<u8>,
    page_rows: u32,
    /// Compressed output of the last page (kept for its capacity).
    packed: Vec<u8>,
    /// The column chunk so far: page headers and pages.
    sink: TrackedWrite<Vec<u8>>,
    offsets: OffsetIndexBuilder,
    data_pages: i32,
    uncompressed_bytes: i64,
    compressed_bytes: i64,
    rows: u64,
}

/// One zstd context for all pages of a file.
pub(super) struct Zstd(zstd::bulk::Compressor<'static>);

impl Zstd {
    pub(super) fn new() -> Result<Self> {
        zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map(Self)
            .map_err(|e| ParquetError::External(Box::new(e)))
    }
}

impl JsonColumn {
    pub(super) fn new(descr: ColumnDescPtr) -> Self {
        Self {
            descr,
            page: Vec::with_capacity(PAGE_BYTES + (64 << 10)),
            page_rows: 0,
            packed: Vec::new(),
            sink: TrackedWrite::new(Vec::new()),
            offsets: OffsetIndexBuilder::new(),
            data_pages: 0,
            uncompressed_bytes: 0,
            compressed_bytes: 0,
            rows: 0,
        }
    }

    /// Append one document, given as pieces written one after the other.
    pub(super) fn push(&mut self, pieces: &[&str], zstd: &mut Zstd) -> Result<()> {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(|_| {
            ParquetError::General(format!("a resource of {len} bytes is too large"))
        })?;
        self.page.extend_from_slice(&len.to_le_bytes());
        for p in pieces {
            self.page.extend_from_slice(p.as_bytes());
        }
        self.page_rows += 1;
        if self.page.len() >= PAGE_BYTES || self.page_rows >= PAGE_ROWS {
            self.flush_page(zstd)?;
        }
        Ok(())
    }

    /// Write the open page, if it holds any value.
    fn flush_page(&mut self, zstd: &mut Zstd) -> Result<()> {
        if self.page_rows == 0 {
            return Ok(());
        }
        self.packed.clear();
        self.packed
            .reserve(zstd::zstd_safe::compress_bound(self.page.len()));
        let packed = zstd
            .0
            .compress_to_buffer(&self.page, &mut self.packed)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        // As parquet-rs does for a v2 page: keep it uncompressed unless zstd made it smaller.
        let is_compressed = packed < self.page.len();
        let body = if is_compressed {
            Bytes::copy_from_slice(&self.packed[..packed])
        } else {
            Bytes::copy_from_slice(&self.page)
        };
        let page = Page::DataPageV2 {
            buf: body,
            num_values: self.page_rows,
            encoding: Encoding::PLAIN,
            num_nulls: 0,
            num_rows: self.page_rows,
            def_levels_byte_len: 0,
            rep_levels_byte_len: 0,
            is_compressed,
            statistics: None,
        };
        let spec = SerializedPageWriter::new(&mut self.sink)
            .write_page(CompressedPage::new(page, self.page.len()))?;
        self.offsets
            .append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
        self.offsets.append_row_count(i64::from(self.page_rows));
        self.data_pages += 1;
        self.uncompressed_bytes += spec.uncompressed_size as i64;
        self.compressed_bytes += spec.compressed_size as i64;
        self.rows += u64::from(self.page_rows);
        self.page.clear();
        self.page_rows = 0;
        Ok(())
    }

    /// Close the column chunk: its bytes and what the row group writer needs to splice them.
    pub(super) fn close(mut self, zstd: &mut Zstd) -> Result<(Bytes, ColumnCloseResult)> {
        self.flush_page(zstd)?;
        let data = self.sink.into_inner()?;
        let metadata = ColumnChunkMetaData::builder(self.descr)
            .set_compression(compression())
            .set_encodings_mask(EncodingMask::new_from_encodings(
                [Encoding::PLAIN, Encoding::RLE].iter(),
            ))
            .set_page_encoding_stats(if self.data_pages > 0 {
                vec![PageEncodingStats {
                    page_type: PageType::DATA_PAGE_V2,
                    encoding: Encoding::PLAIN,
                    count: self.data_pages,
                }]
            } else {
                Vec::new()
            })
            .set_total_compressed_size(self.compressed_bytes)
            .set_total_uncompressed_size(self.uncompressed_bytes)
            .set_num_values(self.rows as i64)
            .set_data_page_offset(0)
            .build()?;
        let close = ColumnCloseResult {
            bytes_written: data.len() as u64,
            rows_written: self.rows,
            metadata,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(self.offsets.build()),
        };
        Ok((Bytes::from(data), close))
    }
}
