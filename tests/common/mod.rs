//! Shared by the integration tests: table builders and the brute-force oracle.
#![allow(dead_code)]

pub mod bin;

use std::sync::Arc;

use arrow::array::Int64Array;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tripmine::config::{Metric, MiningParams, NegativeStrategy, PositiveStrategy};
use tripmine::mine::{AnchorRecord, NeighbourLabels, Triplet};
use tripmine::score::normalize_rows;
use tripmine::{Table, TripletKind};

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

/// Every pairwise distance, by the library's exact distance (its definition of `d`).
pub struct Oracle {
    pub n: usize,
    pub labels: Vec<u32>,
    pub d: Vec<f32>,
}

impl Oracle {
    pub fn new(table: &Table, metric: Metric) -> Oracle {
        let mut v = table.vectors.clone();
        if metric == Metric::Cosine {
            normalize_rows(&mut v, table.dim);
        }
        let n = table.rows();
        let dim = table.dim;
        let mut d = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                d[i * n + j] =
                    metric.distance(&v[i * dim..(i + 1) * dim], &v[j * dim..(j + 1) * dim]);
            }
        }
        Oracle {
            n,
            labels: table.label_codes.clone(),
            d,
        }
    }

    pub fn dist(&self, a: usize, b: usize) -> f32 {
        self.d[a * self.n + b]
    }

    /// All rows but `a`, by (distance, row): index = neighbour rank.
    pub fn neighbours(&self, a: usize) -> Vec<(f32, u32)> {
        let mut all: Vec<(f32, u32)> = (0..self.n)
            .filter(|&r| r != a)
            .map(|r| (self.dist(a, r), r as u32))
            .collect();
        all.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap().then(x.1.cmp(&y.1)));
        all
    }

    /// Same-label rows but `a`, as (distance, row), in row order.
    pub fn positives(&self, a: usize) -> Vec<(f32, u32)> {
        (0..self.n)
            .filter(|&r| r != a && self.labels[r] == self.labels[a])
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

    /// Qualifying negatives of (a, p) as (rank, distance, row), nearest first.
    pub fn qualifying(&self, a: usize, d_ap: f32, p: &MiningParams) -> Vec<(u32, f32, u32)> {
        self.neighbours(a)
            .into_iter()
            .enumerate()
            .filter(|(_, (_, r))| self.labels[*r as usize] != self.labels[a])
            .filter(|(_, (d, _))| admits(p.negatives, TripletKind::classify(d_ap, *d, p.margin)))
            .map(|(rank, (d, r))| (rank as u32, d, r))
            .collect()
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

    /// Whether a's nearest other-label row is within d(a, hardest positive) + margin.
    pub fn violating_neighbour(&self, a: usize, margin: f32) -> Option<bool> {
        let hardest = self.positives(a).iter().map(|x| x.0).reduce(f32::max)?;
        let (d, _) = self
            .neighbours(a)
            .into_iter()
            .find(|(_, r)| self.labels[*r as usize] != self.labels[a])?;
        Some(TripletKind::classify(hardest, d, margin) != TripletKind::Easy)
    }

    /// Everything an exhaustive search gives with nearest-first negatives and a
    /// deterministic positive strategy, every row an anchor.
    pub fn mine(&self, p: &MiningParams) -> (Vec<Triplet>, Vec<AnchorRecord>) {
        let mut triplets = Vec::new();
        let mut records = Vec::new();
        for a in 0..self.n {
            let positives = self.chosen_positives(a, p);
            let mut count = 0;
            for &(d_ap, pos) in &positives {
                for (rank, d_an, neg) in self
                    .qualifying(a, d_ap, p)
                    .into_iter()
                    .take(p.num_negatives.limit())
                {
                    triplets.push(Triplet {
                        anchor: a as u32,
                        positive: pos,
                        negative: neg,
                        d_ap,
                        d_an,
                        negative_rank: rank,
                    });
                    count += 1;
                }
            }
            records.push(AnchorRecord {
                anchor: a as u32,
                label: self.labels[a],
                has_positive: !self.positives(a).is_empty(),
                triplets: count,
                capped: false,
                violating_neighbour: self.violating_neighbour(a, p.margin),
                neighbour_labels: (!self.positives(a).is_empty())
                    .then(|| self.neighbour_labels(a, p.suspects_k)),
            });
        }
        (triplets, records)
    }
}
