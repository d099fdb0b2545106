//! The prepared table of a distributed run: written once by the plan, mapped by every worker.
//!
//! In: a [`Table`] (in retrieval mode also the queries' known positives). Out: a folder of two
//! files, read back into the same table by [`open_table`]:
//! - `vectors.f32`: the rows' vectors, row-major little-endian `f32`, L2-normalised when the
//!   metric is cosine, so that a worker maps it and reads any row in place (no parsing, no
//!   copy; pages come in as rows are used);
//! - `rows.arrow`: an uncompressed Arrow IPC file of one batch: ids and labels in their input
//!   types, the `--with` columns, and for queries their positives (corpus rows). Label codes
//!   are derived again from the labels, by the same code, so they are the same.
//!
//! Both are written under temporary names and renamed into place complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, UInt32Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use serde::{Deserialize, Serialize};

use super::table::{Labels, SourceFile, Table};
use super::vectors::Vectors;
use super::write::AtomicPath;
use crate::error::{Error, Result};

/// What a prepared table's files do not say: its shape and where its rows came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedTable {
    pub rows: usize,
    pub dim: usize,
    /// Whether the vectors were L2-normalised (cosine).
    pub normalized: bool,
    pub labelled: bool,
    /// The input files and their rows, for messages that locate a row.
    pub sources: Vec<(PathBuf, u64)>,
}

const VECTORS: &str = "vectors.f32";
const ROWS: &str = "rows.arrow";
pub(super) const ID: &str = "__id";
pub(super) const LABEL: &str = "__label";
const POSITIVES: &str = "__positives";
/// Prefix of the `--with` columns' names in `rows.arrow` (apart from the fields above).
pub(super) const WITH: &str = "with:";

/// Writes `table` into the folder `dir` (created), its vectors L2-normalised when `normalize`
/// (and not normalised already), with `positives` (retrieval mode's queries).
pub fn save_table(
    table: &Table,
    positives: Option<&[Vec<u32>]>,
    normalize: bool,
    dir: &Path,
) -> Result<PreparedTable> {
    std::fs::create_dir_all(dir).map_err(|e| Error::output(dir, e))?;
    let vectors_file = AtomicPath::new(&dir.join(VECTORS))?;
    {
        let dest = vectors_file.dest();
        let file = File::create(vectors_file.tmp()).map_err(|e| Error::output(dest, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        write_vectors(table, 0, normalize, &mut out).map_err(|e| Error::output(dest, e))?;
        out.flush().map_err(|e| Error::output(dest, e))?;
    }
    let rows_file = AtomicPath::new(&dir.join(ROWS))?;
    write_rows_file(
        &rows_batch(table, positives)?,
        rows_file.tmp(),
        rows_file.dest(),
    )?;
    vectors_file.commit()?;
    rows_file.commit()?;
    Ok(PreparedTable::of(table, normalize || table.normalized))
}

impl PreparedTable {
    /// What `table`'s files will not say, its vectors `normalized` or not.
    pub(super) fn of(table: &Table, normalized: bool) -> Self {
        PreparedTable {
            rows: table.rows(),
            dim: table.dim,
            normalized,
            labelled: table.labelled(),
            sources: table
                .sources
                .iter()
                .map(|s| (s.path.clone(), s.rows))
                .collect(),
        }
    }

    /// The input files and their rows, as a table holds them.
    pub(super) fn source_files(&self) -> Vec<SourceFile> {
        self.sources
            .iter()
            .map(|(path, rows)| SourceFile {
                path: path.clone(),
                rows: *rows,
            })
            .collect()
    }
}

/// Writes `batch` as an uncompressed Arrow IPC file at `path` (errors name `dest`).
pub(super) fn write_rows_file(batch: &RecordBatch, path: &Path, dest: &Path) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::output(dest, e))?;
    let mut writer = FileWriter::try_new(BufWriter::new(file), &batch.schema())
        .map_err(|e| Error::output(dest, e))?;
    writer.write(batch).map_err(|e| Error::output(dest, e))?;
    writer.finish().map_err(|e| Error::output(dest, e))
}

/// The rows of the Arrow IPC file `path` as one batch, which must hold `rows` rows (as
/// `says` says); an unreadable or short file is bad data, with `damaged` as the advice.
pub(super) fn read_rows_file(
    path: &Path,
    rows: usize,
    says: &str,
    damaged: &str,
) -> Result<RecordBatch> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::BadData(format!("{}: {what}; {damaged}", path.display()));
    let reader = FileReader::try_new(file, None).map_err(|e| bad(e.to_string()))?;
    let batches: Vec<RecordBatch> = reader
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| bad("no rows".into()))?;
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    if batch.num_rows() != rows {
        return Err(bad(format!("{} rows, {says} {rows}", batch.num_rows())));
    }
    Ok(batch)
}

/// Writes the vectors of `table`'s rows from `from` on to `out`, L2-normalised when
/// `normalize` (and not normalised already), a few MiB at a time (a spilled table's pages are
/// dropped as they go).
pub(super) fn write_vectors(
    table: &Table,
    from: usize,
    normalize: bool,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let dim = table.dim;
    let rows = rows_per_chunk(dim);
    let mut chunk = Vec::with_capacity(rows * dim);
    for part in super::sweep(&table.vectors[from * dim..], rows * dim, &table.vectors) {
        chunk.clear();
        chunk.extend_from_slice(part);
        if normalize && !table.normalized {
            crate::score::normalize_rows(&mut chunk, dim);
        }
        if cfg!(target_endian = "big") {
            unreachable!("tripmine runs on little-endian Linux only");
        }
        out.write_all(bytemuck::cast_slice(&chunk))?;
    }
    Ok(())
}

/// Rows of `dim` values in the chunks vectors are written and read in (4 MiB).
pub(super) fn rows_per_chunk(dim: usize) -> usize {
    ((4 << 20) / (4 * dim.max(1))).max(1)
}

/// One batch of `table`'s ids, labels and `--with` columns, and `positives` when given.
pub(super) fn rows_batch(table: &Table, positives: Option<&[Vec<u32>]>) -> Result<RecordBatch> {
    let mut fields = vec![Field::new(ID, table.ids.data_type().clone(), false)];
    let mut columns: Vec<ArrayRef> = vec![table.ids.clone()];
    if let Labels::Given { column, .. } = &table.labels {
        fields.push(Field::new(LABEL, column.data_type().clone(), false));
        columns.push(column.clone());
    }
    for (name, column) in &table.extra {
        fields.push(Field::new(
            format!("{WITH}{name}"),
            column.data_type().clone(),
            true,
        ));
        columns.push(column.clone());
    }
    if let Some(positives) = positives {
        let list = ListArray::from_iter_primitive::<UInt32Type, _, _>(
            positives
                .iter()
                .map(|p| Some(p.iter().map(|&r| Some(r)).collect::<Vec<_>>())),
        );
        fields.push(Field::new(POSITIVES, list.data_type().clone(), false));
        columns.push(Arc::new(list));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Opens the table [`save_table`] wrote into `dir`, its vectors mapped (under a memory limit,
/// at most a tenth of it resident, as a spilled table's); with the positives of each row when
/// they were saved.
pub fn open_table(
    dir: &Path,
    facts: &PreparedTable,
    memory_limit: Option<u64>,
) -> Result<(Table, Option<Vec<Vec<u32>>>)> {
    let path = dir.join(ROWS);
    let batch = read_rows_file(
        &path,
        facts.rows,
        "the plan says",
        "the prepared table is damaged, from another version, or its plan did not finish",
    )?;
    let column = |name: &str| batch.column_by_name(name).cloned();
    let ids = column(ID).ok_or_else(|| Error::BadData(format!("{}: no ids", path.display())))?;
    let budget = memory_limit.map_or(usize::MAX, |l| (l / 10) as usize);
    let vectors = Vectors::map_file(&dir.join(VECTORS), facts.rows * facts.dim, budget)?;
    let mut table = Table::assemble(
        ids,
        column(LABEL),
        vectors,
        facts.dim,
        facts.source_files(),
        (dir, "label"),
    )?;
    table.normalized = facts.normalized;
    table.extra = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .filter_map(|(f, c)| Some((f.name().strip_prefix(WITH)?.to_string(), c.clone())))
        .collect();
    let positives = column(POSITIVES).map(|list| {
        let list = list.as_list::<i32>();
        (0..list.len())
            .map(|i| {
                let row = list.value(i);
                let rows: &UInt32Array = row.as_primitive::<UInt32Type>();
                rows.values().to_vec()
            })
            .collect()
    });
    debug_assert!(matches!(
        column(POSITIVES).map(|c| c.data_type().clone()),
        None | Some(DataType::List(_))
    ));
    Ok((table, positives))
}
