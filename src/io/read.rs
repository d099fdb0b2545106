//! Streaming Parquet reader: only the id, label and embedding columns, batch by batch.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, GenericListArray, OffsetSizeTrait,
    PrimitiveArray, UInt64Array,
};
use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::compute::concat;
use arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::kept::KeptRows;
use super::paths::resolve_inputs;
use super::table::{SourceFile, Table, check_no_nulls, first_null};
use super::vectors::VectorSink;
use crate::config::ColumnNames;
use crate::error::{Error, Result, contain_panics};

/// How a table is read beyond its columns.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Spill the vectors to a scratch file when they would take more than half of this.
    pub memory_limit: Option<u64>,
    /// Folder of the scratch file (default: the system's temporary folder).
    pub scratch_dir: Option<PathBuf>,
    /// L2-normalise rows as they are read when they spill (for cosine).
    pub normalize_if_spilled: bool,
    /// Check and count the vectors, but keep none (the table's vectors are then empty):
    /// for what describes a table without mining it.
    pub discard_vectors: bool,
    /// Rows an incremental state kept: the first inputs' rows, taken from the state instead of
    /// their files (which are not read again; the inputs after them are read).
    pub kept: Option<KeptRows>,
}

/// Opens a Parquet input for reading, after checking what its footer claims against the file:
/// a corrupt footer is a bad-data error naming the file, never a panic or an allocation sized
/// from its numbers. Also gives the file's length in bytes.
pub(crate) fn open_parquet(path: &Path) -> Result<(ParquetRecordBatchReaderBuilder<File>, u64)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::bad_parquet(path, e))?;
    check_footer(path, builder.metadata(), len)?;
    Ok((builder, len))
}

/// The batches of the columns `names` of a Parquet input (checked as [`open_parquet`] does),
/// `batch_size` rows at a time; a missing column is an error listing those present. Errors
/// while decoding a batch are bad data naming the file.
pub(crate) fn read_columns<'a>(
    path: &'a Path,
    names: &[&str],
    batch_size: usize,
) -> Result<impl Iterator<Item = Result<arrow::array::RecordBatch>> + 'a> {
    let (builder, _) = open_parquet(path)?;
    let schema = builder.schema().clone();
    let roots = names
        .iter()
        .map(|name| {
            schema
                .index_of(name)
                .map_err(|_| Error::missing_column(path, *name, &schema))
        })
        .collect::<Result<Vec<usize>>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(batch_size)
        .build()
        .map_err(|e| Error::bad_parquet(path, e))?;
    Ok(reader.map(move |b| b.map_err(|e| Error::bad_parquet(path, e))))
}

fn check_footer(
    path: &Path,
    meta: &parquet::file::metadata::ParquetMetaData,
    file_len: u64,
) -> Result<()> {
    let bad = |reason: String| Error::corrupt(path, reason);
    let declared = meta.file_metadata().num_rows();
    if declared < 0 {
        return Err(bad(format!("the footer declares {declared} rows")));
    }
    let mut in_groups = 0i64;
    for (g, group) in meta.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(bad(format!(
                "row group {g} declares {} rows",
                group.num_rows()
            )));
        }
        in_groups = in_groups.saturating_add(group.num_rows());
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or_else(|| column.data_page_offset());
            let size = column.compressed_size();
            let end = start.checked_add(size);
            if start < 0 || size < 0 || end.is_none_or(|e| e as u64 > file_len) {
                return Err(bad(format!(
                    "column `{}` of row group {g} claims bytes {start}..{} of a {file_len}-byte file",
                    column.column_path(),
                    start.saturating_add(size)
                )));
            }
        }
    }
    if in_groups != declared {
        return Err(bad(format!(
            "the footer declares {declared} rows but its row groups hold {in_groups}"
        )));
    }
    Ok(())
}

/// Vector values worth reserving room for: what the footers declare, but never more values
/// than the files have bytes, so a lying footer cannot make the reader ask for terabytes
/// (the buffer still grows as batches arrive).
fn reservation(rows: u64, dim: usize, file_bytes: u64) -> usize {
    rows.saturating_mul(dim as u64).min(file_bytes) as usize
}

/// Reads the three columns of every input file into a [`Table`], batch by batch.
pub fn read_table(specs: &[PathBuf], columns: &ColumnNames) -> Result<Table> {
    read_table_with(specs, columns, &ReadOptions::default())
}

/// [`read_table`] with a memory limit: vectors that would take more than half of it go to a
/// memory-mapped scratch file instead of the heap.
pub fn read_table_with(
    specs: &[PathBuf],
    columns: &ColumnNames,
    options: &ReadOptions,
) -> Result<Table> {
    let files = resolve_inputs(specs)?;
    let mut reader = TableReader::new(columns);
    let kept = options.kept.as_ref().filter(|_| !options.discard_vectors);
    let read_from = kept.map_or(0, |k| k.facts.table.sources.len());
    if let Some(kept) = kept
        && (read_from > files.len()
            || kept.facts.with != columns.extra
            || kept
                .facts
                .table
                .sources
                .iter()
                .zip(&files)
                .any(|((p, _), f)| p != f))
    {
        return Err(Error::Config(format!(
            "the rows kept in {} are not the first inputs' with these columns",
            kept.dir.display()
        )));
    }
    if options.discard_vectors {
        reader.vectors = VectorSink::Discard(0);
    } else if let Some(limit) = options.memory_limit {
        // Row counts from the footers, to size the vectors before reading them, and the
        // `--with` columns' decoded sizes, which stay in memory.
        let (mut rows, mut bytes, mut extra) = (0u64, 0u64, 0u64);
        if let Some(kept) = kept {
            rows = kept.facts.table.rows as u64;
            bytes = rows * kept.facts.table.dim as u64 * 4;
            if !kept.facts.with.is_empty() {
                extra = kept.columns_bytes();
            }
        }
        for path in &files[read_from..] {
            let (declared, len, with) = contain_panics(path, || {
                let (meta, len) = open_parquet(path)?;
                let meta = meta.metadata();
                Ok((
                    meta.file_metadata().num_rows().max(0) as u64,
                    len,
                    columns_bytes(meta, &columns.extra),
                ))
            })?;
            rows = rows.saturating_add(declared);
            bytes = bytes.saturating_add(len);
            extra = extra.saturating_add(with);
        }
        let mut plan = SpillPlan::new(options, limit, Some(rows), bytes);
        plan.extra_bytes = extra;
        reader.spill = Some(plan);
    }
    if let Some(kept) = kept {
        reader.take_kept(&files[0], kept)?;
    }
    for file in &files[read_from..] {
        reader.read_file(file)?;
    }
    reader.finish(&files[0])
}

/// The uncompressed bytes the footer declares for the columns `names` (whole top-level
/// columns, every row group): about what they hold once decoded into Arrow arrays.
fn columns_bytes(meta: &parquet::file::metadata::ParquetMetaData, names: &[String]) -> u64 {
    let mut total = 0u64;
    for group in meta.row_groups() {
        for chunk in group.columns() {
            let top = chunk.column_path().parts().first();
            if top.is_some_and(|top| names.iter().any(|n| n == top)) {
                total = total.saturating_add(chunk.uncompressed_size().max(0) as u64);
            }
        }
    }
    total
}

/// When and where vectors spill.
struct SpillPlan {
    /// Rows the footers declare (or the host gives); unknown: the vectors spill.
    rows: Option<u64>,
    /// Bytes of the files.
    bytes: u64,
    /// Bytes the `--with` columns need in memory (from the footers; 0 when unknown).
    extra_bytes: u64,
    limit: u64,
    dir: PathBuf,
    normalize: bool,
}

/// Where the columns are in an input's schema.
struct FoundColumns {
    id: Option<usize>,
    label: Option<usize>,
    embedding: usize,
    extra: Vec<usize>,
}

/// Rows handed over as Arrow record batches instead of files: a host's table in memory (the
/// Python package passes any Arrow stream: a pyarrow Table, a polars frame, ...).
pub struct BatchSource {
    /// How messages name the input where they would name a file (e.g. `<pyarrow.Table>`).
    pub name: PathBuf,
    pub reader: Box<dyn RecordBatchReader + Send>,
    /// Rows, when the host knows them: sizes the vectors and, under a memory limit, decides
    /// whether they spill (unknown: they spill).
    pub rows: Option<u64>,
}

impl std::fmt::Debug for BatchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSource")
            .field("name", &self.name)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// Reads the rows of `source` into a [`Table`], as [`read_table_with`] reads files.
pub fn read_table_from_batches(
    source: BatchSource,
    columns: &ColumnNames,
    options: &ReadOptions,
) -> Result<Table> {
    let name = source.name.clone();
    let mut reader = TableReader::new(columns);
    if let Some(limit) = options.memory_limit {
        reader.spill = Some(SpillPlan::new(options, limit, source.rows, u64::MAX));
    }
    contain_panics(&name, || reader.read_stream(source))?;
    reader.finish(&name)
}

impl SpillPlan {
    fn new(options: &ReadOptions, limit: u64, rows: Option<u64>, bytes: u64) -> Self {
        SpillPlan {
            rows,
            bytes,
            extra_bytes: 0,
            limit,
            dir: options
                .scratch_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            normalize: options.normalize_if_spilled,
        }
    }
}

/// Accumulates rows across files, checking types and values as they stream by.
struct TableReader<'a> {
    columns: &'a ColumnNames,
    ids: Vec<ArrayRef>,
    labels: Vec<ArrayRef>,
    /// Parts of every extra column, in `columns.extra` order.
    extra: Vec<Vec<ArrayRef>>,
    vectors: VectorSink,
    spill: Option<SpillPlan>,
    normalized: bool,
    /// One row being normalised.
    row_buf: Vec<f32>,
    /// Dimension and where it was first seen.
    dim: Option<(usize, PathBuf, u64)>,
    /// Id, label and extra column types of the first file; later files must match.
    types: Option<Vec<Option<DataType>>>,
    sources: Vec<SourceFile>,
    rows: u64,
}

impl<'a> TableReader<'a> {
    fn new(columns: &'a ColumnNames) -> Self {
        TableReader {
            columns,
            ids: Vec::new(),
            labels: Vec::new(),
            extra: vec![Vec::new(); columns.extra.len()],
            vectors: VectorSink::heap(),
            spill: None,
            normalized: false,
            row_buf: Vec::new(),
            dim: None,
            types: None,
            sources: Vec::new(),
            rows: 0,
        }
    }

    /// Reads one file's rows; whatever the file holds, the outcome is its rows or an error
    /// naming it (a panic in the Parquet reader is contained).
    fn read_file(&mut self, path: &Path) -> Result<()> {
        contain_panics(path, || self.read_file_unguarded(path))
    }

    fn read_file_unguarded(&mut self, path: &Path) -> Result<()> {
        let (builder, file_len) = open_parquet(path)?;
        let schema = builder.schema().clone();
        let found = self.check_schema(path, &schema)?;
        let mut roots: Vec<usize> = [found.id, found.label, Some(found.embedding)]
            .into_iter()
            .flatten()
            .chain(found.extra.iter().copied())
            .collect();
        roots.sort_unstable();
        roots.dedup();
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let file_rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        let reader = builder
            .with_projection(mask)
            .with_batch_size(8192)
            .build()
            .map_err(|e| Error::bad_parquet(path, e))?;
        let batches = reader.map(|b| b.map_err(|e| Error::bad_parquet(path, e)));
        let read = self.read_batches(
            path,
            &schema,
            found.id.is_some(),
            batches,
            (file_rows, file_len),
        )?;
        if read != file_rows {
            return Err(Error::corrupt(
                path,
                format!("its footer declares {file_rows} rows but it holds {read}"),
            ));
        }
        Ok(())
    }

    /// Takes the rows a state kept as the first inputs' rows, as reading their files would
    /// have given them: the column types of the first input (from its footer, which the state
    /// compared), ids, labels and `--with` columns, and the vectors streamed into the sink
    /// (normalised as the new rows will be).
    fn take_kept(&mut self, first_file: &Path, kept: &KeptRows) -> Result<()> {
        let (builder, _) = open_parquet(first_file)?;
        let schema = builder.schema().clone();
        self.check_schema(first_file, &schema)?;
        let facts = &kept.facts.table;
        let labelled = self.columns.label.is_some();
        let columns = kept.columns(labelled)?;
        self.ids.push(columns.ids);
        self.labels.extend(columns.labels);
        for (parts, column) in self.extra.iter_mut().zip(columns.extra) {
            parts.push(column);
        }
        let dim = facts.dim;
        self.dim = Some((dim, first_file.into(), 0));
        let declared = self
            .spill
            .as_ref()
            .and_then(|p| p.rows)
            .unwrap_or(facts.rows as u64);
        self.start_vectors(dim, declared, u64::MAX)?;
        // Normalised rows stay as they are (normalising again could move a bit); raw rows are
        // normalised here when the new rows will be.
        let normalize_kept = self.normalized && !facts.normalized;
        self.normalized |= facts.normalized;
        kept.for_each_vectors(|part| {
            if normalize_kept {
                part.chunks_exact(dim)
                    .try_for_each(|row| self.push_vector(row, true))
            } else {
                self.vectors.extend(part)
            }
        })?;
        self.rows = facts.rows as u64;
        self.sources = kept.sources();
        tracing::debug!(
            rows = facts.rows,
            files = facts.sources.len(),
            "rows kept in the state taken"
        );
        Ok(())
    }

    /// Reads the batches a host hands over, as one more input named `name`.
    fn read_stream(&mut self, source: BatchSource) -> Result<()> {
        let BatchSource { name, reader, rows } = source;
        let schema = reader.schema();
        let found = self.check_schema(&name, &schema)?;
        let batches =
            reader.map(|b| b.map_err(|e| Error::BadData(format!("{}: {}", name.display(), e))));
        // No file to bound the reservation: the host's row count (or nothing) sizes it.
        let rows = rows.unwrap_or(0);
        self.read_batches(
            &name,
            &schema,
            found.id.is_some(),
            batches,
            (rows, u64::MAX),
        )?;
        Ok(())
    }

    /// Finds the columns in `schema` and checks their types (against the first input's too),
    /// before any data is decoded.
    fn check_schema(&mut self, path: &Path, schema: &Schema) -> Result<FoundColumns> {
        let find = |name: &str| schema.index_of(name).ok();
        let missing = |name: &str| Error::missing_column(path, name, schema);
        let id_idx = match &self.columns.id {
            Some(name) => Some(find(name).ok_or_else(|| missing(name))?),
            None => find("id"),
        };
        let label_idx = match &self.columns.label {
            Some(name) => Some(find(name).ok_or_else(|| missing(name))?),
            None => None,
        };
        let emb_idx =
            find(&self.columns.embedding).ok_or_else(|| missing(&self.columns.embedding))?;
        let extra_idx = self
            .columns
            .extra
            .iter()
            .map(|name| find(name).ok_or_else(|| missing(name)))
            .collect::<Result<Vec<usize>>>()?;
        let id_name = self.columns.id.as_deref().unwrap_or("id");

        let id_type = id_idx.map(|i| schema.field(i).data_type().clone());
        if let Some(t) = &id_type {
            check_key_type(path, id_name, t)?;
        }
        if let (Some(i), Some(name)) = (label_idx, &self.columns.label) {
            check_key_type(path, name, schema.field(i).data_type())?;
        }
        check_embedding_type(
            path,
            &self.columns.embedding,
            schema.field(emb_idx).data_type(),
        )?;
        let mut types = vec![
            id_type.clone(),
            label_idx.map(|i| schema.field(i).data_type().clone()),
        ];
        types.extend(
            extra_idx
                .iter()
                .map(|&i| Some(schema.field(i).data_type().clone())),
        );
        match &self.types {
            None => self.types = Some(types),
            Some(first_types) => {
                let first_id = &first_types[0];
                if first_id.is_some() != id_type.is_some() {
                    return Err(Error::BadData(format!(
                        "{}: the id column `{id_name}` is {} here but {} in the first input",
                        path.display(),
                        if id_type.is_some() {
                            "present"
                        } else {
                            "absent"
                        },
                        if first_id.is_some() {
                            "present"
                        } else {
                            "absent"
                        },
                    )));
                }
                let mut names = vec![id_name, self.columns.label.as_deref().unwrap_or("")];
                names.extend(self.columns.extra.iter().map(String::as_str));
                for ((name, first), now) in names.into_iter().zip(first_types).zip(&types) {
                    if let (Some(first), Some(now)) = (first, now)
                        && first != now
                    {
                        return Err(Error::UnsupportedType {
                            file: path.into(),
                            column: name.into(),
                            found: now.to_string(),
                            expected: format!("{first}, as in the first input"),
                        });
                    }
                }
            }
        }
        Ok(FoundColumns {
            id: id_idx,
            label: label_idx,
            embedding: emb_idx,
            extra: extra_idx,
        })
    }

    /// Appends the rows of one input's batches (checked as they stream by); gives their count.
    /// `declared` is (rows, bytes) of the input as far as known, to size the vectors.
    fn read_batches(
        &mut self,
        path: &Path,
        schema: &Schema,
        has_ids: bool,
        batches: impl Iterator<Item = Result<RecordBatch>>,
        declared: (u64, u64),
    ) -> Result<u64> {
        let missing = |name: &str| Error::missing_column(path, name, schema);
        let id_name = self.columns.id.as_deref().unwrap_or("id");
        let mut row_in_file = 0u64;
        for batch in batches {
            crate::process::check_interrupted()?;
            let batch = batch?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .cloned()
                    .ok_or_else(|| missing(name))
            };
            if let Some(name) = &self.columns.label {
                let labels = col(name)?;
                check_no_nulls(path, name, &labels, row_in_file)?;
                self.labels.push(labels);
            }
            for (parts, name) in self.extra.iter_mut().zip(&self.columns.extra) {
                parts.push(col(name)?);
            }
            let ids = if has_ids {
                let ids = col(id_name)?;
                check_no_nulls(path, id_name, &ids, row_in_file)?;
                ids
            } else {
                Arc::new(UInt64Array::from_iter_values(
                    self.rows..self.rows + batch.num_rows() as u64,
                ))
            };
            let emb = col(&self.columns.embedding)?;
            self.append_embeddings(path, &emb, row_in_file, declared)?;
            self.ids.push(ids);
            row_in_file += batch.num_rows() as u64;
            self.rows += batch.num_rows() as u64;
        }
        self.sources.push(SourceFile {
            path: path.into(),
            rows: row_in_file,
        });
        tracing::debug!(input = %path.display(), rows = row_in_file, "read input");
        Ok(row_in_file)
    }

    fn append_embeddings(
        &mut self,
        path: &Path,
        emb: &ArrayRef,
        first_row: u64,
        (file_rows, file_len): (u64, u64),
    ) -> Result<()> {
        let name = self.columns.embedding.clone();
        let bad = |row: usize, reason: String| Error::BadValue {
            file: path.into(),
            column: name.clone(),
            row: first_row + row as u64,
            reason,
        };
        if let Some(row) = first_null(emb.as_ref()) {
            return Err(bad(row, "embedding is null".into()));
        }
        // Row extents into the flat child values.
        let (values, extents): (ArrayRef, Vec<(usize, usize)>) = match emb.data_type() {
            DataType::FixedSizeList(_, size) => {
                let list: &FixedSizeListArray = emb.as_fixed_size_list();
                let size = *size as usize;
                (
                    list.values().clone(),
                    (0..list.len()).map(|i| (i * size, size)).collect(),
                )
            }
            DataType::List(_) => list_extents(emb.as_list::<i32>()),
            DataType::LargeList(_) => list_extents(emb.as_list::<i64>()),
            other => unreachable!("checked before reading: {other}"),
        };
        if let Some(pos) = first_null(values.as_ref()) {
            let row = extents
                .iter()
                .position(|(s, l)| pos >= *s && pos < s + l)
                .unwrap_or(0);
            return Err(bad(row, "embedding has a null element".into()));
        }
        let flat: Vec<f32> = match values.data_type() {
            DataType::Float32 => values.as_primitive::<Float32Type>().values().to_vec(),
            DataType::Float16 => to_f32(values.as_primitive::<Float16Type>(), |x| x.to_f32()),
            DataType::Float64 => to_f32(values.as_primitive::<Float64Type>(), |x| x as f32),
            other => unreachable!("checked before reading: {other}"),
        };
        for (row, &(start, len)) in extents.iter().enumerate() {
            let dim = match &self.dim {
                Some((dim, _, _)) => *dim,
                None => {
                    if len == 0 {
                        return Err(bad(row, "embedding is empty".into()));
                    }
                    self.dim = Some((len, path.into(), first_row + row as u64));
                    self.start_vectors(len, file_rows, file_len)?;
                    len
                }
            };
            if len != dim {
                let (_, first_file, first_row) = self.dim.as_ref().expect("set above");
                return Err(bad(
                    row,
                    format!(
                        "embedding has dimension {len}, but row {first_row} of {} has dimension {dim}",
                        first_file.display()
                    ),
                ));
            }
            let v = &flat[start..start + len];
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(bad(
                    row,
                    format!("embedding holds a non-finite value ({x})"),
                ));
            }
            self.push_vector(v, self.normalized)?;
        }
        Ok(())
    }

    /// Appends one row's vector, L2-normalised when `normalize`.
    fn push_vector(&mut self, v: &[f32], normalize: bool) -> Result<()> {
        if normalize {
            self.row_buf.clear();
            self.row_buf.extend_from_slice(v);
            crate::score::normalize_row(&mut self.row_buf);
            self.vectors.extend(&self.row_buf)
        } else {
            self.vectors.extend(v)
        }
    }

    /// Sizes the vector sink once the dimension is known: the heap, or a scratch file when
    /// the vectors would take more than half of the memory limit.
    fn start_vectors(&mut self, dim: usize, file_rows: u64, file_len: u64) -> Result<()> {
        if matches!(self.vectors, VectorSink::Discard(_)) {
            return Ok(());
        }
        let Some(plan) = &self.spill else {
            self.vectors.reserve(reservation(file_rows, dim, file_len));
            return Ok(());
        };
        let rows = plan.rows.unwrap_or(0);
        let bytes = rows.saturating_mul(dim as u64 * 4);
        let spill = plan.rows.is_none() || bytes + plan.extra_bytes > plan.limit / 2;
        // Before any row is read: a limit the table cannot be held under is refused now.
        let mut parts = vec![
            (
                "the process holds".to_string(),
                crate::memory::Resident::now().now,
            ),
            (
                format!("the ids, labels and codes of {rows} rows need"),
                rows.saturating_mul(crate::memory::TABLE_BYTES_PER_ROW),
            ),
        ];
        if !spill {
            parts.push(("the vectors need".to_string(), bytes));
        }
        if plan.extra_bytes > 0 {
            // Held whole, and one column twice while its parts are joined.
            parts.push((
                "the --with columns need".to_string(),
                plan.extra_bytes + plan.extra_bytes / self.columns.extra.len().max(1) as u64,
            ));
        }
        crate::memory::check_minimum(plan.limit, &parts)?;
        if spill {
            match plan.rows {
                Some(_) => tracing::info!(
                    vectors_mib = bytes >> 20,
                    limit_mib = plan.limit >> 20,
                    "the vectors exceed half the memory limit"
                ),
                None => tracing::info!(
                    limit_mib = plan.limit >> 20,
                    "the rows of the input are not known in advance: its vectors spill"
                ),
            }
            // A tenth of the limit may stay resident between two drops of its pages.
            self.vectors = VectorSink::spill(&plan.dir, (plan.limit / 10) as usize)?;
            self.normalized = plan.normalize;
        } else {
            self.vectors.reserve(reservation(rows, dim, plan.bytes));
        }
        Ok(())
    }

    fn finish(self, first_file: &Path) -> Result<Table> {
        if self.rows == 0 {
            return Err(Error::BadData("the input has no rows".into()));
        }
        let ids = concat_all(&self.ids)?;
        let labels = match self.columns.label {
            Some(_) => Some(concat_all(&self.labels)?),
            None => None,
        };
        let dim = self.dim.map(|d| d.0).unwrap_or(0);
        debug_assert_eq!(self.vectors.len(), self.rows as usize * dim);
        let vectors = self.vectors.finish()?;
        let label_name = self.columns.label.as_deref().unwrap_or("label");
        let mut table = Table::assemble(
            ids,
            labels,
            vectors,
            dim,
            self.sources,
            (first_file, label_name),
        )?;
        table.normalized = self.normalized;
        // One column's parts at a time beside its joined copy.
        for (name, parts) in self.columns.extra.iter().zip(self.extra) {
            table.extra.push((name.clone(), concat_all(&parts)?));
        }
        Ok(table)
    }
}

fn concat_all(parts: &[ArrayRef]) -> Result<ArrayRef> {
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    Ok(concat(&refs)?)
}

fn list_extents<O: OffsetSizeTrait>(list: &GenericListArray<O>) -> (ArrayRef, Vec<(usize, usize)>) {
    let offsets = list.value_offsets();
    let base = offsets[0].as_usize();
    let values = list
        .values()
        .slice(base, offsets[offsets.len() - 1].as_usize() - base);
    let extents = offsets
        .windows(2)
        .map(|w| (w[0].as_usize() - base, (w[1] - w[0]).as_usize()))
        .collect();
    (values, extents)
}

fn to_f32<T: arrow::datatypes::ArrowPrimitiveType>(
    a: &PrimitiveArray<T>,
    f: impl Fn(T::Native) -> f32,
) -> Vec<f32> {
    a.values().iter().map(|&x| f(x)).collect()
}

pub(super) fn is_integer(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Ids and labels: integers or strings (also dictionary-encoded).
fn check_key_type(path: &Path, column: &str, t: &DataType) -> Result<()> {
    let ok = match t {
        DataType::Dictionary(_, v) => is_integer(v) || is_string(v),
        t => is_integer(t) || is_string(t),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::UnsupportedType {
            file: path.into(),
            column: column.into(),
            found: t.to_string(),
            expected: "an integer or string type".into(),
        })
    }
}

fn check_embedding_type(path: &Path, column: &str, t: &DataType) -> Result<()> {
    if let DataType::FixedSizeList(_, 0) = t {
        return Err(Error::BadFile {
            path: path.into(),
            reason: format!(
                "column `{column}`: the embeddings have dimension 0 (a list of fixed size 0); \
                 each needs at least one value"
            ),
        });
    }
    let child = match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            Some(f.data_type())
        }
        _ => None,
    };
    match child {
        Some(DataType::Float16 | DataType::Float32 | DataType::Float64) => Ok(()),
        _ => Err(Error::UnsupportedType {
            file: path.into(),
            column: column.into(),
            found: t.to_string(),
            expected: "FixedSizeList or List of float16, float32 or float64".into(),
        }),
    }
}
