//! Retrieval mode, false-negative guards, the rank window, the reuse cap and the shortfall
//! policy: with the exact index every mined set equals an exhaustive search.

use std::collections::HashMap;

use crate::common::{Oracle, blob_table, grid_table, outcomes};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tripmine::Table;
use tripmine::config::{
    Count, Metric, MiningParams, NegativeSampling, NegativeStrategy, PositiveStrategy, Shortfall,
};
use tripmine::io::Queries;
use tripmine::mine::{MinedBlock, Miner};

const NEGATIVES: [NegativeStrategy; 5] = [
    NegativeStrategy::Hard,
    NegativeStrategy::Semihard,
    NegativeStrategy::Easy,
    NegativeStrategy::Violating,
    NegativeStrategy::Hardest,
];

/// A corpus of `docs` rows and `queries` queries near random documents; each query lists
/// 0 to 3 positives, mostly documents near it.
fn retrieval_set(corpus: Table, queries: usize, seed: u64) -> (Table, Queries) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, dim) = (corpus.rows(), corpus.dim());
    let mut vectors = Vec::with_capacity(queries * dim);
    let mut positives = Vec::with_capacity(queries);
    for _ in 0..queries {
        let near = rng.random_range(0..n);
        for j in 0..dim {
            vectors.push(corpus.vectors()[near * dim + j] + rng.random_range(-0.5f32..0.5));
        }
        let mut listed: Vec<u32> = (0..rng.random_range(0..4usize))
            .map(|i| {
                if i == 0 {
                    near as u32
                } else {
                    rng.random_range(0..n as u32)
                }
            })
            .collect();
        listed.sort_unstable();
        listed.dedup();
        positives.push(listed);
    }
    let table = Table::unlabelled(None, vectors, dim).unwrap();
    (
        Table::unlabelled(None, corpus.vectors().to_vec(), dim).unwrap(),
        Queries {
            table,
            positives,
            unknown_queries: 0,
        },
    )
}

fn assert_retrieval_matches(corpus: &Table, queries: &Queries, oracle: &Oracle, p: &MiningParams) {
    let mined = Miner::retrieval(corpus, queries, p, None)
        .unwrap()
        .mine_all()
        .unwrap();
    assert_same(mined, oracle.mine(p), p);
}

fn assert_labelled_matches(table: &Table, oracle: &Oracle, p: &MiningParams) {
    let mined = Miner::new(table, p).unwrap().mine_all().unwrap();
    assert_same(mined, oracle.mine(p), p);
}

fn assert_same(
    mined: MinedBlock,
    (triplets, anchors): (
        Vec<tripmine::mine::Triplet>,
        Vec<tripmine::mine::AnchorRecord>,
    ),
    p: &MiningParams,
) {
    assert_eq!(
        outcomes(mined.anchors),
        anchors,
        "anchor records differ for {p:?}"
    );
    assert_eq!(
        mined.triplets.len(),
        triplets.len(),
        "triplet count differs for {p:?}"
    );
    for (got, want) in mined.triplets.iter().zip(&triplets) {
        assert_eq!(got, want, "first differing triplet for {p:?}");
    }
}

#[test]
fn queries_against_a_corpus_equal_brute_force_for_every_strategy() {
    for (metric, margin, corpus) in [
        (Metric::L2sq, 1.0, grid_table(150, 2, 2, 3, 11)),
        (Metric::Cosine, 0.1, grid_table(150, 3, 2, 3, 12)),
        (Metric::L2sq, 0.5, blob_table(200, 6, 5, 13)),
    ] {
        let (corpus, queries) = retrieval_set(corpus, 60, 1);
        let oracle = Oracle::retrieval(&corpus, &queries, metric);
        for positives in [
            PositiveStrategy::Hardest,
            PositiveStrategy::Easiest,
            PositiveStrategy::All,
        ] {
            for negatives in NEGATIVES {
                for num_negatives in [Count::AtMost(1), Count::AtMost(3), Count::All] {
                    for k in [1, 16] {
                        let p = MiningParams {
                            metric,
                            margin,
                            positives,
                            num_positives: Count::AtMost(2),
                            negatives,
                            num_negatives,
                            k: Some(k),
                            ..Default::default()
                        };
                        assert_retrieval_matches(&corpus, &queries, &oracle, &p);
                    }
                }
            }
        }
    }
}

#[test]
fn queries_without_known_positives_are_counted_and_give_no_triplet() {
    let (corpus, queries) = retrieval_set(blob_table(100, 4, 3, 14), 40, 2);
    let empty: Vec<u32> = (0..40)
        .filter(|&q| queries.positives[q as usize].is_empty())
        .collect();
    assert!(!empty.is_empty(), "the set has queries without positives");
    let mined = Miner::retrieval(&corpus, &queries, &MiningParams::default(), None)
        .unwrap()
        .mine_all()
        .unwrap();
    for a in &mined.anchors {
        assert_eq!(a.has_positive, !empty.contains(&a.anchor));
    }
    assert!(mined.triplets.iter().all(|t| !empty.contains(&t.anchor)));
    // A known positive is never a negative.
    for t in &mined.triplets {
        assert!(queries.is_positive(t.anchor, t.positive));
        assert!(!queries.is_positive(t.anchor, t.negative));
    }
}

/// Cosine settings where each guard, alone, removes candidates.
fn guard_settings() -> Vec<(&'static str, MiningParams)> {
    let base = MiningParams {
        metric: Metric::Cosine,
        margin: 0.3,
        positives: PositiveStrategy::All,
        negatives: NegativeStrategy::Hardest,
        num_negatives: Count::AtMost(3),
        k: Some(4),
        ..Default::default()
    };
    vec![
        (
            "ceiling",
            MiningParams {
                max_negative_similarity: Some(0.9),
                ..base.clone()
            },
        ),
        (
            "margin",
            MiningParams {
                positive_margin: Some(0.05),
                ..base.clone()
            },
        ),
        (
            "percent",
            MiningParams {
                positive_percent: Some(95.0),
                ..base.clone()
            },
        ),
        (
            "near-duplicate",
            MiningParams {
                near_duplicate: Some(0.95),
                ..base.clone()
            },
        ),
        (
            "all four",
            MiningParams {
                max_negative_similarity: Some(0.97),
                positive_margin: Some(0.02),
                positive_percent: Some(98.0),
                near_duplicate: Some(0.9),
                ..base
            },
        ),
    ]
}

#[test]
fn each_false_negative_guard_equals_brute_force_and_counts_what_it_removed() {
    let (corpus, queries) = retrieval_set(blob_table(200, 4, 4, 15), 80, 3);
    let oracle = Oracle::retrieval(&corpus, &queries, Metric::Cosine);
    for (name, p) in guard_settings() {
        for negatives in NEGATIVES {
            for sample_all in [false, true] {
                let p = MiningParams {
                    negatives,
                    num_negatives: if sample_all {
                        Count::All
                    } else {
                        p.num_negatives
                    },
                    ..p.clone()
                };
                assert_retrieval_matches(&corpus, &queries, &oracle, &p);
            }
        }
        let mined = Miner::retrieval(&corpus, &queries, &p, None)
            .unwrap()
            .mine_all()
            .unwrap();
        let removed: u32 = mined
            .anchors
            .iter()
            .map(|a| a.guard_removed.iter().sum::<u32>())
            .sum();
        assert!(removed > 0, "{name}: the guard removed nothing here");
    }
}

#[test]
fn guards_apply_in_labelled_mode_too() {
    let table = blob_table(200, 4, 5, 16);
    let oracle = Oracle::new(&table, Metric::Cosine);
    for (_, p) in guard_settings() {
        for negatives in [NegativeStrategy::Hardest, NegativeStrategy::Semihard] {
            assert_labelled_matches(
                &table,
                &oracle,
                &MiningParams {
                    negatives,
                    ..p.clone()
                },
            );
        }
    }
}

#[test]
fn kept_negatives_pass_every_guard() {
    let (corpus, queries) = retrieval_set(blob_table(200, 4, 4, 17), 80, 4);
    let (_, p) = guard_settings().pop().unwrap();
    let mined = Miner::retrieval(&corpus, &queries, &p, None)
        .unwrap()
        .mine_all()
        .unwrap();
    let oracle = Oracle::retrieval(&corpus, &queries, Metric::Cosine);
    assert!(!mined.triplets.is_empty());
    for t in &mined.triplets {
        let s_an = 1.0 - t.d_an as f64;
        let s_ap = 1.0 - t.d_ap as f64;
        assert!(s_an <= 0.97 + 1e-9);
        assert!(s_an <= s_ap - 0.02 + 1e-9);
        assert!(s_an <= 0.98 * s_ap + 1e-9);
        let s_pn = 1.0 - oracle.dd[t.positive as usize * oracle.docs + t.negative as usize] as f64;
        assert!(s_pn < 0.9);
    }
}

#[test]
fn rank_window_equals_brute_force_in_both_modes() {
    let table = grid_table(150, 2, 3, 4, 18);
    let oracle = Oracle::new(&table, Metric::L2sq);
    let (corpus, queries) = retrieval_set(blob_table(150, 4, 3, 19), 50, 5);
    let r_oracle = Oracle::retrieval(&corpus, &queries, Metric::L2sq);
    for (range_min, range_max) in [(0, Some(10)), (5, Some(30)), (20, None), (3, Some(4))] {
        for negatives in [NegativeStrategy::Hardest, NegativeStrategy::Easy] {
            for num_negatives in [Count::AtMost(2), Count::All] {
                let p = MiningParams {
                    margin: 0.5,
                    positives: PositiveStrategy::Hardest,
                    negatives,
                    num_negatives,
                    range_min,
                    range_max,
                    k: Some(2),
                    ..Default::default()
                };
                assert_labelled_matches(&table, &oracle, &p);
                assert_retrieval_matches(&corpus, &queries, &r_oracle, &p);
            }
        }
    }
}

#[test]
fn random_negatives_of_a_rank_window_are_a_seeded_subset_of_it() {
    let (corpus, queries) = retrieval_set(blob_table(200, 4, 3, 20), 60, 6);
    let oracle = Oracle::retrieval(&corpus, &queries, Metric::L2sq);
    let p = MiningParams {
        positives: PositiveStrategy::Easiest,
        negatives: NegativeStrategy::Hardest,
        num_negatives: Count::AtMost(3),
        sample: NegativeSampling::Random,
        range_min: 10,
        range_max: Some(40),
        ..Default::default()
    };
    let mined = Miner::retrieval(&corpus, &queries, &p, None)
        .unwrap()
        .mine_all()
        .unwrap();
    let mut nearest_only = true;
    for a in 0..queries.table.rows() {
        let Some(&(d_ap, _)) = oracle.chosen_positives(a, &p).first() else {
            continue;
        };
        let window = oracle.qualifying(a, d_ap, &p);
        let got: Vec<(u32, f32, u32)> = mined
            .triplets
            .iter()
            .filter(|t| t.anchor == a as u32)
            .map(|t| (t.negative_rank, t.d_an, t.negative))
            .collect();
        assert_eq!(got.len(), window.len().min(3));
        assert!(got.iter().all(|g| window.contains(g)));
        assert!(got.iter().all(|g| (10..40).contains(&g.0)));
        nearest_only &= got[..] == window[..got.len()];
    }
    assert!(!nearest_only, "random sampling differs from nearest-first");
}

#[test]
fn negative_reuse_cap_equals_brute_force_and_keeps_the_nearest_anchors() {
    let table = blob_table(200, 4, 4, 21);
    let oracle = Oracle::new(&table, Metric::L2sq);
    let (corpus, queries) = retrieval_set(blob_table(120, 4, 3, 22), 150, 7);
    let r_oracle = Oracle::retrieval(&corpus, &queries, Metric::L2sq);
    for max in [1, 2, 5] {
        for shortfall in [Shortfall::Keep, Shortfall::Drop] {
            let p = MiningParams {
                positives: PositiveStrategy::All,
                negatives: NegativeStrategy::Hardest,
                num_negatives: Count::AtMost(3),
                max_negative_reuse: Some(max),
                shortfall,
                ..Default::default()
            };
            assert_labelled_matches(&table, &oracle, &p);
            assert_retrieval_matches(&corpus, &queries, &r_oracle, &p);
            let mined = Miner::retrieval(&corpus, &queries, &p, None)
                .unwrap()
                .mine_all()
                .unwrap();
            let mut users: HashMap<u32, Vec<u32>> = HashMap::new();
            for t in &mined.triplets {
                users.entry(t.negative).or_default().push(t.anchor);
            }
            for (neg, mut anchors) in users {
                anchors.dedup();
                assert!(anchors.len() <= max, "negative {neg} used by {anchors:?}");
            }
            let removed: u32 = mined.anchors.iter().map(|a| a.reuse_removed).sum();
            assert!(removed > 0, "the cap of {max} removed nothing here");
        }
    }
}

#[test]
fn shortfall_keep_counts_short_pairs_and_drop_removes_them() {
    let table = blob_table(150, 4, 5, 23);
    let oracle = Oracle::new(&table, Metric::L2sq);
    let p = MiningParams {
        margin: 0.3,
        positives: PositiveStrategy::All,
        negatives: NegativeStrategy::Semihard,
        num_negatives: Count::AtMost(4),
        ..Default::default()
    };
    let keep = Miner::new(&table, &p).unwrap().mine_all().unwrap();
    assert_same(keep.clone(), oracle.mine(&p), &p);
    let drop_p = MiningParams {
        shortfall: Shortfall::Drop,
        ..p.clone()
    };
    let dropped = Miner::new(&table, &drop_p).unwrap().mine_all().unwrap();
    assert_same(dropped.clone(), oracle.mine(&drop_p), &drop_p);
    let short: u32 = keep.anchors.iter().map(|a| a.short_pairs).sum();
    assert!(short > 0, "some pairs are short here");
    assert_eq!(
        short,
        dropped.anchors.iter().map(|a| a.dropped_pairs).sum::<u32>()
    );
    // Every pair left has exactly the number asked for; no pair is backfilled.
    let mut per_pair: HashMap<(u32, u32), usize> = HashMap::new();
    for t in &dropped.triplets {
        *per_pair.entry((t.anchor, t.positive)).or_default() += 1;
    }
    assert!(per_pair.values().all(|&n| n == 4));
    assert!(dropped.triplets.iter().all(|t| keep.triplets.contains(t)));
}

fn params_strategy(metric: Metric) -> impl Strategy<Value = MiningParams> {
    (
        (
            prop_oneof![
                Just(NegativeStrategy::Hard),
                Just(NegativeStrategy::Semihard),
                Just(NegativeStrategy::Easy),
                Just(NegativeStrategy::Violating),
                Just(NegativeStrategy::Hardest)
            ],
            prop_oneof![
                Just(Count::AtMost(1)),
                Just(Count::AtMost(3)),
                Just(Count::All)
            ],
            prop_oneof![
                Just(PositiveStrategy::Hardest),
                Just(PositiveStrategy::Easiest),
                Just(PositiveStrategy::All)
            ],
            1usize..10,
        ),
        (
            proptest::option::of(0.5f32..1.0),
            proptest::option::of(0.0f32..0.2),
            proptest::option::of(50f32..100.0),
            proptest::option::of(0.5f32..1.0),
        ),
        (
            0usize..6,
            proptest::option::of(1usize..20),
            proptest::option::of(1usize..4),
            prop_oneof![Just(Shortfall::Keep), Just(Shortfall::Drop)],
        ),
    )
        .prop_map(
            move |(
                (negatives, num_negatives, positives, k),
                (ceiling, margin, percent, dup),
                (range_min, range_len, reuse, shortfall),
            )| {
                let cosine = metric == Metric::Cosine;
                MiningParams {
                    metric,
                    margin: if cosine { 0.2 } else { 1.0 },
                    positives,
                    num_positives: Count::AtMost(2),
                    negatives,
                    num_negatives,
                    k: Some(k),
                    max_negative_similarity: ceiling.filter(|_| cosine),
                    positive_margin: margin.filter(|_| cosine),
                    positive_percent: percent.filter(|_| cosine),
                    near_duplicate: dup.filter(|_| cosine),
                    range_min,
                    range_max: range_len.map(|l| range_min + l),
                    max_negative_reuse: reuse,
                    shortfall,
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_rule_combination_equals_exhaustive_search_in_retrieval_mode(
        seed in 0u64..1000,
        p in prop_oneof![params_strategy(Metric::L2sq), params_strategy(Metric::Cosine)],
    ) {
        let (corpus, queries) = retrieval_set(grid_table(60, 3, 2, 4, seed), 30, seed);
        let oracle = Oracle::retrieval(&corpus, &queries, p.metric);
        let mined = Miner::retrieval(&corpus, &queries, &p, None).unwrap().mine_all().unwrap();
        let (triplets, anchors) = oracle.mine(&p);
        prop_assert_eq!(outcomes(mined.anchors), anchors);
        prop_assert_eq!(mined.triplets, triplets);
    }

    #[test]
    fn every_rule_combination_equals_exhaustive_search_in_labelled_mode(
        seed in 0u64..1000,
        p in prop_oneof![params_strategy(Metric::L2sq), params_strategy(Metric::Cosine)],
    ) {
        let table = grid_table(60, 3, 3, 4, seed);
        let oracle = Oracle::new(&table, p.metric);
        let mined = Miner::new(&table, &p).unwrap().mine_all().unwrap();
        let (triplets, anchors) = oracle.mine(&p);
        prop_assert_eq!(outcomes(mined.anchors), anchors);
        prop_assert_eq!(mined.triplets, triplets);
    }
}

#[test]
fn queries_of_another_dimension_than_the_corpus_are_refused() {
    let corpus = Table::unlabelled(None, vec![0.0; 12], 3).unwrap();
    let queries = Queries {
        table: Table::unlabelled(None, vec![0.0; 4], 2).unwrap(),
        positives: vec![vec![0], vec![1]],
        unknown_queries: 0,
    };
    let err = Miner::retrieval(&corpus, &queries, &MiningParams::default(), None)
        .err()
        .expect("refused");
    assert!(
        matches!(err, tripmine::Error::BadData(ref m) if m.contains("dimension 2") && m.contains("dimension 3")),
        "{err}"
    );
}
