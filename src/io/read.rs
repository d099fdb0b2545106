//! Streaming Parquet reader: only the id, label and embedding columns, batch by batch.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, GenericListArray, OffsetSizeTrait,
    PrimitiveArray, UInt64Array,
};
use arrow::compute::{CastOptions, cast_with_options, concat, take};
use arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::store::{VectorSink, Vectors};
use crate::config::ColumnNames;
use crate::error::{Error, Result, contain_panics};

/// Where a row came from, for error messages.
const MEMORY: &str = "<memory>";

/// One input file and how many rows it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub rows: u64,
}

/// Labelled embeddings held in memory: vectors as one contiguous row-major `f32` buffer.
#[derive(Debug, Clone)]
pub struct Table {
    /// Row ids, in their input type (row positions as `UInt64` when there is no id column).
    pub ids: ArrayRef,
    /// Labels, in their input type.
    pub labels: ArrayRef,
    /// Dense label code of every row; codes follow the sorted order of the label values.
    pub label_codes: Vec<u32>,
    /// The distinct labels, `label_values[code]`, in their input type.
    pub label_values: ArrayRef,
    /// `rows x dim` values, row-major (on the heap, or spilled under a memory limit).
    pub vectors: Vectors,
    /// Whether the rows were L2-normalised as they were read (cosine under a memory limit,
    /// so that the miner needs no normalised copy).
    pub normalized: bool,
    pub dim: usize,
    /// The files the rows came from, in order (empty for a table built in memory).
    pub sources: Vec<SourceFile>,
    /// Columns read as they are for the output (`--with`), by name.
    pub extra: Vec<(String, ArrayRef)>,
}

impl Table {
    /// Builds a table from arrays already in memory (a trainer's batch, a test).
    ///
    /// `ids` defaults to row positions; `vectors` holds `labels.len() * dim` finite values.
    pub fn from_arrays(
        ids: Option<ArrayRef>,
        labels: ArrayRef,
        vectors: Vec<f32>,
        dim: usize,
    ) -> Result<Table> {
        Table::in_memory(ids, Some(labels), vectors, dim)
    }

    /// An unlabelled table (queries or corpus of retrieval mode) from arrays in memory;
    /// `vectors` holds whole rows of `dim` finite values.
    pub fn unlabelled(ids: Option<ArrayRef>, vectors: Vec<f32>, dim: usize) -> Result<Table> {
        Table::in_memory(ids, None, vectors, dim)
    }

    fn in_memory(
        ids: Option<ArrayRef>,
        labels: Option<ArrayRef>,
        vectors: Vec<f32>,
        dim: usize,
    ) -> Result<Table> {
        let rows = match &labels {
            Some(l) => l.len(),
            None if dim > 0 => vectors.len() / dim,
            None => 0,
        };
        if dim == 0 || vectors.len() != rows * dim {
            return Err(Error::BadData(format!(
                "{} vector values do not make {rows} rows of dimension {dim}",
                vectors.len()
            )));
        }
        let ids = match ids {
            Some(ids) if ids.len() != rows => {
                return Err(Error::BadData(format!(
                    "{} ids for {rows} labels",
                    ids.len()
                )));
            }
            Some(ids) => ids,
            None => Arc::new(UInt64Array::from_iter_values(0..rows as u64)),
        };
        let path = Path::new(MEMORY);
        check_no_nulls(path, "id", &ids, 0)?;
        if let Some(labels) = &labels {
            check_no_nulls(path, "label", labels, 0)?;
        }
        if let Some(pos) = vectors.iter().position(|x| !x.is_finite()) {
            return Err(Error::BadValue {
                file: path.into(),
                column: "embedding".into(),
                row: (pos / dim) as u64,
                reason: format!("value {} is not finite", vectors[pos]),
            });
        }
        Table::assemble(
            ids,
            labels,
            vectors.into(),
            dim,
            Vec::new(),
            (path, "label"),
        )
    }

    /// Whether the rows carry labels (labelled mode) or not (queries, corpus).
    pub fn labelled(&self) -> bool {
        self.labels.data_type() != &DataType::Null
    }

    /// The passed-through column `name`, if read.
    pub fn extra(&self, name: &str) -> Option<&ArrayRef> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// Every row gets label code 0 of one label `all`.
    fn strip_labels(&mut self) {
        let rows = self.ids.len();
        self.labels = Arc::new(arrow::array::NullArray::new(rows));
        self.label_codes = vec![0; rows];
        self.label_values = Arc::new(arrow::array::StringArray::from(vec!["all"]));
    }

    /// The file a row came from and its row position within that file (`<memory>` and the
    /// row itself for a table built in memory), for error messages.
    pub fn locate(&self, row: usize) -> (PathBuf, u64) {
        let mut start = 0u64;
        for s in &self.sources {
            if (row as u64) < start + s.rows {
                return (s.path.clone(), row as u64 - start);
            }
            start += s.rows;
        }
        (PathBuf::from(MEMORY), row as u64)
    }

    /// Refuses a table whose ids repeat, naming the first id that repeats an earlier one,
    /// where both rows are. `hint` ends the message (how to proceed anyway).
    pub fn check_unique_ids(&self, id_column: &str, hint: &str) -> Result<()> {
        let Some((first, repeat)) = first_repeated_id(&self.ids)? else {
            return Ok(());
        };
        let (file, at) = self.locate(repeat);
        let (first_file, first_at) = self.locate(first);
        let id = arrow::util::display::array_value_to_string(&self.ids, repeat)?;
        Err(Error::BadValue {
            file,
            column: id_column.into(),
            row: at,
            reason: format!(
                "id {id} repeats row {first_at} of {}; ids must be unique{hint}",
                first_file.display()
            ),
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.label_codes.len()
    }

    /// Number of distinct labels.
    pub fn num_labels(&self) -> usize {
        self.label_values.len()
    }

    /// The vector of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    fn assemble(
        ids: ArrayRef,
        labels: Option<ArrayRef>,
        vectors: Vectors,
        dim: usize,
        sources: Vec<SourceFile>,
        (first_file, label_name): (&Path, &str),
    ) -> Result<Table> {
        if ids.is_empty() {
            return Err(Error::BadData("the input has no rows".into()));
        }
        let Some(labels) = labels else {
            let mut table = Table {
                labels: ids.clone(),
                ids,
                label_codes: Vec::new(),
                label_values: Arc::new(arrow::array::NullArray::new(0)),
                vectors,
                normalized: false,
                dim,
                sources,
                extra: Vec::new(),
            };
            table.strip_labels();
            return Ok(table);
        };
        let (label_codes, label_values) = encode_labels(&labels, first_file, label_name)?;
        if label_values.len() < 2 {
            return Err(Error::BadData(format!(
                "the input has {} distinct label(s); mining needs at least two",
                label_values.len()
            )));
        }
        Ok(Table {
            ids,
            labels,
            label_codes,
            label_values,
            vectors,
            normalized: false,
            dim,
            sources,
            extra: Vec::new(),
        })
    }
}

/// How a table is read beyond its columns.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Spill the vectors to a scratch file when they would take more than half of this.
    pub memory_limit: Option<u64>,
    /// Folder of the scratch file (default: the system's temporary folder).
    pub scratch_dir: Option<PathBuf>,
    /// L2-normalise rows as they are read when they spill (for cosine).
    pub normalize_if_spilled: bool,
}

/// Expands files, folders (their `.parquet` files, by name) and globs, in the order given.
pub fn resolve_inputs(specs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for spec in specs {
        if spec.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(spec)
                .map_err(|e| Error::io(spec, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "parquet"))
                .collect();
            if found.is_empty() {
                return Err(Error::NoInput(format!(
                    "folder {} holds no .parquet file",
                    spec.display()
                )));
            }
            found.sort();
            files.extend(found);
        } else if spec.is_file() {
            files.push(spec.clone());
        } else if spec.exists() {
            return Err(Error::BadFile {
                path: spec.clone(),
                reason: "not a Parquet file: it is not a regular file (a device, a pipe or a \
                         socket)"
                    .into(),
            });
        } else {
            let pattern = spec.to_string_lossy();
            let is_glob = pattern.contains(['*', '?', '[']);
            if !is_glob {
                return Err(Error::NoInput(format!(
                    "{}: no such file or folder",
                    spec.display()
                )));
            }
            let mut found: Vec<PathBuf> = glob::glob(&pattern)
                .map_err(|e| Error::Config(format!("bad glob `{pattern}`: {e}")))?
                .filter_map(|p| p.ok())
                .filter(|p| p.is_file())
                .collect();
            if found.is_empty() {
                return Err(Error::NoInput(format!("glob `{pattern}` matches no file")));
            }
            found.sort();
            files.extend(found);
        }
    }
    Ok(files)
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
    if let Some(limit) = options.memory_limit {
        // Row counts from the footers, to size the vectors before reading them.
        let (mut rows, mut bytes) = (0u64, 0u64);
        for path in &files {
            let (declared, len) = contain_panics(path, || {
                let (meta, len) = open_parquet(path)?;
                Ok((
                    meta.metadata().file_metadata().num_rows().max(0) as u64,
                    len,
                ))
            })?;
            rows = rows.saturating_add(declared);
            bytes = bytes.saturating_add(len);
        }
        reader.spill = Some(SpillPlan {
            rows,
            bytes,
            limit,
            dir: options
                .scratch_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            normalize: options.normalize_if_spilled,
        });
    }
    for file in &files {
        reader.read_file(file)?;
    }
    reader.finish(&files[0])
}

/// When and where vectors spill.
struct SpillPlan {
    /// Rows the footers declare.
    rows: u64,
    /// Bytes of the files.
    bytes: u64,
    limit: u64,
    dir: PathBuf,
    normalize: bool,
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
        let find = |name: &str| schema.index_of(name).ok();
        let missing = |name: &str| Error::missing_column(path, name, &schema);
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

        // Check the column types once per file, before decoding any data.
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

        let mut roots: Vec<usize> = [id_idx, label_idx, Some(emb_idx)]
            .into_iter()
            .flatten()
            .chain(extra_idx.iter().copied())
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

        let mut row_in_file = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| Error::bad_parquet(path, e))?;
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
            let ids = match id_idx {
                Some(_) => {
                    let ids = col(id_name)?;
                    check_no_nulls(path, id_name, &ids, row_in_file)?;
                    ids
                }
                None => Arc::new(UInt64Array::from_iter_values(
                    self.rows..self.rows + batch.num_rows() as u64,
                )),
            };
            let emb = col(&self.columns.embedding)?;
            self.append_embeddings(path, &emb, row_in_file, (file_rows, file_len))?;
            self.ids.push(ids);
            row_in_file += batch.num_rows() as u64;
            self.rows += batch.num_rows() as u64;
        }
        if row_in_file != file_rows {
            return Err(Error::corrupt(
                path,
                format!("its footer declares {file_rows} rows but it holds {row_in_file}"),
            ));
        }
        self.sources.push(SourceFile {
            path: path.into(),
            rows: row_in_file,
        });
        tracing::debug!(file = %path.display(), rows = row_in_file, "read input file");
        Ok(())
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
            if self.normalized {
                self.row_buf.clear();
                self.row_buf.extend_from_slice(v);
                crate::score::normalize_row(&mut self.row_buf);
                self.vectors.extend(&self.row_buf)?;
            } else {
                self.vectors.extend(v)?;
            }
        }
        Ok(())
    }

    /// Sizes the vector sink once the dimension is known: the heap, or a scratch file when
    /// the vectors would take more than half of the memory limit.
    fn start_vectors(&mut self, dim: usize, file_rows: u64, file_len: u64) -> Result<()> {
        let Some(plan) = &self.spill else {
            self.vectors.reserve(reservation(file_rows, dim, file_len));
            return Ok(());
        };
        let bytes = plan.rows.saturating_mul(dim as u64 * 4);
        let spill = bytes > plan.limit / 2;
        // Before any row is read: a limit the table cannot be held under is refused now.
        let mut parts = vec![
            (
                "the process holds".to_string(),
                crate::memory::Resident::now().now,
            ),
            (
                format!("the ids, labels and codes of {} rows need", plan.rows),
                plan.rows.saturating_mul(crate::memory::TABLE_BYTES_PER_ROW),
            ),
        ];
        if !spill {
            parts.push(("the vectors need".to_string(), bytes));
        }
        crate::memory::check_minimum(plan.limit, &parts)?;
        if spill {
            tracing::info!(
                vectors_mib = bytes >> 20,
                limit_mib = plan.limit >> 20,
                "the vectors exceed half the memory limit"
            );
            // A tenth of the limit may stay resident between relieving calls.
            self.vectors = VectorSink::spill(&plan.dir, (plan.limit / 10) as usize)?;
            self.normalized = plan.normalize;
        } else {
            self.vectors
                .reserve(reservation(plan.rows, dim, plan.bytes));
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
        for (name, parts) in self.columns.extra.iter().zip(&self.extra) {
            table.extra.push((name.clone(), concat_all(parts)?));
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

fn first_null(a: &dyn Array) -> Option<usize> {
    if a.null_count() == 0 {
        return None;
    }
    (0..a.len()).find(|&i| a.is_null(i))
}

fn check_no_nulls(path: &Path, column: &str, a: &ArrayRef, first_row: u64) -> Result<()> {
    match first_null(a.as_ref()) {
        None => Ok(()),
        Some(row) => Err(Error::BadValue {
            file: path.into(),
            column: column.into(),
            row: first_row + row as u64,
            reason: "value is null".into(),
        }),
    }
}

fn is_integer(t: &DataType) -> bool {
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

/// The first row whose id equals an earlier row's, with that earlier row: `(first, repeat)`.
///
/// Sorts (hash, row) pairs, 12 bytes a row, rather than building a hash map of every id, and
/// compares the ids themselves where hashes meet.
pub(crate) fn first_repeated_id(ids: &ArrayRef) -> Result<Option<(usize, usize)>> {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let ids = match ids.data_type() {
        DataType::Dictionary(_, v) => arrow::compute::cast(ids, v)?,
        _ => ids.clone(),
    };
    // Row positions (no id column) are unique by construction.
    if let Some(p) = ids.as_primitive_opt::<arrow::datatypes::UInt64Type>()
        && p.values().iter().enumerate().all(|(i, &v)| v == i as u64)
    {
        return Ok(None);
    }
    let converter =
        arrow::row::RowConverter::new(vec![arrow::row::SortField::new(ids.data_type().clone())])?;
    let rows = converter.convert_columns(&[ids])?;
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut keyed: Vec<(u64, u32)> = (0..rows.num_rows())
        .map(|i| (hasher.hash_one(rows.row(i).as_ref()), i as u32))
        .collect();
    keyed.sort_unstable();
    let mut best: Option<(usize, usize)> = None;
    for group in keyed.chunk_by(|a, b| a.0 == b.0).filter(|g| g.len() > 1) {
        // Rows ascending within a hash; the first row equal to an earlier one is a repeat.
        for (j, &(_, r)) in group.iter().enumerate().skip(1) {
            let earlier = group[..j]
                .iter()
                .find(|(_, e)| rows.row(*e as usize) == rows.row(r as usize));
            if let Some(&(_, e)) = earlier {
                if best.is_none_or(|(_, b)| (r as usize) < b) {
                    best = Some((e as usize, r as usize));
                }
                break;
            }
        }
    }
    Ok(best)
}

/// Dense codes in sorted label order, and the distinct labels in their input type.
fn encode_labels(labels: &ArrayRef, file: &Path, column: &str) -> Result<(Vec<u32>, ArrayRef)> {
    let logical = match labels.data_type() {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        t => t.clone(),
    };
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    // `first[c]` is the first row holding the label of code `c`.
    let (codes, first): (Vec<u32>, Vec<u32>) = if is_integer(&logical) {
        let as_i64 = cast_with_options(labels, &DataType::Int64, &strict).map_err(|e| {
            Error::UnsupportedType {
                file: file.into(),
                column: column.into(),
                found: format!(
                    "{} ({})",
                    labels.data_type(),
                    crate::error::detail(&e.to_string())
                ),
                expected: "labels that fit in a 64-bit signed integer".into(),
            }
        })?;
        dense_codes(
            as_i64
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .iter()
                .copied(),
        )
    } else {
        let as_str = cast_with_options(labels, &DataType::Utf8, &strict)?;
        dense_codes(
            as_str
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap_or_default()),
        )
    };
    let first = UInt64Array::from_iter_values(first.iter().map(|&r| r as u64));
    let values = take(labels.as_ref(), &first, None)?;
    Ok((codes, values))
}

/// Codes by sorted distinct value; also the first row of each value.
fn dense_codes<K: Ord + std::hash::Hash + Copy>(
    keys: impl Iterator<Item = K> + Clone,
) -> (Vec<u32>, Vec<u32>) {
    let mut first_row: HashMap<K, u32> = HashMap::new();
    for (row, k) in keys.clone().enumerate() {
        first_row.entry(k).or_insert(row as u32);
    }
    let mut distinct: Vec<(K, u32)> = first_row.into_iter().collect();
    distinct.sort_unstable();
    let code_of: HashMap<K, u32> = distinct
        .iter()
        .enumerate()
        .map(|(c, (k, _))| (*k, c as u32))
        .collect();
    let codes = keys.map(|k| code_of[&k]).collect();
    (codes, distinct.into_iter().map(|(_, r)| r).collect())
}
