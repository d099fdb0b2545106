//! `tripmine inspect`: what a data set holds, before mining it.

use std::fmt;
use std::path::PathBuf;

use arrow::util::display::array_value_to_string;

use crate::config::ColumnNames;
use crate::error::{Result, contain_panics};
use crate::io::{ReadOptions, open_parquet, read_table_with, resolve_inputs};

/// Schema, size and label counts of the inputs.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub files: Vec<(PathBuf, u64)>,
    /// The first file's Arrow schema, one `name: type` line a field.
    pub schema: Vec<String>,
    pub rows: u64,
    pub dim: usize,
    /// `(label, rows)`, most frequent first.
    pub label_counts: Vec<(String, u64)>,
}

/// Reads the inputs' metadata and their label and embedding columns.
pub fn inspect(specs: &[PathBuf], columns: &ColumnNames) -> Result<Inspection> {
    let files = resolve_inputs(specs)?;
    let schema = contain_panics(&files[0], || {
        Ok(open_parquet(&files[0])?
            .0
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect())
    })?;
    // Every row is read and checked; the vectors are counted, not kept.
    let options = ReadOptions {
        discard_vectors: true,
        ..ReadOptions::default()
    };
    let table = read_table_with(&files, columns, &options)?;
    let names = table.label_names();
    let mut counts = vec![0u64; table.num_labels()];
    for &c in &table.label_codes {
        counts[c as usize] += 1;
    }
    let mut label_counts: Vec<(String, u64)> = counts
        .iter()
        .enumerate()
        .map(|(code, &n)| Ok((array_value_to_string(&names, code)?, n)))
        .collect::<Result<_>>()?;
    // Most frequent first; the stable sort keeps label order among equals.
    label_counts.sort_by_key(|x| std::cmp::Reverse(x.1));
    Ok(Inspection {
        files: table
            .sources
            .iter()
            .map(|s| (s.path.clone(), s.rows))
            .collect(),
        schema,
        rows: table.rows() as u64,
        dim: table.dim,
        label_counts,
    })
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "files:")?;
        for (path, rows) in &self.files {
            writeln!(f, "  {} ({rows} rows)", path.display())?;
        }
        writeln!(f, "schema:")?;
        for line in &self.schema {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "rows:      {}", self.rows)?;
        writeln!(f, "dimension: {}", self.dim)?;
        writeln!(f, "labels:    {}", self.label_counts.len())?;
        const SHOWN: usize = 20;
        for (label, n) in self.label_counts.iter().take(SHOWN) {
            writeln!(f, "  {label:<24} {n}")?;
        }
        if self.label_counts.len() > SHOWN {
            writeln!(f, "  ... and {} more", self.label_counts.len() - SHOWN)?;
        }
        Ok(())
    }
}
