//! Retrieval input: queries, a corpus and the known (query, document) positives.
//!
//! In: the queries' and the corpus' files (id and embedding columns, plus `--with` columns),
//! and the positives as a qrels table (`query_id`, `doc_id`) or a list column of document ids
//! in the queries. Out: two unlabelled [`Table`]s and, for every query row, the sorted corpus
//! rows of its known positives ([`Queries`]).

use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, Rows, SortField};

use super::read::{ReadOptions, read_columns, read_table_with};
use super::table::Table;
use crate::config::{ColumnNames, InputOptions};
use crate::error::{Error, Result, contain_panics};

/// The anchors of retrieval mode.
#[derive(Debug, Clone)]
pub struct Queries {
    /// Query ids, vectors and passed-through columns (no labels).
    pub table: Table,
    /// Corpus rows of every query's known positives, sorted, without repeats.
    pub positives: Vec<Vec<u32>>,
    /// Qrels rows naming a query that is not among the queries (skipped).
    pub unknown_queries: u64,
}

impl Queries {
    /// Whether corpus row `doc` is a known positive of query `q`.
    #[inline]
    pub fn is_positive(&self, q: u32, doc: u32) -> bool {
        self.positives[q as usize].binary_search(&doc).is_ok()
    }
}

/// Reads the corpus and the queries with their positives.
pub fn read_retrieval(input: &InputOptions, options: &ReadOptions) -> Result<(Table, Queries)> {
    let columns = |extra: Vec<String>| ColumnNames {
        id: input.id_col.clone(),
        label: None,
        embedding: input.embedding_col.clone(),
        extra,
    };
    let corpus = read_table_with(&input.corpus, &columns(input.with.clone()), options)?;
    let mut query_extra = input.with.clone();
    query_extra.extend(input.positives_col.iter().cloned());
    // A dimension unlike the corpus' is refused by the miner, for library callers too.
    // Only the corpus grows: rows a state kept are the corpus'.
    let query_options = ReadOptions {
        kept: None,
        ..options.clone()
    };
    let mut queries = read_table_with(&input.queries, &columns(query_extra), &query_options)?;
    let id_name = input.id_col.as_deref().unwrap_or("id");
    let docs = IdMap::new(&corpus, id_name)?;
    let (positives, unknown_queries) = match (&input.qrels, &input.positives_col) {
        (Some(qrels), _) => {
            let by_query = IdMap::new(&queries, id_name)?;
            contain_panics(qrels, || {
                read_qrels(qrels, input, &by_query, &docs, queries.rows())
            })?
        }
        (None, Some(col)) => {
            let list = queries
                .extra
                .pop()
                .expect("the positives column was read last")
                .1;
            (list_positives(&queries, col, &list, &docs)?, 0)
        }
        (None, None) => {
            return Err(Error::Config(
                "retrieval mode needs --qrels or --positives-col".into(),
            ));
        }
    };
    if unknown_queries > 0 {
        tracing::warn!(
            rows = unknown_queries,
            "qrels rows name queries that are not among the queries; skipped"
        );
    }
    Ok((
        corpus,
        Queries {
            table: queries,
            positives,
            unknown_queries,
        },
    ))
}

/// Row of every id of a table; ids must be unique. Held as the ids in arrow's row format and
/// (hash, row) pairs sorted by hash, 12 bytes a row beside the ids, rather than a hash map of
/// owned keys (about 100 bytes a row: 100 MB for a corpus of a million documents).
struct IdMap {
    converter: RowConverter,
    ids: Rows,
    by_hash: Vec<(u64, u32)>,
    data_type: DataType,
}

/// Dictionary-encoded keys compare by value.
fn plain(a: &ArrayRef) -> Result<ArrayRef> {
    match a.data_type() {
        DataType::Dictionary(_, v) => Ok(arrow::compute::cast(a, v)?),
        _ => Ok(a.clone()),
    }
}

/// The hash of an id in the row format (fixed keys: the same in every run).
fn id_hash(id: &[u8]) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

impl IdMap {
    fn new(table: &Table, id_name: &str) -> Result<Self> {
        let ids = plain(&table.ids)?;
        if let Some((first, row)) = crate::io::table::first_repeated_id(&ids)? {
            let (file, at) = table.locate(row);
            let (first_file, first_at) = table.locate(first);
            return Err(Error::BadValue {
                file,
                column: id_name.into(),
                row: at,
                reason: format!(
                    "id repeats row {first_at} of {}; retrieval ids must be unique",
                    first_file.display()
                ),
            });
        }
        let data_type = ids.data_type().clone();
        let converter = RowConverter::new(vec![SortField::new(data_type.clone())])?;
        let ids = converter.convert_columns(&[ids])?;
        let mut by_hash: Vec<(u64, u32)> = (0..ids.num_rows())
            .map(|i| (id_hash(ids.row(i).as_ref()), i as u32))
            .collect();
        by_hash.sort_unstable();
        Ok(IdMap {
            converter,
            ids,
            by_hash,
            data_type,
        })
    }

    /// The row holding `key` (in the row format), if any.
    fn row_of(&self, key: &[u8]) -> Option<u32> {
        let h = id_hash(key);
        let from = self.by_hash.partition_point(|e| e.0 < h);
        self.by_hash[from..]
            .iter()
            .take_while(|e| e.0 == h)
            .find(|e| self.ids.row(e.1 as usize).as_ref() == key)
            .map(|e| e.1)
    }

    /// The row of every key (`None`: unknown); keys are cast to the ids' type.
    fn lookup(&self, keys: &ArrayRef, file: &Path, column: &str) -> Result<Vec<Option<u32>>> {
        let strict = CastOptions {
            safe: false,
            ..Default::default()
        };
        let keys = cast_with_options(&plain(keys)?, &self.data_type, &strict).map_err(|e| {
            Error::UnsupportedType {
                file: file.into(),
                column: column.into(),
                found: format!("{} ({e})", keys.data_type()),
                expected: format!("ids of the type {}", self.data_type),
            }
        })?;
        let converted = self.converter.convert_columns(&[keys])?;
        Ok(converted.iter().map(|k| self.row_of(k.as_ref())).collect())
    }
}

/// Positives from a qrels file, streamed batch by batch.
fn read_qrels(
    path: &Path,
    input: &InputOptions,
    queries: &IdMap,
    docs: &IdMap,
    num_queries: usize,
) -> Result<(Vec<Vec<u32>>, u64)> {
    let (qcol, dcol) = (&input.qrels_query_col, &input.qrels_doc_col);
    let reader = read_columns(path, &[qcol, dcol], 65_536)?;
    let mut positives = vec![Vec::new(); num_queries];
    let mut unknown_queries = 0u64;
    let mut first_row = 0u64;
    for batch in reader {
        let batch = batch?;
        let q = batch.column_by_name(qcol).expect("projected");
        let d = batch.column_by_name(dcol).expect("projected");
        for (name, a) in [(qcol, q), (dcol, d)] {
            if let Some(row) = (0..a.len()).find(|&i| a.is_null(i)) {
                return Err(Error::BadValue {
                    file: path.into(),
                    column: name.clone(),
                    row: first_row + row as u64,
                    reason: "value is null".into(),
                });
            }
        }
        let q_rows = queries.lookup(q, path, qcol)?;
        let d_rows = docs.lookup(d, path, dcol)?;
        for (i, (q, d)) in q_rows.into_iter().zip(d_rows).enumerate() {
            let Some(d) = d else {
                return Err(Error::BadValue {
                    file: path.into(),
                    column: dcol.clone(),
                    row: first_row + i as u64,
                    reason: "document id not found in the corpus".into(),
                });
            };
            match q {
                Some(q) => positives[q as usize].push(d),
                None => unknown_queries += 1,
            }
        }
        first_row += batch.num_rows() as u64;
    }
    for p in &mut positives {
        p.sort_unstable();
        p.dedup();
    }
    Ok((positives, unknown_queries))
}

/// Positives from a list column of document ids in the queries (a null list: none).
fn list_positives(
    queries: &Table,
    column: &str,
    list: &ArrayRef,
    docs: &IdMap,
) -> Result<Vec<Vec<u32>>> {
    let (values, offsets): (ArrayRef, Vec<usize>) = match list.data_type() {
        DataType::List(_) => {
            let l = list.as_list::<i32>();
            (
                l.values().clone(),
                l.value_offsets().iter().map(|&o| o as usize).collect(),
            )
        }
        DataType::LargeList(_) => {
            let l = list.as_list::<i64>();
            (
                l.values().clone(),
                l.value_offsets().iter().map(|&o| o as usize).collect(),
            )
        }
        other => {
            let (file, _) = queries.locate(0);
            return Err(Error::UnsupportedType {
                file,
                column: column.into(),
                found: other.to_string(),
                expected: "a list of document ids".into(),
            });
        }
    };
    let (file, _) = queries.locate(0);
    let found = docs.lookup(&values, &file, column)?;
    let mut positives = Vec::with_capacity(queries.rows());
    for q in 0..queries.rows() {
        let mut rows = Vec::new();
        if !list.is_null(q) {
            for (v, doc) in found
                .iter()
                .enumerate()
                .take(offsets[q + 1])
                .skip(offsets[q])
            {
                let missing = if values.is_null(v) {
                    Some("holds a null document id")
                } else if doc.is_none() {
                    Some("names a document id not found in the corpus")
                } else {
                    None
                };
                if let Some(reason) = missing {
                    let (file, row) = queries.locate(q);
                    return Err(Error::BadValue {
                        file,
                        column: column.into(),
                        row,
                        reason: reason.into(),
                    });
                }
                rows.push(doc.expect("checked"));
            }
        }
        rows.sort_unstable();
        rows.dedup();
        positives.push(rows);
    }
    Ok(positives)
}
