//! The rows an incremental state keeps, so that a later run reads only the files that are new.
//!
//! In: the table a run mined, and the rows the state it started from kept. Out: a folder of
//! two files, in the prepared table's formats ([`super::save_table`]):
//! - `vectors.f32`: the rows' vectors as the table held them (row-major little-endian `f32`,
//!   L2-normalised when the table's were), which only ever grows: a run hard-links the previous
//!   state's file into its new state, cuts it back to the rows that state counts (a killed run
//!   may have left more) and appends its new rows, so the previous state, which reads only
//!   its own rows, stays usable until the new one replaces it;
//! - `rows.arrow`: ids, labels and `--with` columns of every row (written whole: a few bytes a
//!   row against the vectors' `4 x dim`).
//!
//! The reader ([`super::read_table_with`] with [`super::ReadOptions::kept`]) streams these
//! rows first, as if their files had been read, then reads the new files: the table is the one
//! reading every file would give.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arrow::array::ArrayRef;
use serde::{Deserialize, Serialize};

use super::prepared::{
    ID, LABEL, PreparedTable, WITH, read_rows_file, rows_batch, rows_per_chunk, write_rows_file,
    write_vectors,
};
use super::table::{SourceFile, Table};
use crate::error::{Error, Result};

const VECTORS: &str = "vectors.f32";
const ROWS: &str = "rows.arrow";
/// The advice on a state whose kept rows cannot be read.
const DAMAGED: &str = "the state is damaged, run with --force";

/// What a state says of the rows it keeps: what a prepared table's facts say (its vectors
/// normalised when they were as they were read: cosine under a memory limit), and the
/// `--with` columns kept, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptFacts {
    #[serde(flatten)]
    pub table: PreparedTable,
    pub with: Vec<String>,
}

/// Rows kept in a state folder, to be read before the new files.
#[derive(Debug, Clone)]
pub struct KeptRows {
    pub(crate) dir: PathBuf,
    pub(crate) facts: KeptFacts,
}

/// The kept rows' ids, labels and `--with` columns, as read back.
pub(crate) struct KeptColumns {
    pub ids: ArrayRef,
    pub labels: Option<ArrayRef>,
    pub extra: Vec<ArrayRef>,
}

impl KeptRows {
    pub fn new(dir: &Path, facts: KeptFacts) -> Self {
        KeptRows {
            dir: dir.to_path_buf(),
            facts,
        }
    }

    pub fn facts(&self) -> &KeptFacts {
        &self.facts
    }

    /// The files the kept rows came from, with their rows.
    pub(crate) fn sources(&self) -> Vec<SourceFile> {
        self.facts.table.source_files()
    }

    /// Ids, labels (when `labelled`) and the `--with` columns of the kept rows.
    pub(crate) fn columns(&self, labelled: bool) -> Result<KeptColumns> {
        let path = self.dir.join(ROWS);
        let batch = read_rows_file(&path, self.facts.table.rows, "its state.json says", DAMAGED)?;
        let column = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                Error::BadData(format!("{}: no column {name}; {DAMAGED}", path.display()))
            })
        };
        Ok(KeptColumns {
            ids: column(ID)?,
            labels: if labelled { Some(column(LABEL)?) } else { None },
            extra: self
                .facts
                .with
                .iter()
                .map(|name| column(&format!("{WITH}{name}")))
                .collect::<Result<_>>()?,
        })
    }

    /// About the bytes the kept ids, labels and `--with` columns take once read (their file's
    /// size: it holds them uncompressed).
    pub(crate) fn columns_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join(ROWS)).map_or(0, |m| m.len())
    }

    /// The kept vectors, a few MiB of whole rows at a time, to `put`.
    pub(crate) fn for_each_vectors(&self, mut put: impl FnMut(&[f32]) -> Result<()>) -> Result<()> {
        let path = self.dir.join(VECTORS);
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let dim = self.facts.table.dim;
        let values = self.facts.table.rows * dim;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        // A killed run may have appended rows this state does not count: they are not read.
        if len < values as u64 * 4 {
            return Err(Error::BadData(format!(
                "{}: {len} bytes, fewer than the {} its state.json counts; {DAMAGED}",
                path.display(),
                values as u64 * 4
            )));
        }
        let mut buf = vec![0f32; rows_per_chunk(dim) * dim];
        let mut left = values;
        while left > 0 {
            let part = &mut buf[..left.min(rows_per_chunk(dim) * dim)];
            file.read_exact(bytemuck::cast_slice_mut(part))
                .map_err(|e| Error::io(&path, e))?;
            put(part)?;
            left -= part.len();
        }
        Ok(())
    }
}

/// Keeps `table`'s rows in the folder `dir` (created). When `previous` (the rows the state
/// this run started from kept) holds the table's first rows as the table holds them, its
/// vectors file is linked and the new rows appended; else every row is written.
pub(crate) fn save_kept(
    table: &Table,
    with: &[String],
    previous: Option<&KeptRows>,
    dir: &Path,
) -> Result<KeptFacts> {
    std::fs::create_dir_all(dir).map_err(|e| Error::output(dir, e))?;
    let dim = table.dim();
    let path = dir.join(VECTORS);
    let appendable = previous
        .map(|p| &p.facts.table)
        .filter(|p| p.dim == dim && p.normalized == table.normalized() && p.rows <= table.rows());
    let linked = previous
        .filter(|_| appendable.is_some())
        .and_then(|p| link_prefix(p, &path).ok());
    let (file, from) = match (linked, appendable) {
        (Some(file), Some(p)) => (file, p.rows),
        _ => {
            let _ = std::fs::remove_file(&path);
            (File::create(&path).map_err(|e| Error::output(&path, e))?, 0)
        }
    };
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write_vectors(table, from, false, &mut out).map_err(|e| Error::output(&path, e))?;
    out.flush().map_err(|e| Error::output(&path, e))?;
    let rows_path = dir.join(ROWS);
    write_rows_file(&rows_batch(table, None)?, &rows_path, &rows_path)?;
    Ok(KeptFacts {
        table: PreparedTable::of(table, table.normalized()),
        with: with.to_vec(),
    })
}

/// Links the previous state's vectors file at `path`, cut back to the rows that state counts,
/// and opens it for appending.
fn link_prefix(previous: &KeptRows, path: &Path) -> std::io::Result<File> {
    let _ = std::fs::remove_file(path);
    std::fs::hard_link(previous.dir.join(VECTORS), path)?;
    let mut file = OpenOptions::new().write(true).open(path)?;
    let keep = (previous.facts.table.rows * previous.facts.table.dim * 4) as u64;
    if file.metadata()?.len() < keep {
        return Err(std::io::Error::other("shorter than its state counts"));
    }
    file.set_len(keep)?;
    file.seek(SeekFrom::End(0))?;
    Ok(file)
}
