//! A labelled Gaussian-mixture table with overlapping classes, for examples, tests and benches.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::io::ParquetSink;

/// Shape of a generated table.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSpec {
    pub rows: usize,
    pub dim: usize,
    pub labels: usize,
    pub seed: u64,
    /// Spread of class centres relative to the within-class spread (1.0 each): small values
    /// make classes overlap, so hard, semi-hard and easy triplets all occur.
    pub separation: f32,
    /// Dimension of the subspace centres and within-class spread live in (`None`: all of
    /// `dim`). Real embeddings concentrate near a few dozen directions; isotropic noise in
    /// every dimension makes all neighbours nearly equidistant, the worst case for an
    /// approximate index. Rows get a small full-rank residual as well.
    pub intrinsic_dim: Option<usize>,
}

impl GenSpec {
    fn validate(&self) -> Result<()> {
        if self.rows < 2 || self.dim < 1 || self.labels < 2 {
            return Err(Error::Config(format!(
                "gen needs rows >= 2, dim >= 1 and labels >= 2 (got {} x {}, {} labels)",
                self.rows, self.dim, self.labels
            )));
        }
        if self.intrinsic_dim.is_some_and(|r| r == 0 || r > self.dim) {
            return Err(Error::Config(format!(
                "the intrinsic dimension must be between 1 and dim = {}",
                self.dim
            )));
        }
        if !self.separation.is_finite() || self.separation < 0.0 {
            return Err(Error::Config(
                "separation must be a finite number >= 0".into(),
            ));
        }
        Ok(())
    }
}

/// The schema of generated tables: `id: Int64, label: Int64, embedding: FixedSizeList<Float32>`.
pub fn gen_schema(dim: usize) -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Int64, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim as i32,
            ),
            false,
        ),
    ]))
}

/// Generates the table in memory, in batches of at most `batch_rows` rows.
pub fn generate(spec: &GenSpec, batch_rows: usize) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    generate_each(spec, batch_rows, |b| {
        batches.push(b);
        Ok(())
    })?;
    Ok(batches)
}

/// Generates the table batch by batch, handing each to `sink`, so memory stays bounded.
///
/// Vectors are scaled by `1/sqrt(dim)` so squared distances are O(1) whatever the dimension,
/// which keeps the default margin of 0.2 meaningful.
pub fn generate_each(
    spec: &GenSpec,
    batch_rows: usize,
    sink: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    spec.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let dim = spec.dim;
    let scale = 1.0 / (dim as f32).sqrt();
    let normal = |s: f32, rng: &mut ChaCha8Rng| -> f32 {
        Distribution::<f32>::sample(&StandardNormal, rng) * s
    };
    let Some(r) = spec.intrinsic_dim else {
        let centres: Vec<f32> = (0..spec.labels * dim)
            .map(|_| normal(spec.separation, &mut rng) * scale)
            .collect();
        return in_batches(spec, batch_rows, sink, |values| {
            let label = rng.random_range(0..spec.labels);
            for &c in &centres[label * dim..(label + 1) * dim] {
                values.push(c + normal(scale, &mut rng));
            }
            label
        });
    };
    // Centres and spread in `r` dimensions, mapped into `dim` by a fixed random projection
    // that keeps squared distances on average (entries of variance 1 / dim), plus a residual
    // of a tenth of the spread in every dimension.
    let low = 1.0 / (r as f32).sqrt();
    let projection: Vec<f32> = (0..r * dim).map(|_| normal(scale, &mut rng)).collect();
    let centres: Vec<f32> = (0..spec.labels * r)
        .map(|_| normal(spec.separation * low, &mut rng))
        .collect();
    let mut point = vec![0f32; r];
    in_batches(spec, batch_rows, sink, |values| {
        let label = rng.random_range(0..spec.labels);
        for (p, c) in point.iter_mut().zip(&centres[label * r..(label + 1) * r]) {
            *p = c + normal(low, &mut rng);
        }
        for j in 0..dim {
            let mapped: f32 = (0..r).map(|i| point[i] * projection[i * dim + j]).sum();
            values.push(mapped + normal(0.1 * scale, &mut rng));
        }
        label
    })
}

/// Hands `sink` batches of `spec.rows` rows, `row` pushing each row's values and giving its
/// label.
fn in_batches(
    spec: &GenSpec,
    batch_rows: usize,
    mut sink: impl FnMut(RecordBatch) -> Result<()>,
    mut row: impl FnMut(&mut Vec<f32>) -> usize,
) -> Result<()> {
    let schema = gen_schema(spec.dim);
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let mut start = 0usize;
    while start < spec.rows {
        let len = batch_rows.max(1).min(spec.rows - start);
        let mut values = Vec::with_capacity(len * spec.dim);
        let labels: Vec<i64> = (0..len).map(|_| row(&mut values) as i64).collect();
        let ids = Int64Array::from_iter_values(start as i64..(start + len) as i64);
        let embedding = FixedSizeListArray::try_new(
            item.clone(),
            spec.dim as i32,
            Arc::new(Float32Array::from(values)),
            None,
        )?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(Int64Array::from(labels)),
            Arc::new(embedding),
        ];
        sink(RecordBatch::try_new(schema.clone(), columns)?)?;
        start += len;
    }
    Ok(())
}

/// Generates the table and writes it to `out` (atomically).
pub fn generate_to_file(spec: &GenSpec, out: &Path) -> Result<()> {
    let mut sink = ParquetSink::create(out, gen_schema(spec.dim))?;
    generate_each(spec, 65_536, |b| sink.write(&b))?;
    sink.finish()
}

/// Writes a retrieval example into the folder `out`: `corpus.parquet` (`id`, `text`,
/// `embedding`) of `spec.rows` documents on `spec.labels` topics, some of them near-duplicates
/// of others; `queries.parquet` (`id`, `text`, `embedding`) of `queries` queries, each near one
/// document; and `qrels.parquet` (`query_id`, `doc_id`): that document, plus sometimes another
/// of its topic. Other documents of the topic stay unlabelled, as in real data: the false
/// negatives the guards are for. Ids are strings (`d12`, `q3`).
pub fn generate_retrieval(spec: &GenSpec, queries: usize, out: &Path) -> Result<()> {
    use arrow::array::StringArray;
    spec.validate()?;
    if queries == 0 {
        return Err(Error::Config("gen --retrieval needs --queries >= 1".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let (dim, docs) = (spec.dim, spec.rows);
    let scale = 1.0 / (dim as f32).sqrt();
    let mut normal = |s: f32| Distribution::<f32>::sample(&StandardNormal, &mut rng) * s;
    let centres: Vec<f32> = (0..spec.labels * dim)
        .map(|_| normal(spec.separation * scale))
        .collect();
    let mut topic = Vec::with_capacity(docs);
    let mut doc_vectors: Vec<f32> = Vec::with_capacity(docs * dim);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5eed);
    for d in 0..docs {
        // One document in ten repeats an earlier one of its topic, almost exactly.
        if d > 0 && rng.random_range(0..10) == 0 {
            let of = rng.random_range(0..d);
            topic.push(topic[of]);
            for j in 0..dim {
                let noise: f32 = StandardNormal.sample(&mut rng);
                doc_vectors.push(doc_vectors[of * dim + j] + noise * 0.02 * scale);
            }
            continue;
        }
        let t = rng.random_range(0..spec.labels);
        topic.push(t);
        for j in 0..dim {
            let noise: f32 = StandardNormal.sample(&mut rng);
            doc_vectors.push(centres[t * dim + j] + noise * scale);
        }
    }
    let mut query_vectors = Vec::with_capacity(queries * dim);
    let (mut qrel_q, mut qrel_d) = (Vec::new(), Vec::new());
    for q in 0..queries {
        let d = rng.random_range(0..docs);
        for j in 0..dim {
            let noise: f32 = StandardNormal.sample(&mut rng);
            query_vectors.push(doc_vectors[d * dim + j] + noise * 0.5 * scale);
        }
        qrel_q.push(format!("q{q}"));
        qrel_d.push(format!("d{d}"));
        if rng.random_range(0..3) == 0 {
            let other = rng.random_range(0..docs);
            if other != d && topic[other] == topic[d] {
                qrel_q.push(format!("q{q}"));
                qrel_d.push(format!("d{other}"));
            }
        }
    }
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let emb_type = DataType::FixedSizeList(item.clone(), dim as i32);
    let table = |prefix: &str, texts: Vec<String>, vectors: Vec<f32>| -> Result<RecordBatch> {
        let n = texts.len();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, false),
            Field::new("embedding", emb_type.clone(), false),
        ]));
        let ids = StringArray::from_iter_values((0..n).map(|i| format!("{prefix}{i}")));
        let embedding = FixedSizeListArray::try_new(
            item.clone(),
            dim as i32,
            Arc::new(Float32Array::from(vectors)),
            None,
        )?;
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(ids),
                Arc::new(StringArray::from(texts)),
                Arc::new(embedding),
            ],
        )?)
    };
    let doc_texts = (0..docs)
        .map(|d| format!("document {d} on topic {}", topic[d]))
        .collect();
    let query_texts = (0..queries).map(|q| format!("question {q}")).collect();
    crate::io::write_parquet(
        &out.join("corpus.parquet"),
        &table("d", doc_texts, doc_vectors)?,
    )?;
    crate::io::write_parquet(
        &out.join("queries.parquet"),
        &table("q", query_texts, query_vectors)?,
    )?;
    let qrels = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("query_id", DataType::Utf8, false),
            Field::new("doc_id", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(qrel_q)),
            Arc::new(StringArray::from(qrel_d)),
        ],
    )?;
    crate::io::write_parquet(&out.join("qrels.parquet"), &qrels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Float32Type;

    fn spec(intrinsic_dim: Option<usize>) -> GenSpec {
        GenSpec {
            rows: 4000,
            dim: 16,
            labels: 20,
            seed: 3,
            separation: 1.5,
            intrinsic_dim,
        }
    }

    /// The participation ratio `tr(C)^2 / |C|_F^2` of the rows' covariance: how many
    /// directions the spread fills (all of `dim` when isotropic).
    fn directions_filled(spec: &GenSpec) -> f64 {
        let d = spec.dim;
        let mut rows: Vec<f64> = Vec::new();
        for b in generate(spec, 1000).unwrap() {
            let emb = b.column(2).as_fixed_size_list();
            rows.extend(
                emb.values()
                    .as_primitive::<Float32Type>()
                    .values()
                    .iter()
                    .map(|&x| x as f64),
            );
        }
        let n = rows.len() / d;
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..n).map(|i| rows[i * d + j]).sum::<f64>() / n as f64)
            .collect();
        let mut cov = vec![0f64; d * d];
        for i in 0..n {
            for a in 0..d {
                for b in 0..d {
                    cov[a * d + b] += (rows[i * d + a] - mean[a]) * (rows[i * d + b] - mean[b]);
                }
            }
        }
        let trace: f64 = (0..d).map(|a| cov[a * d + a]).sum();
        let frobenius_sq: f64 = cov.iter().map(|c| c * c).sum();
        trace * trace / frobenius_sq
    }

    #[test]
    fn an_intrinsic_dimension_confines_the_spread_to_that_many_directions() {
        let isotropic = directions_filled(&spec(None));
        let low_rank = directions_filled(&spec(Some(4)));
        assert!(
            isotropic > 8.0,
            "isotropic rows fill most of 16: {isotropic}"
        );
        assert!(low_rank < 4.2, "rank-4 rows fill at most 4: {low_rank}");
    }

    #[test]
    fn an_intrinsic_dimension_outside_one_to_dim_is_refused() {
        for r in [0, 17] {
            assert!(matches!(
                generate(&spec(Some(r)), 100),
                Err(Error::Config(_))
            ));
        }
    }
}
