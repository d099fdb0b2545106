//! The table every stage reads: ids and labels in their input types, dense label codes, and
//! the vectors as one contiguous row-major `f32` buffer (on the heap or spilled); built by the
//! reader or from arrays a trainer already holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, UInt64Array};
use arrow::compute::{CastOptions, cast_with_options, take};
use arrow::datatypes::DataType;

use super::read::is_integer;
use super::vectors::Vectors;
use crate::error::{Error, Result};

/// Where a row came from, for error messages.
const MEMORY: &str = "<memory>";

/// One input file and how many rows it gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub rows: u64,
}

/// What a table knows of its rows' labels: mining by class needs them, retrieval has none.
#[derive(Debug, Clone)]
pub enum Labels {
    /// Labelled mode: one label per row in its input type, and the distinct labels
    /// (`distinct[code]`, sorted), at least two.
    Given {
        column: ArrayRef,
        distinct: ArrayRef,
    },
    /// Queries or a corpus of retrieval mode: no labels; every row has code 0.
    Unlabelled,
}

/// Embeddings held in memory (labelled or not): vectors as one contiguous row-major `f32`
/// buffer.
#[derive(Debug, Clone)]
///
/// Its invariants (as many ids, codes and rows of vectors; codes that index the distinct
/// labels) hold from construction: the fields are the crate's, the accessors everyone's.
pub struct Table {
    /// Row ids, in their input type (row positions as `UInt64` when there is no id column).
    pub(crate) ids: ArrayRef,
    pub(crate) labels: Labels,
    /// Dense label code of every row; codes follow the sorted order of the label values
    /// (all 0 without labels).
    pub(crate) label_codes: Vec<u32>,
    /// `rows x dim` values, row-major (on the heap, or spilled under a memory limit).
    pub(crate) vectors: Vectors,
    /// Whether the rows were L2-normalised as they were read (cosine under a memory limit,
    /// so that the miner needs no normalised copy).
    pub(crate) normalized: bool,
    pub(crate) dim: usize,
    /// The files the rows came from, in order (empty for a table built in memory).
    pub(crate) sources: Vec<SourceFile>,
    /// Columns read as they are for the output (`--with`), by name.
    pub(crate) extra: Vec<(String, ArrayRef)>,
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

    /// Row ids, in their input type (row positions as `UInt64` when there is no id column).
    pub fn ids(&self) -> &ArrayRef {
        &self.ids
    }

    /// The labels, if any.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Dense label code of every row (codes follow the sorted label values; all 0 without
    /// labels).
    pub fn label_codes(&self) -> &[u32] {
        &self.label_codes
    }

    /// The vectors, `rows x dim` values, row-major.
    pub fn vectors(&self) -> &Vectors {
        &self.vectors
    }

    /// Values per vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Whether the rows were L2-normalised as they were read.
    pub fn normalized(&self) -> bool {
        self.normalized
    }

    /// The files the rows came from, in order (empty for a table built in memory).
    pub fn sources(&self) -> &[SourceFile] {
        &self.sources
    }

    /// Frees the vectors (ids, labels and columns stay): for stages after mining.
    pub fn drop_vectors(&mut self) {
        self.vectors = Vectors::default();
    }

    /// Whether the rows carry labels (labelled mode) or not (queries, corpus).
    pub fn labelled(&self) -> bool {
        matches!(self.labels, Labels::Given { .. })
    }

    /// The label of every row, in its input type (labelled mode).
    pub fn label_column(&self) -> Option<&ArrayRef> {
        match &self.labels {
            Labels::Given { column, .. } => Some(column),
            Labels::Unlabelled => None,
        }
    }

    /// The name of each label code, as the report groups rows: the distinct labels in their
    /// input type, or one group `all` for an unlabelled table.
    pub fn label_names(&self) -> ArrayRef {
        match &self.labels {
            Labels::Given { distinct, .. } => distinct.clone(),
            Labels::Unlabelled => Arc::new(arrow::array::StringArray::from(vec!["all"])),
        }
    }

    /// The passed-through column `name`, if read.
    pub fn extra(&self, name: &str) -> Option<&ArrayRef> {
        self.extra.iter().find(|(n, _)| n == name).map(|(_, a)| a)
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

    /// Number of distinct labels (1 without labels: every row has code 0).
    pub fn num_labels(&self) -> usize {
        match &self.labels {
            Labels::Given { distinct, .. } => distinct.len(),
            Labels::Unlabelled => 1,
        }
    }

    /// The vector of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    pub(super) fn assemble(
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
            return Ok(Table {
                label_codes: vec![0; ids.len()],
                ids,
                labels: Labels::Unlabelled,
                vectors,
                normalized: false,
                dim,
                sources,
                extra: Vec::new(),
            });
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
            labels: Labels::Given {
                column: labels,
                distinct: label_values,
            },
            label_codes,
            vectors,
            normalized: false,
            dim,
            sources,
            extra: Vec::new(),
        })
    }
}

pub(super) fn first_null(a: &dyn Array) -> Option<usize> {
    if a.null_count() == 0 {
        return None;
    }
    (0..a.len()).find(|&i| a.is_null(i))
}

pub(super) fn check_no_nulls(
    path: &Path,
    column: &str,
    a: &ArrayRef,
    first_row: u64,
) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    #[test]
    fn an_unlabelled_table_has_one_group_named_all_and_no_label_column() {
        let table = Table::unlabelled(None, vec![0.0, 1.0, 2.0], 1).unwrap();
        assert!(!table.labelled());
        assert!(table.label_column().is_none());
        assert_eq!(table.label_codes, vec![0, 0, 0]);
        assert_eq!(table.num_labels(), 1);
        let names = table.label_names();
        assert_eq!(names.as_string::<i32>().value(0), "all");
    }

    #[test]
    fn a_labelled_table_names_its_codes_by_its_sorted_labels() {
        let labels: ArrayRef = Arc::new(Int64Array::from(vec![7, 3, 7]));
        let table = Table::from_arrays(None, labels, vec![0.0, 1.0, 2.0], 1).unwrap();
        assert!(table.labelled());
        assert_eq!(table.label_codes, vec![1, 0, 1]);
        let names = table.label_names();
        let names = names.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(names.values().to_vec(), vec![3, 7]);
    }
}
