//! Shared by the integration tests: table builders and the brute-force oracle.
#![allow(dead_code)]

pub mod bin;

use std::sync::Arc;

use arrow::array::Int64Array;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tripmine::config::{Metric, MiningParams, NegativeStrategy, PositiveStrategy, Shortfall};
use tripmine::io::Queries;
use tripmine::mine::{AnchorBounds, AnchorRecord, NeighbourLabels, Triplet};
use tripmine::score::normalize_rows;
use tripmine::{Table, TripletKind};

/// Anchor records as the oracle gives them: the outcome, without the bounds the miner keeps
/// for incremental runs.
pub fn outcomes(records: Vec<AnchorRecord>) -> Vec<AnchorRecord> {
    records
        .into_iter()
        .map(|r| AnchorRecord {
            bounds: AnchorBounds::NONE,
            neighbours: 0,
            ..r
        })
        .collect()
}

/// Small integer coordinates: many equal distances and duplicate vectors across labels.
pub fn grid_table(rows: usize, dim: usize, labels: i64, side: u32, seed: u64) -> Table {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vectors: Vec<f32> = (0..rows * dim)
        .map(|_| rng.random_range(0..side) as f32)
        .collect();
    let labels: Vec<i64> = (0..rows).map(|_| rng.random_range(0..labels)).collect();
    Table::from_arrays(None, Arc::new(Int64Array::from(labels)), vectors, dim).unwrap()
}

/// Gaussian clusters (no ties), labels drawn at random.
pub fn blob_table(rows: usize, dim: usize, labels: i64, seed: u64) -> Table {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..labels as usize * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let mut vectors = Vec::with_capacity(rows * dim);
    let mut ls = Vec::with_capacity(rows);
    for _ in 0..rows {
        let l = rng.random_range(0..labels);
        ls.push(l);
        for j in 0..dim {
            vectors.push(centres[l as usize * dim + j] + rng.random_range(-1.0f32..1.0));
        }
    }
    Table::from_arrays(None, Arc::new(Int64Array::from(ls)), vectors, dim).unwrap()
}

/// Whether a negative strategy takes a triplet of this kind (the table).
pub fn admits(strategy: NegativeStrategy, kind: TripletKind) -> bool {
    match strategy {
        NegativeStrategy::Hard => kind == TripletKind::Hard,
        NegativeStrategy::Semihard => kind == TripletKind::Semihard,
        NegativeStrategy::Easy => kind == TripletKind::Easy,
        NegativeStrategy::Violating => kind != TripletKind::Easy,
        NegativeStrategy::Hardest => true,
    }
}

/// Every distance an exhaustive search needs, by the library's exact distance (its
/// definition of `d`): anchors to indexed rows, and indexed rows to each other.
///
/// Labelled mode: the anchors are the table's rows; positives share the label. Retrieval mode:
/// anchors are queries; positives are listed per query; every corpus row is a neighbour.
pub struct Oracle {
    /// Anchors.
    pub n: usize,
    /// Indexed rows (the table, or the corpus).
    pub docs: usize,
    /// Label code of every anchor (labelled mode).
    pub labels: Vec<u32>,
    /// `d[a * docs + r]`.
    pub d: Vec<f32>,
    /// `dd[p * docs + r]`, between indexed rows.
    pub dd: Vec<f32>,
    /// Retrieval mode: each query's positive corpus rows.
    pub listed: Option<Vec<Vec<u32>>>,
}

fn prepared(table: &Table, metric: Metric) -> Vec<f32> {
    let mut v = table.vectors().to_vec();
    if metric == Metric::Cosine {
        normalize_rows(&mut v, table.dim());
    }
    v
}

fn all_distances(a: &[f32], b: &[f32], dim: usize, metric: Metric) -> Vec<f32> {
    let (n, m) = (a.len() / dim, b.len() / dim);
    let mut d = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            d[i * m + j] = metric.distance(&a[i * dim..(i + 1) * dim], &b[j * dim..(j + 1) * dim]);
        }
    }
    d
}

impl Oracle {
    pub fn new(table: &Table, metric: Metric) -> Oracle {
        let v = prepared(table, metric);
        let d = all_distances(&v, &v, table.dim(), metric);
        Oracle {
            n: table.rows(),
            docs: table.rows(),
            labels: table.label_codes().to_vec(),
            dd: d.clone(),
            d,
            listed: None,
        }
    }

    pub fn retrieval(corpus: &Table, queries: &Queries, metric: Metric) -> Oracle {
        let c = prepared(corpus, metric);
        let q = prepared(&queries.table, metric);
        Oracle {
            n: queries.table.rows(),
            docs: corpus.rows(),
            labels: vec![0; queries.table.rows()],
            d: all_distances(&q, &c, corpus.dim(), metric),
            dd: all_distances(&c, &c, corpus.dim(), metric),
            listed: Some(queries.positives.clone()),
        }
    }

    pub fn dist(&self, a: usize, b: usize) -> f32 {
        self.d[a * self.docs + b]
    }

    fn is_self(&self, a: usize, r: usize) -> bool {
        self.listed.is_none() && a == r
    }

    /// Whether indexed row `r` is a positive of anchor `a` (never `a` itself).
    pub fn is_positive(&self, a: usize, r: usize) -> bool {
        match &self.listed {
            Some(listed) => listed[a].contains(&(r as u32)),
            None => r != a && self.labels[r] == self.labels[a],
        }
    }

    /// All indexed rows but `a`, by (distance, row): index = neighbour rank.
    pub fn neighbours(&self, a: usize) -> Vec<(f32, u32)> {
        let mut all: Vec<(f32, u32)> = (0..self.docs)
            .filter(|&r| !self.is_self(a, r))
            .map(|r| (self.dist(a, r), r as u32))
            .collect();
        all.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap().then(x.1.cmp(&y.1)));
        all
    }

    /// Positives of `a`, as (distance, row), in row order.
    pub fn positives(&self, a: usize) -> Vec<(f32, u32)> {
        (0..self.docs)
            .filter(|&r| self.is_positive(a, r))
            .map(|r| (self.dist(a, r), r as u32))
            .collect()
    }

    /// Positives chosen by a deterministic strategy, in row order.
    pub fn chosen_positives(&self, a: usize, p: &MiningParams) -> Vec<(f32, u32)> {
        let mut all = self.positives(a);
        let n = p.num_positives.limit();
        match p.positives {
            PositiveStrategy::Hardest => {
                all.sort_by(|x, y| y.0.partial_cmp(&x.0).unwrap().then(x.1.cmp(&y.1)));
                all.truncate(n);
            }
            PositiveStrategy::Easiest => {
                all.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap().then(x.1.cmp(&y.1)));
                all.truncate(n);
            }
            PositiveStrategy::All => {}
            PositiveStrategy::Random => panic!("random positives have no oracle order"),
        }
        all.sort_by_key(|x| x.1);
        all
    }

    /// The first guard (0 ceiling, 1 margin, 2 percent, 3 near-duplicate) that rejects
    /// negative `neg` of positive `pos`, written from the definitions in similarity
    /// `s = 1 - d`.
    pub fn guard(
        &self,
        p: &MiningParams,
        d_ap: f32,
        d_an: f32,
        pos: u32,
        neg: u32,
    ) -> Option<usize> {
        let s = |d: f32| 1.0 - d as f64;
        let s_pn = s(self.dd[pos as usize * self.docs + neg as usize]);
        if p.max_negative_similarity
            .is_some_and(|c| s(d_an) > c as f64)
        {
            return Some(0);
        }
        if p.positive_margin
            .is_some_and(|m| s(d_an) > s(d_ap) - m as f64)
        {
            return Some(1);
        }
        if p.positive_percent
            .is_some_and(|pc| s(d_an) > pc as f64 / 100.0 * s(d_ap))
        {
            return Some(2);
        }
        if p.near_duplicate.is_some_and(|t| s_pn >= t as f64) {
            return Some(3);
        }
        None
    }

    /// Negatives of (a, p) in the rank window whose kind the strategy takes, as (rank,
    /// distance, row), nearest first; guards not applied.
    pub fn qualifying(&self, a: usize, d_ap: f32, p: &MiningParams) -> Vec<(u32, f32, u32)> {
        let max = p.range_max.unwrap_or(usize::MAX);
        self.neighbours(a)
            .into_iter()
            .enumerate()
            .filter(|(rank, _)| *rank >= p.range_min && *rank < max)
            .filter(|(_, (_, r))| !self.is_positive(a, *r as usize))
            .filter(|(_, (d, _))| admits(p.negatives, TripletKind::classify(d_ap, *d, p.margin)))
            .map(|(rank, (d, r))| (rank as u32, d, r))
            .collect()
    }

    /// The negatives selected nearest-first for (a, positive), guards applied, and the
    /// candidates each guard removed before the selection was complete.
    pub fn selected(
        &self,
        a: usize,
        d_ap: f32,
        pos: u32,
        p: &MiningParams,
    ) -> (Vec<(u32, f32, u32)>, [u32; 4]) {
        let mut removed = [0u32; 4];
        let mut taken = Vec::new();
        for (rank, d, r) in self.qualifying(a, d_ap, p) {
            if taken.len() == p.num_negatives.limit() {
                break;
            }
            match self.guard(p, d_ap, d, pos, r) {
                Some(g) => removed[g] += 1,
                None => taken.push((rank, d, r)),
            }
        }
        (taken, removed)
    }

    /// Agreement and majority label of a's k nearest other rows.
    pub fn neighbour_labels(&self, a: usize, k: usize) -> NeighbourLabels {
        let near: Vec<u32> = self
            .neighbours(a)
            .into_iter()
            .take(k)
            .map(|(_, r)| self.labels[r as usize])
            .collect();
        let count = |l: u32| near.iter().filter(|&&x| x == l).count();
        let mut distinct = near.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // Most frequent, ties to the smaller label code.
        let majority = distinct
            .iter()
            .copied()
            .max_by_key(|&l| (count(l), std::cmp::Reverse(l)))
            .unwrap();
        NeighbourLabels {
            agreement: count(self.labels[a]) as f32 / near.len() as f32,
            majority,
        }
    }

    /// Whether a's nearest negative is within d(a, hardest positive) + margin.
    pub fn violating_neighbour(&self, a: usize, margin: f32) -> Option<bool> {
        let hardest = self.positives(a).iter().map(|x| x.0).reduce(f32::max)?;
        let (d, _) = self
            .neighbours(a)
            .into_iter()
            .find(|(_, r)| !self.is_positive(a, *r as usize))?;
        Some(TripletKind::classify(hardest, d, margin) != TripletKind::Easy)
    }

    /// Everything an exhaustive search gives with nearest-first negatives and a
    /// deterministic positive strategy, every row an anchor: guards and the rank window
    /// first, then the reuse cap over all anchors, then the shortfall policy.
    pub fn mine(&self, p: &MiningParams) -> (Vec<Triplet>, Vec<AnchorRecord>) {
        let mut triplets = Vec::new();
        let mut records = Vec::new();
        for a in 0..self.n {
            let positives = self.chosen_positives(a, p);
            let mut guard_removed = [0u32; 4];
            for &(d_ap, pos) in &positives {
                let (taken, removed) = self.selected(a, d_ap, pos, p);
                for (g, r) in guard_removed.iter_mut().zip(removed) {
                    *g += r;
                }
                for (rank, d_an, neg) in taken {
                    triplets.push(Triplet {
                        anchor: a as u32,
                        positive: pos,
                        negative: neg,
                        d_ap,
                        d_an,
                        negative_rank: rank,
                    });
                }
            }
            let has_positive = !self.positives(a).is_empty();
            records.push(AnchorRecord {
                anchor: a as u32,
                label: self.labels[a],
                has_positive,
                triplets: 0,
                capped: false,
                violating_neighbour: self.violating_neighbour(a, p.margin),
                neighbour_labels: (has_positive && self.listed.is_none())
                    .then(|| self.neighbour_labels(a, p.suspects_k)),
                pairs: positives.len() as u32,
                short_pairs: 0,
                dropped_pairs: 0,
                guard_removed,
                reuse_removed: 0,
                bounds: AnchorBounds::NONE,
                neighbours: 0,
            });
        }
        // Reuse cap: for each negative, the `max` nearest anchors (ties: smaller anchor).
        if let Some(max) = p.max_negative_reuse {
            let mut users: std::collections::BTreeMap<u32, Vec<(f32, u32)>> = Default::default();
            for t in &triplets {
                let list = users.entry(t.negative).or_default();
                if !list.iter().any(|u| u.1 == t.anchor) {
                    list.push((t.d_an, t.anchor));
                }
            }
            let mut allowed = std::collections::HashSet::new();
            for (neg, mut list) in users {
                list.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap().then(x.1.cmp(&y.1)));
                for (_, a) in list.into_iter().take(max) {
                    allowed.insert((a, neg));
                }
            }
            triplets.retain(|t| {
                let keep = allowed.contains(&(t.anchor, t.negative));
                if !keep {
                    records[t.anchor as usize].reuse_removed += 1;
                }
                keep
            });
        }
        // Shortfall: a pair with fewer than asked is short; dropped under `drop`.
        let limit = p.num_negatives.limit();
        if limit != usize::MAX {
            for (a, record) in records.iter_mut().enumerate() {
                for (_, pos) in self.chosen_positives(a, p) {
                    let got = triplets
                        .iter()
                        .filter(|t| t.anchor == a as u32 && t.positive == pos)
                        .count();
                    if got < limit {
                        record.short_pairs += 1;
                        if p.shortfall == Shortfall::Drop {
                            record.dropped_pairs += 1;
                            triplets.retain(|t| !(t.anchor == a as u32 && t.positive == pos));
                        }
                    }
                }
            }
        }
        for t in &triplets {
            records[t.anchor as usize].triplets += 1;
        }
        (triplets, records)
    }
}
