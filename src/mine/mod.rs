//! Triplet mining over a table in memory.
//!
//! In: a labelled [`Table`] (every row an anchor, positives share its label), or a corpus and
//! [`Queries`] (retrieval mode: queries are the anchors, their known positives are listed), and
//! validated [`MiningParams`]. Out: blocks of [`Triplet`]s (row positions and exact distances)
//! with one [`AnchorRecord`] per anchor, in anchor order; [`Miner::finish`] then applies the
//! cross-anchor rules (negative reuse cap, shortfall policy).
//!
//! In retrieval mode anchors are query rows and positives and negatives corpus rows; every
//! definition below reads "same label" as "a known positive of this query".
//!
//! With an exact index every set equals what an exhaustive search over the whole table gives:
//! FAISS only proposes candidates; their distances are recomputed exactly, and a candidate list
//! is trusted only below the distance where rows FAISS did not return could start (its last
//! distance less an error bound). An anchor whose selection reaches past that point is searched
//! again deeper, up to a full scan.

mod incremental;
mod negatives;
mod onepass;
mod positives;
mod recall;
mod reuse_and_shortfall;

pub use incremental::{NewRows, Sifted};
pub use negatives::{GUARDS, Guard};
pub use onepass::Tiles;
pub use recall::{AutoChoice, Estimate, Recall, RunCost, SearchKnobs, Truth, TuneStep, Tuning};

use std::borrow::Cow;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::config::{Metric, MiningParams};
use crate::error::{Error, Result};
use crate::index::{
    BuildMemory, Candidates, IndexInfo, IndexSpec, NeighbourIndex, faiss_error_factor, is_exact,
    resolve_factory,
};
use crate::io::{Queries, ReorderedRows, Table, sweep};
use crate::memory::Scratch;
use crate::score::{dot, normalize_rows};

/// One mined triplet, by row position, with exact distances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Triplet {
    pub anchor: u32,
    pub positive: u32,
    pub negative: u32,
    pub d_ap: f32,
    pub d_an: f32,
    /// Position of the negative among the anchor's neighbours (all other rows, by distance
    /// then row), 0 = nearest.
    pub negative_rank: u32,
}

/// The labels of an anchor's `suspects_k` nearest other rows (ties by the smaller row).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighbourLabels {
    /// Share of them with the anchor's label.
    pub agreement: f32,
    /// Their most frequent label code (ties: the smaller code).
    pub majority: u32,
}

impl NeighbourLabels {
    /// Label-noise suspect: most neighbours carry one other label.
    pub fn suspect(&self, label: u32) -> bool {
        self.majority != label && self.agreement < 0.5
    }
}

/// What happened to one anchor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnchorRecord {
    pub anchor: u32,
    /// Label code of the anchor.
    pub label: u32,
    /// Whether it has any positive (another row with its label).
    pub has_positive: bool,
    /// Triplets emitted for it.
    pub triplets: u32,
    /// Whether `max_k` stopped its search before its window was covered.
    pub capped: bool,
    /// Whether its nearest other-label row lies within `d(a, hardest positive) + margin`;
    /// `None` without a positive, or when a capped search found no other-label row.
    pub violating_neighbour: Option<bool>,
    /// Labels of its nearest neighbours; `None` without a positive (the anchor is not searched)
    /// and in retrieval mode.
    pub neighbour_labels: Option<NeighbourLabels>,
    /// (anchor, positive) pairs mined: its chosen positives.
    pub pairs: u32,
    /// Pairs that got fewer negatives than `num_negatives` (after the reuse cap).
    pub short_pairs: u32,
    /// Short pairs whose triplets were dropped (`shortfall = drop`).
    pub dropped_pairs: u32,
    /// Qualifying candidates each false-negative guard took away from the selection, in
    /// [`GUARDS`] order (each counted for the first guard that rejected it).
    pub guard_removed: [u32; 4],
    /// Triplets removed by `max_negative_reuse`.
    pub reuse_removed: u32,
    /// Where a row added to the table later could change what this anchor gave.
    pub bounds: AnchorBounds,
    /// Entries of [`MinedBlock::neighbours`] that are this anchor's.
    pub neighbours: u32,
}

/// Where a row added to the table could change an anchor's outcome (its positives, negatives,
/// guard counts, neighbour labels or violating flag), as distances from the anchor: a row
/// outside all of them changes only the ranks of its negatives (which a later run can
/// count). Conservative (a row inside may change nothing); an incremental run mines the
/// anchor again when a new row falls inside.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnchorBounds {
    /// A row of another label at a distance in `[other_lo, other_hi]`, or at most
    /// `other_near` (which could make the anchor violating).
    pub other_lo: f32,
    pub other_hi: f32,
    pub other_near: f32,
    /// A row of any label at most this far (among the neighbours, when their list is not
    /// kept).
    pub any_hi: f32,
    /// A row of the anchor's label at least this far, or at most `same_near`.
    pub same_far: f32,
    pub same_near: f32,
    /// A row of the anchor's label whose positive key ([`positive_key`]) is below this.
    pub key_cut: u32,
}

impl AnchorBounds {
    /// No row can change the outcome.
    pub const NONE: AnchorBounds = AnchorBounds {
        other_lo: f32::INFINITY,
        other_hi: f32::NEG_INFINITY,
        other_near: f32::NEG_INFINITY,
        any_hi: f32::NEG_INFINITY,
        same_far: f32::INFINITY,
        same_near: f32::NEG_INFINITY,
        key_cut: 0,
    };

    /// Any row can.
    pub const ALL: AnchorBounds = AnchorBounds {
        other_lo: f32::NEG_INFINITY,
        other_hi: f32::INFINITY,
        other_near: f32::INFINITY,
        any_hi: f32::INFINITY,
        same_far: f32::NEG_INFINITY,
        same_near: f32::INFINITY,
        key_cut: u32::MAX,
    };
}

/// The output of one block of anchors.
#[derive(Debug, Clone, Default)]
pub struct MinedBlock {
    pub triplets: Vec<Triplet>,
    pub anchors: Vec<AnchorRecord>,
    /// Where neighbour lists are kept ([`Miner::keep_neighbours`]): the anchors' nearest rows
    /// their neighbour labels read, `(d, row)` exact and nearest first, in anchor order.
    pub neighbours: Vec<(f32, u32)>,
}

impl MinedBlock {
    /// Keeps the anchors `keep` says so, with their triplets and neighbours; the anchors and
    /// triplets taken out.
    pub fn retain_anchors(&mut self, keep: impl Fn(u32) -> bool) -> (usize, usize) {
        if self.anchors.iter().all(|r| keep(r.anchor)) {
            return (0, 0);
        }
        let (before_anchors, before_triplets) = (self.anchors.len(), self.triplets.len());
        let (mut triplets, mut neighbours) = (Vec::new(), Vec::new());
        let (mut at, mut near_at) = (0, 0);
        for r in &self.anchors {
            let start = at;
            while at < self.triplets.len() && self.triplets[at].anchor == r.anchor {
                at += 1;
            }
            let near = near_at..near_at + r.neighbours as usize;
            near_at = near.end;
            if keep(r.anchor) {
                triplets.extend_from_slice(&self.triplets[start..at]);
                neighbours.extend_from_slice(&self.neighbours[near]);
            }
        }
        self.anchors.retain(|r| keep(r.anchor));
        self.triplets = triplets;
        self.neighbours = neighbours;
        (
            before_anchors - self.anchors.len(),
            before_triplets - self.triplets.len(),
        )
    }

    /// Appends `other`'s anchors after this block's.
    pub fn append(&mut self, other: MinedBlock) {
        self.triplets.extend(other.triplets);
        self.anchors.extend(other.anchors);
        self.neighbours.extend(other.neighbours);
    }
}

/// Anchors mined per block: bounds the memory of candidate lists and of output batches.
pub const ANCHOR_BLOCK: usize = 8192;

/// What mining a block holds at its peak, in multiples of its results (measured with every
/// positive of 4,000 anchors and 5 easy negatives each on 1,000,000 x 128 under 192 MiB: a
/// block sized to its results alone peaked 110 MB over the baseline with 23 MB of results).
const BLOCK_WORKING_FACTOR: usize = 3;

/// The fewest anchors a block is cut to under a memory limit.
pub const MIN_LIMITED_BLOCK: usize = 256;

/// Bytes per chunk of a sweep over all vectors: a spilled store drops its pages between chunks,
/// so a chunk's pages are what a sweep adds to the resident set at most.
const SWEEP_BYTES: usize = 4 << 20;

/// Rows of `dim` values in a chunk of a sweep.
fn sweep_rows(dim: usize) -> usize {
    (SWEEP_BYTES / (4 * dim).max(1)).max(1)
}

/// Holds the index and the per-label groups; mines anchors block by block.
pub struct Miner<'t> {
    /// The rows indexed: the labelled table, or the corpus.
    table: &'t Table,
    /// Retrieval mode's anchors.
    queries: Option<QuerySide<'t>>,
    params: MiningParams,
    /// The table's vectors, normalised for cosine.
    vectors: Cow<'t, [f32]>,
    /// Squared norm of every row (for FAISS's error bound).
    norms_sq: Vec<f32>,
    max_norm_sq: f32,
    /// Rows of every label code, in row order.
    groups: Vec<Vec<u32>>,
    index: NeighbourIndex,
    /// Search depth the next block starts at (adapted from the previous block).
    start_k: usize,
    search: SearchStats,
    /// Rows of a spilled store read into memory for the stretch of work at hand.
    gathered: Gathered,
    /// Under a memory limit, what it leaves for the buffers that scale (measured once the
    /// table and the index were resident).
    scratch: Option<Scratch>,
    /// The most bytes of results per anchor of any block mined so far.
    result_bytes_seen: Option<usize>,
    /// Whether an exact index mines in one pass over the table where it can (else by the
    /// deepening ladder); both give the same results.
    one_pass: bool,
    /// Tile shape of the one-pass engine.
    tiles: Tiles,
    /// Blocks keep each anchor's neighbour list (an incremental run patches them).
    keep_neighbours: bool,
    /// The one-pass engine scans with portable code even where AVX2 is present (tests).
    portable_scan: bool,
    /// Under `--sample random`, the one-pass engine draws dense bands' samples in key order
    /// before the pass and ranks sparse bands' from the rows it kept (else the pass finds
    /// every sample, and a second pass ranks them).
    sample_shortcuts: bool,
    /// Anchors of at least this many (anchor, positive) pairs share one selector in the
    /// one-pass engine (tests lower it).
    gap_min_pairs: usize,
    /// Which search parameters were set explicitly (`nprobe`, `efSearch`, `k`): recall
    /// tuning keeps them.
    explicit: (bool, bool, bool),
    /// The IVF list of every anchor, once asked for (`None` inside: not an IVF index).
    anchor_lists: std::sync::OnceLock<Option<Vec<u32>>>,
    /// A spilled table's rows copied in its IVF index's list order, where the rows that
    /// anchors mined list by list read back are gathered from ([`Miner::gather_spilled`]).
    list_copy: Option<ReorderedRows>,
}

/// Where a miner's index comes from.
enum IndexSource<'p> {
    Build,
    Load(&'p Path),
    /// A state's index over the table's first rows: the rest are added to it.
    Extend(&'p Path, usize),
}

/// Rows read from a spilled store for one stretch of work (see [`Miner::gather_spilled`]):
/// [`Miner::row`] looks here first, so scoring does not fault scattered pages of the mapping.
#[derive(Debug, Default)]
struct Gathered {
    /// Ascending.
    rows: Vec<u32>,
    data: Vec<f32>,
    /// Each table row's place in `data` ([`NOT_GATHERED`] if none; empty until rows are first
    /// gathered): one lookup a candidate, where a binary search in `rows` took 9% of a
    /// spilled approximate run's time.
    slot_of: Vec<u32>,
}

/// A row not among the [`Gathered`] ones.
const NOT_GATHERED: u32 = u32::MAX;

impl Gathered {
    /// Where row `r`'s vector is in `data`, if gathered.
    #[inline]
    fn slot(&self, r: u32) -> Option<usize> {
        match self.slot_of.get(r as usize) {
            Some(&s) if s != NOT_GATHERED => Some(s as usize),
            _ => None,
        }
    }

    /// Holds `rows` (ascending, each once) of a table of `table_rows` rows, read into `data`,
    /// in place of the rows held before.
    fn replace(&mut self, rows: Vec<u32>, data: Vec<f32>, table_rows: usize) {
        self.clear();
        if self.slot_of.len() != table_rows {
            self.slot_of = vec![NOT_GATHERED; table_rows];
        }
        for (j, &r) in rows.iter().enumerate() {
            self.slot_of[r as usize] = j as u32;
        }
        self.rows = rows;
        self.data = data;
    }

    /// Frees the rows (the lookup stays allocated, all of it [`NOT_GATHERED`]).
    fn clear(&mut self) {
        for &r in &self.rows {
            self.slot_of[r as usize] = NOT_GATHERED;
        }
        self.rows = Vec::new();
        self.data = Vec::new();
    }
}

/// Queries, normalised for cosine, with their known positives.
struct QuerySide<'t> {
    queries: &'t Queries,
    vectors: Cow<'t, [f32]>,
    norms_sq: Vec<f32>,
}

/// Time spent in the neighbour index's searches, for benchmarks (the effective GFLOP/s of an
/// exact search is `2 * dim * rows * queries / seconds`).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SearchStats {
    pub seconds: f64,
    /// Queries searched, deeper searches of the same anchor counted again.
    pub queries: u64,
}

impl SearchStats {
    /// What was searched after `before`.
    pub fn since(self, before: SearchStats) -> SearchStats {
        SearchStats {
            seconds: self.seconds - before.seconds,
            queries: self.queries - before.queries,
        }
    }
}

impl<'t> Miner<'t> {
    /// Validates `params` and builds the index over `table`.
    pub fn new(table: &'t Table, params: &MiningParams) -> Result<Self> {
        Self::create(table, None, params, IndexSource::Build)
    }

    /// Retrieval mode: the index is built over `corpus`; `queries` are the anchors.
    pub fn retrieval(
        corpus: &'t Table,
        queries: &'t Queries,
        params: &MiningParams,
        saved_index: Option<&Path>,
    ) -> Result<Self> {
        let source = saved_index.map_or(IndexSource::Build, IndexSource::Load);
        Self::create(corpus, Some(queries), params, source)
    }

    /// The same miner with an exact index (for `--check-recall`) that shares this one's
    /// vectors and holds no copy of them ([`NeighbourIndex::exact_shards`]).
    pub fn exact_twin(&self) -> Miner<'_> {
        let params = MiningParams {
            index: "Flat".into(),
            recall_sample: 0,
            nprobe: None,
            ef_search: None,
            ..self.params.clone()
        };
        Miner {
            table: self.table,
            queries: self.queries.as_ref().map(|q| QuerySide {
                queries: q.queries,
                vectors: Cow::Borrowed(&q.vectors),
                norms_sq: q.norms_sq.clone(),
            }),
            index: NeighbourIndex::exact_shards(self.table.dim, params.metric, self.table.rows()),
            params,
            vectors: Cow::Borrowed(&self.vectors),
            norms_sq: self.norms_sq.clone(),
            max_norm_sq: self.max_norm_sq,
            groups: self.groups.clone(),
            start_k: first_k(&self.params, self.table.rows(), self.queries.is_some()),
            search: SearchStats::default(),
            gathered: Gathered::default(),
            anchor_lists: Default::default(),
            list_copy: None,
            scratch: self.scratch,
            result_bytes_seen: None,
            one_pass: self.one_pass,
            tiles: self.tiles,
            keep_neighbours: self.keep_neighbours,
            portable_scan: self.portable_scan,
            sample_shortcuts: self.sample_shortcuts,
            gap_min_pairs: self.gap_min_pairs,
            explicit: self.explicit,
        }
    }

    /// As [`Miner::new`], with an index saved by an earlier run instead of building one; it
    /// must hold `table`'s rows in order (its dimension, metric and row count are checked).
    pub fn with_saved_index(table: &'t Table, params: &MiningParams, index: &Path) -> Result<Self> {
        Self::create(table, None, params, IndexSource::Load(index))
    }

    /// An incremental run's miner (labelled table, or corpus under `queries`): the
    /// approximate index a state kept over the first `kept_rows` rows, with the rows after
    /// them added to it ([`NeighbourIndex::extend`]).
    pub fn with_kept_index(
        table: &'t Table,
        queries: Option<&'t Queries>,
        params: &MiningParams,
        index: &Path,
        kept_rows: usize,
    ) -> Result<Self> {
        Self::create(
            table,
            queries,
            params,
            IndexSource::Extend(index, kept_rows),
        )
    }

    fn create(
        table: &'t Table,
        queries: Option<&'t Queries>,
        params: &MiningParams,
        source: IndexSource,
    ) -> Result<Self> {
        params.validate()?;
        let dim = table.dim;
        let prepared = |t: &'t Table| -> (Cow<'t, [f32]>, Vec<f32>) {
            let vectors: Cow<'t, [f32]> = match params.metric {
                Metric::Cosine if !t.normalized => {
                    let mut v = Vec::with_capacity(t.vectors.len());
                    for chunk in sweep(&t.vectors, sweep_rows(dim) * dim, &t.vectors) {
                        v.extend_from_slice(chunk);
                    }
                    normalize_rows(&mut v, dim);
                    Cow::Owned(v)
                }
                _ => Cow::Borrowed(&t.vectors),
            };
            // In chunks, so that a spilled store can drop the pages swept.
            let mut norms_sq = Vec::with_capacity(t.rows());
            for chunk in sweep(&vectors, sweep_rows(dim) * dim, &t.vectors) {
                norms_sq.par_extend(chunk.par_chunks(dim).map(|r| dot(r, r) as f32));
            }
            (vectors, norms_sq)
        };
        let (vectors, norms_sq) = prepared(table);
        let max_norm_sq = norms_sq.iter().copied().fold(0.0, f32::max);
        let queries = match queries {
            Some(q) if q.table.dim != dim => {
                return Err(crate::error::Error::BadData(format!(
                    "queries have dimension {} but the corpus has dimension {dim}",
                    q.table.dim
                )));
            }
            Some(q) => {
                let (vectors, norms_sq) = prepared(&q.table);
                Some(QuerySide {
                    queries: q,
                    vectors,
                    norms_sq,
                })
            }
            None => None,
        };
        let mut groups = vec![Vec::new(); table.num_labels()];
        for (row, &code) in table.label_codes.iter().enumerate() {
            groups[code as usize].push(row as u32);
        }
        let started = std::time::Instant::now();
        let auto = params.index.trim().eq_ignore_ascii_case("auto");
        let mut factory = resolve_factory(
            &params.index,
            table.rows(),
            dim,
            params.memory_limit.map(|b| b.0),
            params.auto_exact_below,
        );
        let reuse_cap = CrossAnchorRules::kept_bytes(params, table.rows());
        let memory = match params.memory_limit {
            Some(limit) => Some(plan_build(
                limit.0,
                &mut factory,
                auto,
                table,
                &source,
                reuse_cap,
            )?),
            None => None,
        };
        let spec = IndexSpec {
            factory,
            train_sample: params.train_sample,
            seed: params.seed,
            nprobe: params.nprobe,
            ef_search: params.ef_search,
            memory,
        };
        if auto && matches!(source, IndexSource::Build) {
            tracing::info!(rows = table.rows(), choice = %spec.factory, "index auto");
        }
        let index = match source {
            IndexSource::Load(path) => {
                NeighbourIndex::load(path, dim, params.metric, table.rows(), &spec)?
            }
            IndexSource::Extend(path, kept_rows) => NeighbourIndex::extend(
                path,
                &vectors,
                dim,
                params.metric,
                kept_rows,
                &spec,
                &table.vectors,
            )?,
            IndexSource::Build => {
                NeighbourIndex::build(&vectors, dim, params.metric, &spec, &table.vectors)?
            }
        };
        // A spilled table's rows are gathered for each stretch of work (as
        // `gather_budget_rows` says): the copy they are read from, and their lookup (4 bytes a
        // row), are resident before the scratch is measured.
        let mut gathered = Gathered::default();
        let mut list_copy = None;
        if let Some(limit) = params.memory_limit
            && matches!(vectors, Cow::Borrowed(_))
            && table.vectors.is_spilled()
        {
            list_copy = copy_in_list_order(table, &index, limit.0.saturating_sub(reuse_cap));
            gathered.slot_of = vec![NOT_GATHERED; table.rows()];
        }
        // What the limit leaves once the table and the index are resident is shared among
        // the buffers that scale with the work.
        let scratch = params.memory_limit.map(|limit| {
            table.vectors.drop_all_pages();
            // Less what the reuse cap keeps for the end of the run.
            let scratch = Scratch::measured(limit.0.saturating_sub(reuse_cap));
            table.vectors.set_page_budget(scratch.mapped_pages());
            if let Some(q) = queries.as_ref() {
                q.queries
                    .table
                    .vectors
                    .set_page_budget(scratch.mapped_pages());
            }
            tracing::debug!(
                scratch_mib = crate::memory::mib(scratch.bytes() as u64),
                "memory left for buffers"
            );
            scratch
        });
        tracing::info!(
            index = %index.info().factory,
            rows = table.rows(),
            dim,
            seconds = started.elapsed().as_secs_f64(),
            "index built"
        );
        let start_k = first_k(params, table.rows(), queries.is_some());
        Ok(Miner {
            table,
            queries,
            params: params.clone(),
            vectors,
            norms_sq,
            max_norm_sq,
            groups,
            index,
            start_k,
            search: SearchStats::default(),
            gathered,
            anchor_lists: Default::default(),
            list_copy,
            scratch,
            result_bytes_seen: None,
            one_pass: true,
            tiles: Tiles::default(),
            keep_neighbours: false,
            portable_scan: false,
            sample_shortcuts: true,
            gap_min_pairs: onepass::GAP_MIN_PAIRS,
            explicit: (
                params.nprobe.is_some(),
                params.ef_search.is_some(),
                params.k.is_some(),
            ),
        })
    }

    /// Mines with the deepening ladder even where the one-pass engine applies (`false`), or
    /// not; for tests and benchmarks that compare the two. Results are the same.
    #[doc(hidden)]
    pub fn set_one_pass(&mut self, one_pass: bool) {
        self.one_pass = one_pass;
    }

    /// Blocks keep each anchor's neighbour list ([`MinedBlock::neighbours`]), so that an
    /// incremental run can take new rows into it instead of mining the anchor again.
    pub fn keep_neighbours(&mut self) {
        self.keep_neighbours = true;
    }

    /// The one-pass engine's tile shape; results do not depend on it.
    #[doc(hidden)]
    pub fn set_tiles(&mut self, tiles: Tiles) {
        self.tiles = tiles;
    }

    /// Scans with the one-pass engine's portable code even where the processor has AVX2,
    /// so that tests check both; results are the same.
    #[doc(hidden)]
    pub fn set_portable_scan(&mut self, portable: bool) {
        self.portable_scan = portable;
    }

    /// Under `--sample random`, whether the one-pass engine draws dense bands' samples before
    /// its pass and ranks sparse bands' from the rows it kept (`true`), or finds every sample
    /// in the pass and ranks them in a second; for tests that compare the two. Results are
    /// the same.
    #[doc(hidden)]
    pub fn set_sample_shortcuts(&mut self, on: bool) {
        self.sample_shortcuts = on;
    }

    /// Anchors of at least `pairs` (anchor, positive) pairs share one selector in the
    /// one-pass engine (else each pair has its own); for tests that check both. Results are
    /// the same.
    #[doc(hidden)]
    pub fn set_gap_min_pairs(&mut self, pairs: usize) {
        self.gap_min_pairs = pairs.max(1);
    }

    /// Time and queries of the neighbour searches so far.
    pub fn search_stats(&self) -> SearchStats {
        self.search
    }

    /// What the neighbour index is.
    pub fn index_info(&self) -> &IndexInfo {
        self.index.info()
    }

    /// Whether the neighbour index is exact, so every mined set equals brute force.
    pub fn exact(&self) -> bool {
        is_exact(&self.index.info().factory)
    }

    /// Saves the neighbour index for a later run (`--load-index`).
    pub fn save_index(&self, path: &Path) -> Result<()> {
        if self.exact() && self.params.memory_limit.is_some() {
            // Saving makes a Flat index: a copy of every vector, beyond what the limit allows.
            return Err(Error::Config(
                "--save-index of an exact index under --memory-limit: it would copy every \
                 vector (an exact index needs no file: give none)"
                    .into(),
            ));
        }
        self.index.save(path, &self.vectors)
    }

    /// The `k` candidates the index proposes for each anchor (the anchor itself left out).
    pub fn candidates(&mut self, anchors: &[u32], k: usize) -> Result<Vec<Vec<u32>>> {
        let queries = self.gather_anchors(anchors.iter().copied());
        let found = self.search_index(&queries, k + 1)?;
        Ok(anchors
            .iter()
            .enumerate()
            .map(|(q, &a)| {
                found
                    .of(q)
                    .map(|(_, r)| r)
                    .filter(|&r| Some(r) != self.anchor_self(a))
                    .take(k)
                    .collect()
            })
            .collect())
    }

    /// The index's `k` candidates for each of `queries`.
    /// Under a memory limit, a few queries at a time (FAISS's lookup tables and heaps grow
    /// with the queries of one call).
    fn search_index(&mut self, queries: &[f32], k: usize) -> Result<Candidates> {
        let table = self.table;
        let dim = table.dim;
        let chunk = self.search_chunk(k, usize::MAX);
        if queries.len() <= chunk * dim {
            return self.index.search(queries, k, &self.vectors, &table.vectors);
        }
        let mut all: Option<Candidates> = None;
        for part in queries.chunks(chunk * dim) {
            let c = self.index.search(part, k, &self.vectors, &table.vectors)?;
            match &mut all {
                None => all = Some(c),
                Some(all) => all.append(c),
            }
        }
        Ok(all.expect("at least one query"))
    }

    /// Applies the rules that look across anchors to blocks mined by [`Miner::mine_block`]:
    /// first `max_negative_reuse` (over all `blocks` together, so pass every block when it is
    /// set), then the shortfall policy. Updates the anchor records' counts.
    pub fn finish(&self, blocks: &mut [MinedBlock]) {
        let mut rules = CrossAnchorRules::new(&self.params);
        if rules.need_every_block() {
            for block in blocks.iter() {
                rules.observe(block);
            }
            let learned = rules.learned();
            debug_assert!(learned, "one pass without a budget");
        }
        for block in blocks {
            rules.apply(block);
        }
    }

    /// Total variance of the vectors mined (normalised for cosine) over their mean squared
    /// norm: near 0 when the embeddings have collapsed onto one point.
    pub fn embedding_spread(&self) -> f64 {
        let dim = self.table.dim;
        let n = self.table.rows() as f64;
        let add = |mut a: Vec<f64>, b: Vec<f64>| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
            a
        };
        let mut sum = vec![0f64; dim];
        for chunk in sweep(&self.vectors, sweep_rows(dim) * dim, &self.table.vectors) {
            let part = chunk
                .par_chunks(dim)
                .fold(
                    || vec![0f64; dim],
                    |mut acc, row| {
                        for (a, x) in acc.iter_mut().zip(row) {
                            *a += *x as f64;
                        }
                        acc
                    },
                )
                .reduce(|| vec![0f64; dim], add);
            sum = add(sum, part);
        }
        let mean_sq_norm = self.norms_sq.iter().map(|&x| x as f64).sum::<f64>() / n;
        let mean_norm_sq: f64 = sum.iter().map(|s| (s / n) * (s / n)).sum();
        if mean_sq_norm > 0.0 {
            ((mean_sq_norm - mean_norm_sq) / mean_sq_norm).max(0.0)
        } else {
            0.0
        }
    }

    /// The anchors to mine, in row order: every row (every query), or a seeded sample.
    pub fn anchors(&self) -> Vec<u32> {
        let n = self.anchor_rows();
        match self.params.anchors_sample {
            Some(m) if m < n => {
                // The `m` rows of smallest key, a seeded key per row that does not depend on
                // the row count: a table that grows keeps every earlier pick whose key stays
                // among the `m` smallest (an incremental run drops the others and mines the
                // new rows that enter). A max-heap of the `m` smallest so far.
                let keyed =
                    onepass::Keyed::wide(seeded_hash(self.params.seed, u64::MAX, 0, 0) as u32);
                let mut smallest = std::collections::BinaryHeap::with_capacity(m + 1);
                for row in 0..n as u32 {
                    let key = keyed.key(row);
                    if smallest.len() < m {
                        smallest.push((key, row));
                    } else if smallest.peek().is_some_and(|&(top, _)| key < top) {
                        smallest.pop();
                        smallest.push((key, row));
                    }
                }
                let mut picked: Vec<u32> = smallest.into_iter().map(|(_, row)| row).collect();
                picked.sort_unstable();
                picked
            }
            _ => (0..n as u32).collect(),
        }
    }

    /// Mines one block of anchors (given in row order); triplets come ordered by anchor,
    /// positive row, `d_an`, negative row.
    pub fn mine_block(&mut self, anchors: &[u32]) -> Result<MinedBlock> {
        crate::process::check_interrupted()?;
        let plans = positives::plan(self, anchors)?;
        let mined = negatives::mine(self, plans)?;
        if !anchors.is_empty() {
            let bytes = mined.triplets.len() * std::mem::size_of::<Triplet>()
                + mined.anchors.len() * std::mem::size_of::<AnchorRecord>();
            let per_anchor = bytes.div_ceil(anchors.len());
            self.result_bytes_seen = Some(self.result_bytes_seen.unwrap_or(0).max(per_anchor));
        }
        Ok(mined)
    }

    /// Anchors mined together ([`Miner::mine_block`] at a time): [`ANCHOR_BLOCK`], or under a
    /// memory limit fewer when their results would not fit its share for results (at least
    /// [`MIN_LIMITED_BLOCK`]: each block is a pass over the table). Results do not depend on
    /// it, so it follows what the blocks mined so far held per anchor (the most of any),
    /// and before the first block an estimate from the counts asked for.
    pub fn block_len(&self) -> usize {
        let Some(budget) = self.scratch.map(|s| s.results()) else {
            return ANCHOR_BLOCK;
        };
        // While a block is mined its results exist twice (each anchor's list, then the block
        // assembled from them) beside the pairs' selectors.
        let working = self
            .result_bytes_per_anchor()
            .saturating_mul(BLOCK_WORKING_FACTOR);
        (budget / working.max(1)).clamp(MIN_LIMITED_BLOCK, ANCHOR_BLOCK)
    }

    /// What an anchor's results take: the most per anchor of any block mined so far, else
    /// an estimate from the counts asked for (the positives asked for, at most those of the
    /// largest label group or query, times negatives, the latter at most what the ladder's
    /// deepest search returns) and its record. The largest, not an average: with
    /// `--positives all` a block of a large group's anchors holds that many pairs each.
    fn result_bytes_per_anchor(&self) -> usize {
        if let Some(seen) = self.result_bytes_seen {
            return seen;
        }
        let most = match &self.queries {
            Some(q) => q.queries.positives.iter().map(Vec::len).max().unwrap_or(0),
            None => self
                .groups
                .iter()
                .map(Vec::len)
                .max()
                .unwrap_or(0)
                .saturating_sub(1),
        };
        let positives = positives::wanted(self).min(most.max(1));
        std::mem::size_of::<Triplet>()
            .saturating_mul(positives.saturating_mul(self.negatives_per_pair_estimate()))
            .saturating_add(std::mem::size_of::<AnchorRecord>())
    }

    /// Negatives a pair is expected to keep, for memory estimates: as many as asked, `all`
    /// counted as many as the ladder's deepest search returns.
    fn negatives_per_pair_estimate(&self) -> usize {
        self.params
            .num_negatives
            .limit()
            .min(negatives::APPROXIMATE_MAX_K_FACTOR * self.params.k())
    }

    /// How many anchors [`Miner::mine_window`] should take at once: one block, or on a
    /// spilled table with an IVF index as many whole blocks as the memory limit's share for
    /// results ([`Scratch::results`]) holds the results of, twice (at least one), so that
    /// taking them list by list groups anchors that share candidates and labels.
    pub fn window_len(&self) -> usize {
        let block = self.block_len();
        let (Some(_), Some(budget)) = (self.anchor_lists(), self.scratch.map(|s| s.results()))
        else {
            return block;
        };
        // The results are held twice while they are put back in anchor order, with 16 bytes
        // an anchor of bookkeeping.
        let per_anchor = self
            .result_bytes_per_anchor()
            .saturating_mul(2)
            .saturating_add(16);
        (budget / per_anchor / block).max(1) * block
    }

    /// Where anchors are mined list by list (an IVF index over a spilled table whose rows are
    /// read back with `pread`; `None` otherwise), a key per anchor that sorts them so: its IVF
    /// list, or a row's position in the copy in list order. Looked up once.
    fn anchor_lists(&self) -> Option<&[u32]> {
        if self.exact() || self.gather_budget_rows().is_none() {
            return None;
        }
        // Positions in the copy ascend with the lists, and with the rows within a list.
        if self.queries.is_none()
            && let Some(copy) = &self.list_copy
        {
            return Some(copy.positions());
        }
        self.anchor_lists
            .get_or_init(|| match &self.queries {
                Some(q) => self.index.lists_of_queries(&q.vectors),
                None => self.index.lists_of_rows(),
            })
            .as_deref()
    }

    /// Mines `anchors` (in row order; see [`Miner::window_len`]) and returns their triplets
    /// and records in that order, as [`Miner::mine_block`] does. On a spilled table with an
    /// IVF index the anchors are mined list by list, so the rows each stretch reads back
    /// (candidates, label groups) are mostly the same; the results do not depend on it.
    /// `mined(n)` is called after each block of `n` anchors (progress).
    pub fn mine_window(
        &mut self,
        anchors: &[u32],
        mut mined: impl FnMut(usize),
    ) -> Result<MinedBlock> {
        let order = self.anchor_lists().map(|lists| {
            let mut order: Vec<usize> = (0..anchors.len()).collect();
            order.sort_by_key(|&i| (lists[anchors[i] as usize], i));
            order
        });
        let Some(order) = order else {
            let mut all = MinedBlock::default();
            for block in anchors.chunks(self.block_len()) {
                all.append(self.mine_block(block)?);
                mined(block.len());
            }
            return Ok(all);
        };
        tracing::debug!(
            anchors = anchors.len(),
            first = anchors.first(),
            "a window of anchors mined in IVF-list order"
        );
        // (position in `anchors`, block, record, first triplet, first neighbour) of every
        // mined anchor.
        let mut at: Vec<[u32; 5]> = Vec::with_capacity(anchors.len());
        let mut parts: Vec<MinedBlock> = Vec::new();
        for chunk in order.chunks(self.block_len()) {
            let block: Vec<u32> = chunk.iter().map(|&i| anchors[i]).collect();
            let block_mined = self.mine_block(&block)?;
            let (mut first, mut near) = (0, 0);
            for (j, (record, &i)) in block_mined.anchors.iter().zip(chunk).enumerate() {
                at.push([i as u32, parts.len() as u32, j as u32, first, near]);
                first += record.triplets;
                near += record.neighbours;
            }
            parts.push(block_mined);
            mined(chunk.len());
        }
        at.sort_unstable_by_key(|x| x[0]);
        let mut all = MinedBlock {
            triplets: Vec::with_capacity(parts.iter().map(|p| p.triplets.len()).sum()),
            anchors: Vec::with_capacity(anchors.len()),
            neighbours: Vec::new(),
        };
        for [_, part, j, first, near] in at {
            let part = &parts[part as usize];
            let record = part.anchors[j as usize];
            let (first, near) = (first as usize, near as usize);
            all.triplets
                .extend_from_slice(&part.triplets[first..first + record.triplets as usize]);
            all.neighbours
                .extend_from_slice(&part.neighbours[near..near + record.neighbours as usize]);
            all.anchors.push(record);
        }
        Ok(all)
    }

    /// Mines every anchor, cross-anchor rules applied ([`Miner::finish`]).
    pub fn mine_all(&mut self) -> Result<MinedBlock> {
        let mut all = MinedBlock::default();
        for window in self.anchors().chunks(self.window_len()) {
            all.append(self.mine_window(window, |_| ())?);
        }
        self.finish(std::slice::from_mut(&mut all));
        Ok(all)
    }

    /// The vector of anchor `a` (a row, or a query).
    #[inline]
    fn anchor_vector(&self, a: u32) -> &[f32] {
        match &self.queries {
            Some(q) => {
                let d = self.table.dim;
                &q.vectors[a as usize * d..(a as usize + 1) * d]
            }
            None => self.row(a),
        }
    }

    /// Squared norm of anchor `a` (a row of the table, or a query).
    #[inline]
    fn anchor_norm_sq(&self, a: u32) -> f32 {
        match &self.queries {
            Some(q) => q.norms_sq[a as usize],
            None => self.norms_sq[a as usize],
        }
    }

    /// Rows anchors are drawn from: the table's, or the queries'.
    pub fn anchor_rows(&self) -> usize {
        match &self.queries {
            Some(q) => q.queries.table.rows(),
            None => self.table.rows(),
        }
    }

    /// Exact distance from anchor `a` to indexed row `r`.
    #[inline]
    fn anchor_distance(&self, a: u32, r: u32) -> f32 {
        self.params
            .metric
            .distance(self.anchor_vector(a), self.row(r))
    }

    /// The indexed row that is anchor `a` itself (never its own neighbour).
    #[inline]
    fn anchor_self(&self, a: u32) -> Option<u32> {
        match self.queries {
            Some(_) => None,
            None => Some(a),
        }
    }

    /// Whether indexed row `r` may be a negative of the anchor of `label` (label code, unused
    /// in retrieval mode).
    #[inline]
    fn is_negative(&self, a: u32, label: u32, r: u32) -> bool {
        match &self.queries {
            Some(q) => !q.queries.is_positive(a, r),
            None => self.label(r) != label,
        }
    }

    /// Known positives of query `a` (retrieval mode).
    fn query_positives(&self, a: u32) -> Option<&[u32]> {
        self.queries
            .as_ref()
            .map(|q| q.queries.positives[a as usize].as_slice())
    }

    /// The vectors of anchors, gathered into one contiguous buffer (FAISS queries).
    fn gather_anchors(&self, anchors: impl Iterator<Item = u32>) -> Vec<f32> {
        if self.queries.is_none() {
            // Labelled: the anchors are rows of the table.
            return self.gather(anchors);
        }
        let mut out = Vec::new();
        for a in anchors {
            out.extend_from_slice(self.anchor_vector(a));
        }
        out
    }

    #[inline]
    fn row(&self, i: u32) -> &[f32] {
        let d = self.table.dim;
        if let Some(j) = self.gathered.slot(i) {
            return &self.gathered.data[j * d..(j + 1) * d];
        }
        &self.vectors[i as usize * d..(i as usize + 1) * d]
    }

    /// Asks the processor for the vectors of `rows` ahead of their use (they lie anywhere in
    /// the table, and one after the other each would wait on memory).
    #[inline]
    fn prefetch_rows(&self, rows: impl Iterator<Item = u32>) {
        for r in rows {
            prefetch_lines(self.row(r));
        }
    }

    /// Anchors searched at once at depth `k`: at most `entries` candidates in all, and under
    /// a memory limit what its share for searches holds: the candidate lists and FAISS's
    /// heaps (24 bytes a candidate) and an IVF search's lookup tables (for fast-scan codes
    /// up to 8 bytes a dimension for every list probed).
    fn search_chunk(&self, k: usize, entries: usize) -> usize {
        let by_count = (entries / k.max(1)).max(1);
        let Some(scratch) = self.scratch else {
            return by_count;
        };
        let tables = self.index.nprobe().unwrap_or(0) * self.table.dim * 8;
        let per_query = k.saturating_mul(24).saturating_add(tables);
        by_count.min((scratch.search() / per_query.max(1)).max(1))
    }

    /// Bytes the cross-anchor rules may count in per pass over the mined blocks
    /// ([`CrossAnchorRules::within`]); `None` without a memory limit.
    pub fn cross_anchor_budget(&self) -> Option<usize> {
        self.scratch.map(|s| s.cross_anchor())
    }

    /// How many rows a buffer of gathered rows may hold: the spilled store's page budget
    /// (`None` when the vectors are not spilled, or are normalised into a copy).
    fn gather_budget_rows(&self) -> Option<usize> {
        match self.vectors {
            Cow::Borrowed(_) if self.table.vectors.is_spilled() => self
                .scratch
                .map(|s| (s.gathered_rows() / (4 * self.table.dim)).max(1)),
            Cow::Borrowed(_) => None,
            Cow::Owned(_) => None,
        }
    }

    /// Spilled store only: reads `rows` into memory for the work that follows (until the next
    /// call), in place of what was gathered before. Results do not depend on it: a row not
    /// gathered is read through the mapping.
    fn gather_spilled(&mut self, mut rows: Vec<u32>) -> Result<()> {
        if self.gather_budget_rows().is_none() {
            return Ok(());
        }
        rows.sort_unstable();
        rows.dedup();
        // Free the previous buffer first, so two are never held at once.
        self.gathered.clear();
        let data = self.read_rows(&rows)?;
        self.gathered.replace(rows, data, self.table.rows());
        Ok(())
    }

    /// Spilled store only: `rows` (ascending) read with `pread`, from the copy in list order
    /// where there is one.
    fn read_rows(&self, rows: &[u32]) -> Result<Vec<f32>> {
        match &self.list_copy {
            Some(copy) => copy.gather_rows(rows),
            None => self.table.vectors.gather_rows(rows, self.table.dim),
        }
    }

    /// Frees the gathered rows.
    fn release_gathered(&mut self) {
        self.gathered.clear();
    }

    #[inline]
    fn distance(&self, a: u32, b: u32) -> f32 {
        self.params.metric.distance(self.row(a), self.row(b))
    }

    /// The distance from an anchor (squared norm `a_sq`) to row `r` given their inner
    /// product `x` from a matrix product (within the product's error bound of the exact one).
    #[inline]
    fn product_distance(&self, a_sq: f32, r: u32, x: f32) -> f32 {
        match self.params.metric {
            Metric::L2sq => a_sq + self.norms_sq[r as usize] - 2.0 * x,
            Metric::Cosine => 1.0 - x,
        }
    }

    #[inline]
    fn label(&self, row: u32) -> u32 {
        self.table.label_codes[row as usize]
    }

    /// How far FAISS's distance for anchor `a` may be from the exact one.
    #[inline]
    fn faiss_slack(&self, a: u32) -> f32 {
        let norm_sq = match &self.queries {
            Some(q) => q.norms_sq[a as usize],
            None => self.norms_sq[a as usize],
        };
        faiss_error_factor(self.table.dim + 1) * (norm_sq + self.max_norm_sq)
    }

    /// The vectors of `rows`, gathered into one contiguous buffer (FAISS queries). A spilled
    /// table's rows not already gathered are read with `pread` (sorted, each once) rather
    /// than faulted in through the mapping: each fault maps the pages around it too (64 KiB),
    /// and a few thousand scattered rows mapped tens of MB between two looks at the budget.
    fn gather(&self, rows: impl Iterator<Item = u32>) -> Vec<f32> {
        let d = self.table.dim;
        let rows: Vec<u32> = rows.collect();
        let mut out = Vec::with_capacity(rows.len() * d);
        let read = if self.gather_budget_rows().is_some() {
            let mut wanted: Vec<u32> = rows
                .iter()
                .copied()
                .filter(|&r| self.gathered.slot(r).is_none())
                .collect();
            wanted.sort_unstable();
            wanted.dedup();
            // On a read error, the mapping gives the same values (or the same error).
            self.read_rows(&wanted).ok().map(|data| (wanted, data))
        } else {
            None
        };
        for &r in &rows {
            match &read {
                Some((wanted, data)) if let Ok(j) = wanted.binary_search(&r) => {
                    out.extend_from_slice(&data[j * d..(j + 1) * d]);
                }
                _ => out.extend_from_slice(self.row(r)),
            }
        }
        out
    }
}

/// Under a memory limit, a spilled table's rows copied in the order of its IVF index's lists
/// (see [`ReorderedRows`]), in passes of a quarter of what the limit leaves; `None` for other
/// indexes, or if the copy cannot be written (the table's own file is read then, slower).
fn copy_in_list_order(table: &Table, index: &NeighbourIndex, limit: u64) -> Option<ReorderedRows> {
    if crate::index::is_exact(&index.info().factory) {
        return None;
    }
    let lists = index.lists_of_rows().filter(|l| !l.contains(&u32::MAX))?;
    let started = std::time::Instant::now();
    table.vectors.drop_all_pages();
    let buffer = Scratch::measured(limit).gathered_rows();
    match table.vectors.reordered_copy(table.dim, &lists, buffer) {
        Ok(copy) => {
            tracing::info!(
                rows = table.rows(),
                mib = crate::memory::mib((table.rows() * table.dim * 4) as u64),
                seconds = started.elapsed().as_secs_f64(),
                "spilled rows copied in IVF-list order, for reading back"
            );
            copy
        }
        Err(e) => {
            tracing::warn!(error = %e, "spilled rows not copied in IVF-list order: reading them back in row order");
            None
        }
    }
}

/// Under a memory limit, before the index is built: refuses a limit that the process, the
/// table and the index leave no room under (exit 2, naming each part), fits `auto`'s product
/// codes to the room (halving them down to an eighth of a byte per dimension), and sizes the
/// build's training sample and batches to what is left.
fn plan_build(
    limit: u64,
    factory: &mut String,
    auto: bool,
    table: &Table,
    source: &IndexSource,
    reuse_cap: u64,
) -> Result<BuildMemory> {
    use crate::memory::{MIN_SCRATCH, RESERVE, Resident, check_minimum, index_bytes};
    let (rows, dim) = (table.rows() as u64, table.dim as u64);
    table.vectors.drop_all_pages();
    let held = Resident::now().now;
    // A spilled table under an IVF index is read back in list order: each row's position in
    // the copy and its place among the gathered rows, 4 bytes each.
    let list_order = if table.vectors.is_spilled() && crate::index::ivf_lists(factory).is_some() {
        rows * 8
    } else {
        0
    };
    let room =
        |f: &str| held + index_bytes(f, rows, dim) + list_order + reuse_cap + MIN_SCRATCH + RESERVE;
    while auto && room(factory) > limit && !crate::memory::unchecked() {
        let Some(smaller) = halved_codes(factory, table.dim) else {
            break;
        };
        *factory = smaller;
    }
    let index = match source {
        IndexSource::Load(path) => std::fs::metadata(path).map_or(0, |m| m.len()),
        // The kept index's bytes grow with the rows added.
        IndexSource::Extend(path, kept) => {
            std::fs::metadata(path).map_or(0, |m| m.len()) / (*kept as u64).max(1) * rows
        }
        IndexSource::Build => index_bytes(factory, rows, dim),
    };
    // k-means needs a few points per list; the sample is counted twice (FAISS trains the
    // codes on a copy of the residuals).
    let lists = crate::index::ivf_lists(factory).unwrap_or(0) as u64;
    let least_training = lists * MIN_TRAINING_PER_LIST * dim * 4 * 2;
    let mut parts = vec![
        ("the process and the table hold".to_string(), held),
        (
            format!("the index {factory} needs"),
            index.max(least_training),
        ),
    ];
    if list_order > 0 {
        parts.push((
            "reading the spilled rows back list by list needs".to_string(),
            list_order,
        ));
    }
    if reuse_cap > 0 {
        parts.push(("the negative reuse cap needs".to_string(), reuse_cap));
    }
    check_minimum(limit, &parts)?;
    // The check above leaves room for the parts; the tests' unchecked limits of a few KiB
    // (see `memory::unchecked`) bound the reads back from the spill, not the build.
    let free = if crate::memory::unchecked() {
        u64::MAX
    } else {
        limit - held - RESERVE - list_order
    };
    Ok(BuildMemory {
        // Training comes before the codes are added: it may use all but the least scratch.
        train_bytes: free.saturating_sub(MIN_SCRATCH).min(usize::MAX as u64) as usize,
        add_bytes: (free.saturating_sub(index) / 4).min(usize::MAX as u64) as usize,
    })
}

/// Training points per IVF list below which a limit is refused (FAISS asks for 39 and warns
/// below; centroids trained on fewer points only make the index less even).
const MIN_TRAINING_PER_LIST: u64 = 8;

/// `auto`'s factory with product codes half as long (`PQ64x4fs` to `PQ32x4fs`), if they stay
/// at least an eighth of a byte per dimension.
fn halved_codes(factory: &str, dim: usize) -> Option<String> {
    let at = factory.find(",PQ")? + 3;
    let digits: String = factory[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let m: usize = digits.parse().ok()?;
    let half = m / 2;
    if half == 0 || half * 4 < dim || !dim.is_multiple_of(half) {
        return None;
    }
    Some(format!(
        "{}{half}{}",
        &factory[..at],
        &factory[at + digits.len()..]
    ))
}

/// Consecutive runs of items whose `sizes` add up to at most `budget` (each run at least one
/// item); all of them in one run when there is no budget. Cuts work on a spilled store into
/// stretches whose rows fit the gather buffer.
pub(super) fn batches(sizes: &[usize], budget: Option<usize>) -> Vec<std::ops::Range<usize>> {
    let Some(budget) = budget else {
        return std::iter::once(0..sizes.len()).collect();
    };
    let mut runs = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let (mut end, mut sum) = (start + 1, sizes[start]);
        while end < sizes.len() && sum + sizes[end] <= budget {
            sum += sizes[end];
            end += 1;
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

/// Cuts a list of items, each needing some rows of the table, into consecutive runs whose
/// distinct rows fit a budget. Holds one bit per row of the table, clear between runs.
pub(super) struct DistinctRows {
    seen: Vec<u64>,
    item_rows: Vec<u32>,
}

impl DistinctRows {
    pub(super) fn new(rows: usize) -> Self {
        DistinctRows {
            seen: vec![0; rows.div_ceil(64)],
            item_rows: Vec::new(),
        }
    }

    /// The run of items from `start` (at least one, at most up to `items`) whose distinct
    /// rows, given by `rows_of(item, out)`, number at most `budget`; returns its end and
    /// those rows (in no order).
    pub(super) fn run(
        &mut self,
        start: usize,
        items: usize,
        budget: usize,
        mut rows_of: impl FnMut(usize, &mut Vec<u32>),
    ) -> (usize, Vec<u32>) {
        let mut wanted: Vec<u32> = Vec::new();
        let mut end = start;
        while end < items {
            self.item_rows.clear();
            rows_of(end, &mut self.item_rows);
            let before = wanted.len();
            for &r in &self.item_rows {
                let (word, bit) = (r as usize / 64, 1u64 << (r % 64));
                if self.seen[word] & bit == 0 {
                    self.seen[word] |= bit;
                    wanted.push(r);
                }
            }
            if wanted.len() > budget && end > start {
                for &r in &wanted[before..] {
                    self.seen[r as usize / 64] &= !(1u64 << (r % 64));
                }
                wanted.truncate(before);
                break;
            }
            end += 1;
        }
        for &r in &wanted {
            self.seen[r as usize / 64] = 0;
        }
        (end, wanted)
    }
}

/// The depth of the first search: `k`, or enough to cover a rank window, which is then
/// resolved in one pass.
fn first_k(params: &MiningParams, rows: usize, retrieval: bool) -> usize {
    let self_row = usize::from(!retrieval);
    match params.range_max {
        Some(max) => params.k().max((max + self_row).min(rows)),
        None => params.k(),
    }
}

/// The rules that look across anchors (the negative reuse cap, then the shortfall policy),
/// applied block by block: where [`CrossAnchorRules::need_every_block`], every block (in anchor
/// order) is [`CrossAnchorRules::observe`]d, pass after pass until
/// [`CrossAnchorRules::learned`], before the first [`CrossAnchorRules::apply`]; the blocks
/// themselves need not stay in memory meanwhile.
#[derive(Debug)]
pub struct CrossAnchorRules {
    cap: Option<reuse_and_shortfall::ReuseCap>,
    limit: usize,
    shortfall: crate::config::Shortfall,
}

impl CrossAnchorRules {
    /// The rules of `params`, learning in one pass over the blocks.
    pub fn new(params: &MiningParams) -> Self {
        Self::within(params, None)
    }

    /// The rules of `params`, what they learn per pass within `budget` bytes (more passes
    /// where it does not fit).
    pub fn within(params: &MiningParams, budget: Option<usize>) -> Self {
        CrossAnchorRules {
            cap: params
                .max_negative_reuse
                .map(|max| reuse_and_shortfall::ReuseCap::new(max, budget)),
            limit: params.num_negatives.limit(),
            shortfall: params.shortfall,
        }
    }

    /// Bytes the rules keep for the end of a run over a table of `rows` rows, whatever the
    /// budget of their passes (the reuse cap's last use kept per negative row).
    pub fn kept_bytes(params: &MiningParams, rows: usize) -> u64 {
        params
            .max_negative_reuse
            .map_or(0, |_| reuse_and_shortfall::ReuseCap::kept_bytes(rows))
    }

    /// Whether a block's outcome depends on the other blocks (`max_negative_reuse`).
    pub fn need_every_block(&self) -> bool {
        self.cap.is_some()
    }

    /// Learns what `block` tells the rules that look at every block.
    pub fn observe(&mut self, block: &MinedBlock) {
        if let Some(cap) = &mut self.cap {
            cap.observe(block);
        }
    }

    /// Ends a pass of [`CrossAnchorRules::observe`] over every block: true when the rules
    /// have learnt all they need, false when they need another pass.
    pub fn learned(&mut self) -> bool {
        self.cap.as_mut().is_none_or(|cap| cap.learned())
    }

    /// Applies the rules to `block`, updating its anchor records' counts.
    pub fn apply(&mut self, block: &mut MinedBlock) {
        if let Some(cap) = &mut self.cap {
            cap.apply(block);
        }
        reuse_and_shortfall::apply_shortfall(block, self.limit, self.shortfall);
    }
}

/// Seeds for per-(anchor, positive) random choices: independent of threads and blocks.
pub(crate) fn seeded_hash(seed: u64, a: u64, b: u64, stream: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(splitmix(splitmix(splitmix(seed) ^ a) ^ b) ^ stream)
}

/// A seeded generator for one anchor (and positive) and purpose.
fn rng_for(seed: u64, anchor: u32, positive: u32, stream: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seeded_hash(seed, anchor as u64, positive as u64, stream))
}

/// Asks the processor for every cache line of `v` ahead of its use (a hint: it reads
/// nothing, and does nothing off x86-64).
#[inline]
fn prefetch_lines<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let (p, bytes) = (v.as_ptr().cast::<i8>(), std::mem::size_of_val(v));
        for at in (0..bytes).step_by(64) {
            // SAFETY: a prefetch of an address inside `v`; it reads nothing.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(at)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Sorts `(distance, row)` pairs ascending, ties by row.
fn sort_nearest(list: &mut [(f32, u32)]) {
    list.sort_unstable_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
}

/// Sorts `(distance, row)` pairs descending, ties by the smaller row.
fn sort_farthest(list: &mut [(f32, u32)]) {
    list.sort_unstable_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
}
