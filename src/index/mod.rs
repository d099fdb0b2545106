//! FAISS indexes as candidate generators.
//!
//! In: contiguous `f32` vectors and a factory string. Out: for each query, `k` candidate rows
//! with FAISS's distances converted to tripmine's distance (`l2sq`, or `1 - cos`), plus a bound
//! on how far those may be from the exact ones, so the miner can tell which part of a candidate
//! list is complete. Exact distances are always recomputed by the miner (see `score`).

mod group;

pub use group::{GroupIndex, Order};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

use faiss::index::IndexImpl;
use faiss::index::autotune::ParameterSpace;
use faiss::{Index, MetricType, index_factory, read_index, write_index};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::Metric;
use crate::error::faiss_message;
use crate::error::{Error, Result};
use crate::io::{AtomicPath, Sweeper, sweep, write_atomic};

/// Candidate rows of a batch of queries, `k` per query, nearest (or farthest) first.
///
/// Invariant: `dist` and `rows` hold `k` entries per query, in query order.
#[derive(Debug, Clone)]
pub struct Candidates {
    k: usize,
    /// FAISS's distance of each candidate, in tripmine's distance.
    dist: Vec<f32>,
    /// Row of each candidate, `-1` where FAISS found fewer than `k`.
    rows: Vec<i64>,
}

impl Candidates {
    fn from_search(res: faiss::index::SearchResult, k: usize) -> Self {
        let rows = res
            .labels
            .iter()
            .map(|l| l.get().map_or(-1, |r| r as i64))
            .collect();
        Candidates {
            k,
            dist: res.distances,
            rows,
        }
    }

    /// Candidates asked for per query (some may be missing: see [`Candidates::of`]).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Appends the candidates of later queries, searched with the same `k`.
    pub fn append(&mut self, later: Candidates) {
        assert_eq!(self.k, later.k, "candidates of one search share k");
        self.dist.extend_from_slice(&later.dist);
        self.rows.extend_from_slice(&later.rows);
    }

    /// Query `q`'s candidates as `(approximate distance, row)`.
    pub fn of(&self, q: usize) -> impl Iterator<Item = (f32, u32)> + '_ {
        let r = q * self.k..(q + 1) * self.k;
        self.dist[r.clone()]
            .iter()
            .zip(&self.rows[r])
            .filter(|(_, row)| **row >= 0)
            .map(|(d, row)| (*d, *row as u32))
    }
}

/// Relative error bound of FAISS's float32 distances for vectors of dimension `dim`,
/// to be multiplied by `|a|^2 + max |y|^2`. Deliberately loose: it only makes searches a
/// little deeper, never results different.
pub fn faiss_error_factor(dim: usize) -> f32 {
    4.0 * (dim as f32 + 2.0) * f32::EPSILON
}

pub use crate::config::AUTO_FLAT_ROWS;

/// The factory string `--index` means for a table of `rows` rows: `auto` becomes `Flat` for
/// small tables, else `IVF<n>,PQ<dim/2>x4fs` with `n` the power of two nearest `4 sqrt(rows)`
/// (FAISS's guideline is 4 to 16 sqrt(rows) lists, each trained on at least 39 points): 4-bit
/// product codes scanned with SIMD (fast-scan), a quarter of a byte per dimension. The index
/// only proposes candidates, which the miner rescores exactly, so coarse codes cost little
/// recall and keep the vectors the only large thing in memory (`IVF<n>,SQ8` for odd `dim`).
///
/// Under a memory limit, when `rows x dim` vectors take more than half of it (they are
/// spilled), `auto` picks the compressed layout whatever the number of rows.
pub fn resolve_factory_within(
    factory: &str,
    rows: usize,
    dim: usize,
    memory_limit: Option<u64>,
) -> String {
    resolve_factory(factory, rows, dim, memory_limit, AUTO_FLAT_ROWS)
}

/// As [`resolve_factory_within`], `Flat` below `exact_below` rows instead of
/// [`AUTO_FLAT_ROWS`]. Above, the IVF layout is a candidate: the run weighs it against the
/// exact engine on a sample before mining.
pub fn resolve_factory(
    factory: &str,
    rows: usize,
    dim: usize,
    memory_limit: Option<u64>,
    exact_below: usize,
) -> String {
    let factory = factory.trim();
    if !factory.eq_ignore_ascii_case("auto") {
        return factory.to_string();
    }
    let tight = memory_limit.is_some_and(|limit| (rows * dim * 4) as u64 > limit / 2);
    if rows < exact_below && !tight {
        return "Flat".into();
    }
    let lists = (4.0 * (rows as f64).sqrt()).log2().round().exp2() as usize;
    let lists = lists.clamp(16, 65_536);
    if dim.is_multiple_of(2) {
        format!("IVF{lists},PQ{}x4fs", dim / 2)
    } else {
        format!("IVF{lists},SQ8")
    }
}

/// Rows added to an index at a time.
const ADD_BATCH_ROWS: usize = 65_536;

/// Bytes of the table an exact index searched in place copies at a time.
const SHARD_BYTES: usize = 8 << 20;

/// Whether a factory string gives exact neighbours, so the mined sets equal brute force.
pub fn is_exact(factory: &str) -> bool {
    matches!(factory.trim(), "Flat" | "IDMap,Flat")
}

/// The number of IVF lists a factory string names (`IVF1024,Flat` gives 1024).
pub(crate) fn ivf_lists(factory: &str) -> Option<usize> {
    let at = factory.find("IVF")? + 3;
    let digits: String = factory[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// How the neighbour index is made and searched.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    /// A FAISS factory string (already resolved from `auto`).
    pub factory: String,
    pub train_sample: usize,
    pub seed: u64,
    pub nprobe: Option<usize>,
    pub ef_search: Option<usize>,
    /// Under a memory limit: bytes the training sample and each batch of added rows may
    /// take, and an exact index searches the table in place instead of copying it.
    pub memory: Option<BuildMemory>,
}

/// What an index build may hold beside the table and the index (see [`IndexSpec::memory`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildMemory {
    /// The training sample, counted twice (FAISS trains product codes on a copy of the
    /// residuals).
    pub train_bytes: usize,
    /// One batch of rows added (FAISS encodes it through a copy).
    pub add_bytes: usize,
}

/// Rows of `dim` values that `bytes` hold `copies` times over (at least one).
fn rows_within(bytes: usize, dim: usize, copies: usize) -> usize {
    (bytes / (dim * 4 * copies).max(1)).max(1)
}

/// What `--save-index` writes beside the FAISS file, and `--load-index` checks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IndexInfo {
    pub factory: String,
    pub metric: Metric,
    pub dim: usize,
    pub rows: usize,
    pub tripmine_version: String,
}

/// The index over the whole table, for the nearest neighbours of anchors.
pub struct NeighbourIndex {
    /// `None`: exact, holding no copy of the vectors (see [`NeighbourIndex::exact_shards`]).
    index: Option<IndexImpl>,
    /// Exact, with no memory limit: the first search copies the vectors into one Flat index
    /// (searches of many small shards pay FAISS's per-search costs many times; a run that
    /// never searches, the one-pass engine's, never copies).
    copy_when_searched: bool,
    metric: Metric,
    rows: usize,
    info: IndexInfo,
    /// The search parameters set: IVF lists probed, HNSW's `efSearch`.
    nprobe: Option<usize>,
    ef_search: Option<usize>,
}

/// FAISS's `efSearch` of an HNSW index when none is set.
pub const HNSW_DEFAULT_EF_SEARCH: usize = 16;

fn faiss_metric(metric: Metric) -> MetricType {
    match metric {
        Metric::L2sq => MetricType::L2,
        Metric::Cosine => MetricType::InnerProduct,
    }
}

impl NeighbourIndex {
    /// Builds `spec.factory` over `vectors` (already normalised for cosine), training on a
    /// seeded sample of `spec.train_sample` rows where the index needs it. The sample and the
    /// batches added are swept in order, told to `pages` (a spilled store reads ahead and
    /// drops its pages there).
    pub fn build(
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        spec: &IndexSpec,
        pages: &dyn Sweeper,
    ) -> Result<Self> {
        let factory = spec.factory.as_str();
        let rows = vectors.len() / dim;
        if is_exact(factory) {
            // A copy of the vectors would double the memory (and what a limit was set
            // against) for the same products.
            let mut exact = Self::exact_shards(dim, metric, rows);
            exact.copy_when_searched = spec.memory.is_none();
            exact.tune(spec)?;
            return Ok(exact);
        }
        let mut index = index_factory(dim as u32, factory, faiss_metric(metric)).map_err(|e| {
            Error::Config(format!(
                "--index `{factory}` cannot be built: {}",
                faiss_message(&e.to_string())
            ))
        })?;
        if !index.is_trained() {
            let most = spec.memory.map_or(spec.train_sample, |m| {
                spec.train_sample.min(rows_within(m.train_bytes, dim, 2))
            });
            let train = sample_rows(vectors, dim, most, spec.seed, pages);
            tracing::info!(factory, rows = train.len() / dim, "training index");
            index.train(&train).map_err(|e| {
                Error::Config(format!(
                    "--index `{factory}` cannot be trained on {} rows: {}",
                    train.len() / dim,
                    faiss_message(&e.to_string())
                ))
            })?;
        }
        add_in_batches(&mut index, vectors, dim, spec, pages)?;
        Self::ready(index, factory.to_string(), metric, dim, rows, spec)
    }

    /// An exact (`Flat`) index that holds no copy of the vectors: every search goes over them
    /// a shard at a time, each shard added to a small Flat index, and merges the shards' `k`
    /// nearest: the same matrix products as one Flat index without doubling the vectors'
    /// memory, though FAISS's per-search costs are paid per shard (a deepening search on
    /// E1 took 1.45 times as long). Every exact index starts so; without a memory limit it
    /// becomes one Flat index at its first search (`copy_when_searched`). Also
    /// `--check-recall`'s truth beside an approximate index.
    pub fn exact_shards(dim: usize, metric: Metric, rows: usize) -> Self {
        NeighbourIndex {
            index: None,
            copy_when_searched: false,
            metric,
            rows,
            nprobe: None,
            ef_search: None,
            info: IndexInfo {
                factory: "Flat".into(),
                metric,
                dim,
                rows,
                tripmine_version: env!("CARGO_PKG_VERSION").into(),
            },
        }
    }

    /// Loads an index saved by `--save-index`, refusing one made for other data.
    pub fn load(
        path: &Path,
        dim: usize,
        metric: Metric,
        rows: usize,
        spec: &IndexSpec,
    ) -> Result<Self> {
        let (index, factory) = read_saved(path, dim, metric, "--load-index")?;
        if index.ntotal() as usize != rows {
            return Err(Error::Config(format!(
                "--load-index {}: holds {} rows, the input has {rows}",
                path.display(),
                index.ntotal()
            )));
        }
        Self::ready(index, factory, metric, dim, rows, spec)
    }

    /// An index an incremental run's state kept (saved as `--save-index` does), grown by the
    /// rows appended to the table since (`vectors` past its first `kept_rows`): they are added
    /// to its lists, which are not trained again, so every run of the state searches one
    /// layout.
    pub fn extend(
        path: &Path,
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        kept_rows: usize,
        spec: &IndexSpec,
        pages: &dyn Sweeper,
    ) -> Result<Self> {
        let (mut index, factory) = read_saved(path, dim, metric, "the state's index")?;
        let rows = vectors.len() / dim;
        if index.ntotal() as usize != kept_rows || kept_rows > rows {
            return Err(Error::Config(format!(
                "the state's index {} holds {} rows, the state {kept_rows}: run with --force",
                path.display(),
                index.ntotal()
            )));
        }
        add_in_batches(&mut index, &vectors[kept_rows * dim..], dim, spec, pages)?;
        tracing::info!(
            factory,
            kept = kept_rows,
            added = rows - kept_rows,
            "index taken from the state, new rows added (not trained again)"
        );
        Self::ready(index, factory, metric, dim, rows, spec)
    }

    /// The index, described and tuned for searching.
    fn ready(
        index: IndexImpl,
        factory: String,
        metric: Metric,
        dim: usize,
        rows: usize,
        spec: &IndexSpec,
    ) -> Result<Self> {
        let info = IndexInfo {
            factory,
            metric,
            dim,
            rows,
            tripmine_version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut ready = NeighbourIndex {
            index: Some(index),
            copy_when_searched: false,
            metric,
            rows,
            info,
            nprobe: None,
            ef_search: None,
        };
        ready.tune(spec)?;
        Ok(ready)
    }

    /// Saves the index (FAISS's format) and `PATH.json` describing it, each atomically.
    /// An exact index is saved as a Flat index over `vectors` (the table's, as indexed),
    /// made for the save: searching needs no copy of them.
    pub fn save(&self, path: &Path, vectors: &[f32]) -> Result<()> {
        let made;
        let index = match &self.index {
            Some(index) => index,
            None => {
                made = flat_over(vectors, self.info.dim, self.metric, &())?;
                &made
            }
        };
        let target = AtomicPath::new(path)?;
        write_index(index, target.tmp().to_string_lossy().as_ref())
            .map_err(|e| Error::output(path, faiss_message(&e.to_string())))?;
        target.commit()?;
        write_atomic(
            &info_path(path),
            &serde_json::to_vec_pretty(&self.info).expect("info serialises"),
        )
    }

    /// What the index is (its factory string).
    pub fn info(&self) -> &IndexInfo {
        &self.info
    }

    /// Sets one FAISS search parameter; an index without it is a configuration error.
    fn set(&self, space: &ParameterSpace, name: &str, flag: &str, value: usize) -> Result<()> {
        let Some(index) = &self.index else {
            return Err(Error::Config(format!(
                "{flag} does not apply to `{}`: an exact search has no search parameters",
                self.info.factory
            )));
        };
        space
            .set_index_parameter(index, name, value as f64)
            .map_err(|e| {
                Error::Config(format!(
                    "{flag} does not apply to `{}`: {e}",
                    self.info.factory
                ))
            })
    }

    /// Search-time parameters: `nprobe` (IVF; default lists / 64, at least 8) and `efSearch`.
    fn tune(&mut self, spec: &IndexSpec) -> Result<()> {
        let nprobe = spec
            .nprobe
            .or_else(|| ivf_lists(&self.info.factory).map(|lists| (lists / 64).max(8).min(lists)));
        self.set_search(nprobe, spec.ef_search)?;
        if let Some(nprobe) = nprobe {
            tracing::info!(nprobe, "IVF lists probed per search");
        }
        Ok(())
    }

    /// Sets the search parameters given (recall tuning); the others stay.
    pub fn set_search(&mut self, nprobe: Option<usize>, ef_search: Option<usize>) -> Result<()> {
        let space = ParameterSpace::new()?;
        if let Some(nprobe) = nprobe
            && self.nprobe != Some(nprobe)
        {
            self.set(&space, "nprobe", "--nprobe", nprobe)?;
            self.nprobe = Some(nprobe);
        }
        if let Some(ef) = ef_search
            && self.ef_search != Some(ef)
        {
            self.set(&space, "efSearch", "--ef-search", ef)?;
            self.ef_search = Some(ef);
        }
        Ok(())
    }

    /// IVF lists probed per search (IVF indexes).
    pub fn nprobe(&self) -> Option<usize> {
        self.nprobe
    }

    /// HNSW's search depth (HNSW indexes; FAISS's default when none was set).
    pub fn ef_search(&self) -> Option<usize> {
        self.info
            .factory
            .contains("HNSW")
            .then(|| self.ef_search.unwrap_or(HNSW_DEFAULT_EF_SEARCH))
    }

    /// The IVF lists of the index (IVF indexes).
    pub fn lists(&self) -> Option<usize> {
        ivf_lists(&self.info.factory)
    }

    /// The IVF layer of the index, also behind transforms such as `OPQ` or `PCA` (whether
    /// one was passed), or null.
    fn ivf(&self) -> (*mut faiss_sys::FaissIndexIVF, bool) {
        use faiss_sys::faiss_IndexPreTransform_index;
        use faiss_sys::{faiss_IndexIVF_cast, faiss_IndexPreTransform_cast};
        let Some(index) = self.index.as_ref() else {
            return (std::ptr::null_mut(), false);
        };
        let mut transformed = false;
        // SAFETY: casts and a getter on the live index owned by `self`.
        unsafe {
            let mut inner = index.inner_ptr();
            loop {
                let ivf = faiss_IndexIVF_cast(inner);
                if !ivf.is_null() {
                    return (ivf, transformed);
                }
                let pre = faiss_IndexPreTransform_cast(inner);
                if pre.is_null() {
                    return (std::ptr::null_mut(), false);
                }
                inner = faiss_IndexPreTransform_index(pre);
                transformed = true;
            }
        }
    }

    /// The IVF list nearest each of `queries` (`None` unless the index is an IVF index
    /// without a transform, or when FAISS fails).
    pub fn lists_of_queries(&self, queries: &[f32]) -> Option<Vec<u32>> {
        use faiss_sys::{faiss_Index_assign, faiss_IndexIVF_quantizer};
        let (ivf, transformed) = self.ivf();
        if ivf.is_null() || transformed {
            return None;
        }
        let n = queries.len() / self.info.dim;
        let mut lists = vec![-1i64; n];
        // SAFETY: the quantizer belongs to the live index; `queries` holds `n` vectors of the
        // index's dimension and `lists` room for one label each.
        let status = unsafe {
            let quantizer = faiss_IndexIVF_quantizer(ivf);
            faiss_Index_assign(quantizer, n as i64, queries.as_ptr(), lists.as_mut_ptr(), 1)
        };
        (status == 0).then(|| lists.iter().map(|&l| l.max(0) as u32).collect())
    }

    /// The IVF list of every indexed row (IVF indexes, also behind a transform such as
    /// `OPQ` or `PCA`; `None` for other indexes). Rows of one list are near each other, so
    /// anchors taken list by list share most of their candidates.
    pub fn lists_of_rows(&self) -> Option<Vec<u32>> {
        use faiss_sys::{
            faiss_IndexIVF_get_list_size, faiss_IndexIVF_invlists_get_ids, faiss_IndexIVF_nlist,
        };
        let (ivf, _) = self.ivf();
        if ivf.is_null() {
            return None;
        }
        // SAFETY: `ivf` is part of the live index owned by `self` and only read; each list's
        // ids are written into a buffer of the list's own size.
        unsafe {
            let mut list_of = vec![u32::MAX; self.rows];
            let mut ids: Vec<i64> = Vec::new();
            for list in 0..faiss_IndexIVF_nlist(ivf) {
                let size = faiss_IndexIVF_get_list_size(ivf, list);
                ids.clear();
                ids.resize(size, -1);
                faiss_IndexIVF_invlists_get_ids(ivf, list, ids.as_mut_ptr());
                for &id in &ids {
                    if let Some(slot) = usize::try_from(id).ok().and_then(|i| list_of.get_mut(i)) {
                        *slot = list as u32;
                    }
                }
            }
            Some(list_of)
        }
    }

    /// The `k` nearest candidates of each query (rows of `queries`). `base` is the vectors
    /// indexed, which an index of shards sweeps (telling `pages`).
    pub fn search(
        &mut self,
        queries: &[f32],
        k: usize,
        base: &[f32],
        pages: &dyn Sweeper,
    ) -> Result<Candidates> {
        let k = k.min(self.rows).max(1);
        if self.index.is_none() && self.copy_when_searched {
            self.index = Some(flat_over(base, self.info.dim, self.metric, pages)?);
        }
        let Some(index) = &mut self.index else {
            let (dim, metric) = (self.info.dim, self.metric);
            // Shards of a few MiB: each is copied into a small Flat index for the search.
            let shard_rows = rows_within(SHARD_BYTES, dim, 1).min(ADD_BATCH_ROWS);
            return search_shards(base, dim, metric, queries, k, shard_rows, pages);
        };
        // An approximate search runs its own OpenMP threads; OpenBLAS threads (its coarse
        // quantizer's products) beside them spin on the same cores after each call, into the
        // exact rescoring that follows (15% of the mining on E3's shape).
        let _blas = (!is_exact(&self.info.factory)).then(crate::process::BlasThreads::single);
        let mut c = Candidates::from_search(index.search(queries, k)?, k);
        to_distance(self.metric, &mut c.dist);
        Ok(c)
    }
}

/// FAISS's scores as tripmine's distances (cosine: `1 - inner product`).
fn to_distance(metric: Metric, dist: &mut [f32]) {
    if metric == Metric::Cosine {
        for d in dist {
            *d = 1.0 - *d;
        }
    }
}

/// A Flat index over `vectors`, swept in batches (telling `pages`).
fn flat_over(
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    pages: &dyn Sweeper,
) -> Result<IndexImpl> {
    let mut flat = index_factory(dim as u32, "Flat", faiss_metric(metric))?;
    for batch in sweep(vectors, ADD_BATCH_ROWS * dim, pages) {
        flat.add(batch)?;
    }
    Ok(flat)
}

/// `(distance, row)` entries of a list of nearest rows.
type Ranked = Vec<(f32, i64)>;

/// The `k` nearest rows of `base` for each query, exactly, one Flat index of `shard_rows`
/// rows at a time; lists merged by (distance, row).
fn search_shards(
    base: &[f32],
    dim: usize,
    metric: Metric,
    queries: &[f32],
    k: usize,
    shard_rows: usize,
    pages: &dyn Sweeper,
) -> Result<Candidates> {
    let nq = queries.len() / dim;
    // `k` slots a query, empty ones (row -1) last.
    let mut best: Vec<(f32, i64)> = vec![(f32::INFINITY, -1); nq * k];
    for (s, shard) in sweep(base, shard_rows * dim, pages).enumerate() {
        let offset = (s * shard_rows) as i64;
        let mut flat = flat_over(shard, dim, metric, &())?;
        let kk = k.min(shard.len() / dim);
        let mut c = Candidates::from_search(flat.search(queries, kk)?, kk);
        to_distance(metric, &mut c.dist);
        // Both lists in (distance, row) order, merged in one pass; queries in parallel.
        let c = &c;
        best.par_chunks_exact_mut(k).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(shard, merged): &mut (Ranked, Ranked), (q, kept)| {
                shard.clear();
                shard.extend(c.of(q).map(|(d, r)| (d, r as i64 + offset)));
                // FAISS orders by distance; ties by row here.
                for run in shard.chunk_by_mut(|x, y| x.0 == y.0) {
                    run.sort_unstable_by_key(|x| x.1);
                }
                let old = &kept[..kept.iter().take_while(|x| x.1 >= 0).count()];
                merged.clear();
                let (mut i, mut j) = (0, 0);
                while merged.len() < k && (i < old.len() || j < shard.len()) {
                    let take_old = j == shard.len()
                        || (i < old.len()
                            && old[i]
                                .0
                                .total_cmp(&shard[j].0)
                                .then(old[i].1.cmp(&shard[j].1))
                                .is_lt());
                    if take_old {
                        merged.push(old[i]);
                        i += 1;
                    } else {
                        merged.push(shard[j]);
                        j += 1;
                    }
                }
                merged.resize(k, (f32::INFINITY, -1));
                kept.copy_from_slice(&merged[..k]);
            },
        );
    }
    Ok(Candidates {
        k,
        dist: best.iter().map(|x| x.0).collect(),
        rows: best.iter().map(|x| x.1).collect(),
    })
}

/// Rows a block of the sweep that takes a training sample covers.
const SAMPLE_BLOCK_ROWS: usize = 16_384;

/// A seeded sample of at most `max` rows, in row order.
fn sample_rows(
    vectors: &[f32],
    dim: usize,
    max: usize,
    seed: u64,
    pages: &dyn Sweeper,
) -> Vec<f32> {
    let rows = vectors.len() / dim;
    if rows <= max {
        return vectors.to_vec();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked = rand::seq::index::sample(&mut rng, rows, max).into_vec();
    picked.sort_unstable();
    let mut out = Vec::with_capacity(max * dim);
    // A sample spread over a spilled store touches most of its pages: swept in order.
    let mut picked = picked.into_iter().peekable();
    for (b, block) in sweep(vectors, SAMPLE_BLOCK_ROWS * dim, pages).enumerate() {
        let first = b * SAMPLE_BLOCK_ROWS;
        while let Some(r) = picked.next_if(|&r| r < first + block.len() / dim) {
            out.extend_from_slice(&block[(r - first) * dim..(r - first + 1) * dim]);
        }
    }
    out
}

/// Adds `vectors` to `index` in batches that fit the build's memory (telling `pages`).
fn add_in_batches(
    index: &mut IndexImpl,
    vectors: &[f32],
    dim: usize,
    spec: &IndexSpec,
    pages: &dyn Sweeper,
) -> Result<()> {
    let batch_rows = spec.memory.map_or(ADD_BATCH_ROWS, |m| {
        ADD_BATCH_ROWS.min(rows_within(m.add_bytes, dim, 2))
    });
    for batch in sweep(vectors, batch_rows * dim, pages) {
        index.add(batch)?;
    }
    Ok(())
}

/// A saved index and its factory string (from its `PATH.json`), refused if it was made for
/// another dimension or metric; `what` names it in messages.
fn read_saved(path: &Path, dim: usize, metric: Metric, what: &str) -> Result<(IndexImpl, String)> {
    let mismatch = |why: String| Error::Config(format!("{what} {}: {why}", path.display()));
    if !path.is_file() {
        return Err(mismatch("no such file".into()));
    }
    let index = read_index(path.to_string_lossy().as_ref()).map_err(|e| {
        mismatch(format!(
            "not a FAISS index ({})",
            faiss_message(&e.to_string())
        ))
    })?;
    let loaded_metric = match index.metric_type() {
        MetricType::L2 => Metric::L2sq,
        MetricType::InnerProduct => Metric::Cosine,
    };
    if index.d() as usize != dim {
        return Err(mismatch(format!(
            "made for dimension {}, the input has {dim}",
            index.d()
        )));
    }
    if loaded_metric != metric {
        return Err(mismatch(format!(
            "made for metric {loaded_metric:?}, this run uses {metric:?}"
        )));
    }
    let factory = std::fs::read(info_path(path))
        .ok()
        .and_then(|b| serde_json::from_slice::<IndexInfo>(&b).ok())
        .map_or_else(|| format!("loaded from {}", path.display()), |i| i.factory);
    Ok((index, factory))
}

/// `PATH.json`, beside a saved index.
fn info_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.json", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_flat_for_small_tables_and_ivf_sized_to_large_ones() {
        assert_eq!(resolve_factory_within("auto", 1000, 8, None), "Flat");
        assert_eq!(
            resolve_factory_within("auto", 1_000_000, 128, None),
            "IVF4096,PQ64x4fs"
        );
        assert_eq!(
            resolve_factory_within("auto", 5_000_000, 64, None),
            "IVF8192,PQ32x4fs"
        );
        assert_eq!(
            resolve_factory_within("auto", 300_000, 33, None),
            "IVF2048,SQ8"
        );
        assert_eq!(
            resolve_factory_within("auto", 1000, 8, Some(16_000)),
            "IVF128,PQ4x4fs",
            "compressed under a tight limit however small"
        );
        assert_eq!(resolve_factory_within(" HNSW32 ", 10, 8, None), "HNSW32");
    }

    #[test]
    fn a_search_shard_by_shard_equals_one_flat_index() {
        use rand::RngExt;
        let (rows, dim, nq, k) = (1000, 8, 50, 40);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut base: Vec<f32> = (0..rows * dim).map(|_| rng.random::<f32>() - 0.5).collect();
        crate::score::normalize_rows(&mut base, dim);
        let queries = base[..nq * dim].to_vec();
        for metric in [Metric::L2sq, Metric::Cosine] {
            let spec = IndexSpec {
                factory: "Flat".into(),
                train_sample: 0,
                seed: 0,
                nprobe: None,
                ef_search: None,
                memory: None,
            };
            let mut flat = NeighbourIndex::build(&base, dim, metric, &spec, &()).unwrap();
            let want = flat.search(&queries, k, &base, &()).unwrap();
            // Shards of 32 rows, fewer than k: 32 of them, the last of 8 rows.
            let got = search_shards(&base, dim, metric, &queries, k, 32, &()).unwrap();
            assert_eq!(
                got.rows, want.rows,
                "{metric:?}: the same rows in the same order"
            );
            for (g, w) in got.dist.iter().zip(&want.dist) {
                assert!((g - w).abs() <= 1e-5, "{metric:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn ivf_lists_are_read_from_factory_strings() {
        assert_eq!(ivf_lists("IVF1024,Flat"), Some(1024));
        assert_eq!(ivf_lists("OPQ16,IVF256,PQ16"), Some(256));
        assert_eq!(ivf_lists("HNSW32"), None);
    }
}
