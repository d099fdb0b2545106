//! With the exact index, every mined set equals an exhaustive search over the whole table.

use crate::common::{Oracle, blob_table, grid_table, outcomes};
use tripmine::Table;
use tripmine::config::{
    Count, Metric, MiningParams, NegativeSampling, NegativeStrategy, PositiveStrategy,
};
use tripmine::mine::Miner;

const NEGATIVES: [NegativeStrategy; 5] = [
    NegativeStrategy::Hard,
    NegativeStrategy::Semihard,
    NegativeStrategy::Easy,
    NegativeStrategy::Violating,
    NegativeStrategy::Hardest,
];

fn assert_matches_oracle(table: &Table, oracle: &Oracle, params: &MiningParams) {
    let mined = Miner::new(table, params).unwrap().mine_all().unwrap();
    let (want_triplets, want_anchors) = oracle.mine(params);
    assert_eq!(
        outcomes(mined.anchors),
        want_anchors,
        "anchor records differ for {params:?}"
    );
    assert_eq!(
        mined.triplets.len(),
        want_triplets.len(),
        "triplet count differs for {params:?}"
    );
    for (got, want) in mined.triplets.iter().zip(&want_triplets) {
        assert_eq!(got, want, "first differing triplet for {params:?}");
    }
}

/// Every deterministic strategy against the oracle, with shallow and deep first searches.
fn sweep(table: &Table, metric: Metric, margin: f32, ks: &[usize]) {
    let oracle = Oracle::new(table, metric);
    for positives in [
        PositiveStrategy::Hardest,
        PositiveStrategy::Easiest,
        PositiveStrategy::All,
    ] {
        for num_positives in [Count::AtMost(1), Count::AtMost(2)] {
            if positives == PositiveStrategy::All && num_positives != Count::AtMost(1) {
                continue;
            }
            for negatives in NEGATIVES {
                for num_negatives in [Count::AtMost(1), Count::AtMost(3), Count::All] {
                    for &k in ks {
                        let params = MiningParams {
                            metric,
                            margin,
                            positives,
                            num_positives,
                            negatives,
                            num_negatives,
                            k: Some(k),
                            ..Default::default()
                        };
                        assert_matches_oracle(table, &oracle, &params);
                    }
                }
            }
        }
    }
}

#[test]
fn l2sq_on_a_grid_with_ties_and_duplicates_equals_brute_force() {
    // Coordinates in {0, 1, 2}: many rows share a distance, many vectors repeat across labels.
    let table = grid_table(120, 2, 4, 3, 1);
    sweep(&table, Metric::L2sq, 1.0, &[1, 4, 64]);
}

#[test]
fn cosine_on_a_grid_with_ties_and_duplicates_equals_brute_force() {
    let table = grid_table(120, 3, 3, 3, 2);
    sweep(&table, Metric::Cosine, 0.1, &[2, 64]);
}

#[test]
fn l2sq_on_overlapping_clusters_equals_brute_force() {
    let table = blob_table(200, 8, 6, 3);
    sweep(&table, Metric::L2sq, 0.5, &[3, 16]);
}

#[test]
fn cosine_on_overlapping_clusters_equals_brute_force() {
    let table = blob_table(200, 8, 6, 4);
    sweep(&table, Metric::Cosine, 0.05, &[3]);
}

#[test]
fn large_label_groups_use_exact_extremes() {
    // Two labels of about 350 rows: positives go through the group index (farthest as a
    // maximum-inner-product search), with ties from the integer grid.
    let table = grid_table(700, 3, 2, 5, 5);
    for metric in [Metric::L2sq, Metric::Cosine] {
        let oracle = Oracle::new(&table, metric);
        for (positives, num_positives) in [
            (PositiveStrategy::Hardest, Count::AtMost(1)),
            (PositiveStrategy::Hardest, Count::AtMost(40)),
            (PositiveStrategy::Easiest, Count::AtMost(3)),
        ] {
            for negatives in [
                NegativeStrategy::Semihard,
                NegativeStrategy::Hard,
                NegativeStrategy::Easy,
            ] {
                let params = MiningParams {
                    metric,
                    margin: if metric == Metric::L2sq { 2.0 } else { 0.05 },
                    positives,
                    num_positives,
                    negatives,
                    num_negatives: Count::AtMost(2),
                    k: Some(8),
                    ..Default::default()
                };
                assert_matches_oracle(&table, &oracle, &params);
            }
        }
    }
}

#[test]
fn random_positives_are_a_seeded_subset_of_the_label() {
    let table = blob_table(150, 4, 5, 6);
    let oracle = Oracle::new(&table, Metric::L2sq);
    let params = MiningParams {
        positives: PositiveStrategy::Random,
        num_positives: Count::AtMost(3),
        negatives: NegativeStrategy::Hardest,
        num_negatives: Count::AtMost(1),
        k: Some(4),
        ..Default::default()
    };
    let mined = Miner::new(&table, &params).unwrap().mine_all().unwrap();
    for a in 0..table.rows() {
        let group = oracle.positives(a);
        let mut chosen: Vec<(f32, u32)> = mined
            .triplets
            .iter()
            .filter(|t| t.anchor == a as u32)
            .map(|t| (t.d_ap, t.positive))
            .collect();
        chosen.dedup();
        assert_eq!(chosen.len(), group.len().min(3), "anchor {a}");
        assert!(
            chosen.windows(2).all(|w| w[0].1 < w[1].1),
            "positives in row order"
        );
        for c in &chosen {
            assert!(
                group.contains(c),
                "anchor {a}: {c:?} is not a positive with its exact distance"
            );
        }
    }
    let again = Miner::new(&table, &params).unwrap().mine_all().unwrap();
    assert_eq!(mined.triplets, again.triplets, "same seed, same choice");
    let other = Miner::new(
        &table,
        &MiningParams {
            seed: 7,
            ..params.clone()
        },
    )
    .unwrap()
    .mine_all()
    .unwrap();
    assert_ne!(
        mined.triplets, other.triplets,
        "another seed, another choice"
    );
}

#[test]
fn random_negatives_are_a_seeded_subset_of_the_qualifying_ones() {
    let table = blob_table(150, 4, 5, 7);
    let oracle = Oracle::new(&table, Metric::L2sq);
    for negatives in NEGATIVES {
        let params = MiningParams {
            margin: 0.8,
            positives: PositiveStrategy::Easiest,
            negatives,
            num_negatives: Count::AtMost(4),
            sample: NegativeSampling::Random,
            k: Some(4),
            ..Default::default()
        };
        let mined = Miner::new(&table, &params).unwrap().mine_all().unwrap();
        for a in 0..table.rows() {
            let Some(&(d_ap, p)) = oracle.chosen_positives(a, &params).first() else {
                continue;
            };
            let qualifying = oracle.qualifying(a, d_ap, &params);
            let got: Vec<(u32, f32, u32)> = mined
                .triplets
                .iter()
                .filter(|t| t.anchor == a as u32)
                .map(|t| {
                    assert_eq!((t.positive, t.d_ap), (p, d_ap));
                    (t.negative_rank, t.d_an, t.negative)
                })
                .collect();
            assert_eq!(
                got.len(),
                qualifying.len().min(4),
                "anchor {a}, {negatives:?}"
            );
            assert!(
                got.windows(2).all(|w| w[0].0 < w[1].0),
                "ordered by d_an then row"
            );
            for g in &got {
                assert!(
                    qualifying.contains(g),
                    "anchor {a}: {g:?} does not qualify ({negatives:?})"
                );
            }
        }
    }
}

#[test]
fn anchors_sample_is_a_seeded_subset_mined_like_the_full_run() {
    let table = blob_table(300, 4, 5, 8);
    let params = MiningParams {
        positives: PositiveStrategy::Hardest,
        anchors_sample: Some(40),
        seed: 3,
        ..Default::default()
    };
    let miner = Miner::new(&table, &params).unwrap();
    let anchors = miner.anchors();
    assert_eq!(anchors.len(), 40);
    assert!(anchors.windows(2).all(|w| w[0] < w[1]));
    let sampled = Miner::new(&table, &params).unwrap().mine_all().unwrap();
    let full = Miner::new(
        &table,
        &MiningParams {
            anchors_sample: None,
            ..params.clone()
        },
    )
    .unwrap()
    .mine_all()
    .unwrap();
    let from_full: Vec<_> = full
        .triplets
        .iter()
        .filter(|t| anchors.contains(&t.anchor))
        .copied()
        .collect();
    assert_eq!(sampled.triplets, from_full);
    let other = Miner::new(
        &table,
        &MiningParams {
            seed: 4,
            ..params.clone()
        },
    )
    .unwrap()
    .anchors();
    assert_ne!(anchors, other);
    // The table's first 250 rows: their sample holds every pick of the whole table's among
    // them (keys do not depend on the row count), and more.
    let head = blob_table(250, 4, 5, 8);
    let of_head = Miner::new(&head, &params).unwrap().anchors();
    assert_eq!(of_head.len(), 40);
    let kept: Vec<u32> = anchors.iter().copied().filter(|&a| a < 250).collect();
    assert!(
        kept.iter().all(|a| of_head.contains(a)),
        "{kept:?} {of_head:?}"
    );
    assert!(kept.len() < 40);
}

#[test]
fn max_k_caps_deep_searches_and_counts_them() {
    // Easy negatives with `all` need the whole table: a cap of 8 stops every anchor.
    let table = blob_table(200, 4, 4, 9);
    let params = MiningParams {
        negatives: NegativeStrategy::Easy,
        num_negatives: Count::All,
        k: Some(4),
        max_k: Some(8),
        ..Default::default()
    };
    let mined = Miner::new(&table, &params).unwrap().mine_all().unwrap();
    let capped = mined.anchors.iter().filter(|a| a.capped).count();
    assert!(capped > 0);
    assert!(mined.anchors.iter().all(|a| a.triplets <= 8));
    let uncapped = Miner::new(
        &table,
        &MiningParams {
            max_k: None,
            ..params
        },
    )
    .unwrap()
    .mine_all()
    .unwrap();
    assert!(uncapped.anchors.iter().all(|a| !a.capped));
    assert!(uncapped.triplets.len() > mined.triplets.len());
}

#[test]
fn anchors_resolved_within_max_k_are_not_counted_as_capped() {
    // The first search is already at the cap; the nearest other-label row of every anchor
    // lies well within its 64 candidates, so none of them was stopped by the cap.
    let table = blob_table(200, 4, 4, 10);
    let oracle = Oracle::new(&table, Metric::L2sq);
    let params = MiningParams {
        positives: PositiveStrategy::Hardest,
        negatives: NegativeStrategy::Hardest,
        num_negatives: Count::AtMost(1),
        k: Some(64),
        max_k: Some(64),
        ..Default::default()
    };
    assert_matches_oracle(&table, &oracle, &params);
}

#[test]
fn anchors_alone_in_their_label_have_no_positive() {
    use std::sync::Arc;
    let labels = Arc::new(arrow::array::StringArray::from(vec!["a", "a", "b", "c"]));
    let table = Table::from_arrays(None, labels, vec![0.0, 1.0, 2.0, 3.0], 1).unwrap();
    let mined = Miner::new(&table, &MiningParams::default())
        .unwrap()
        .mine_all()
        .unwrap();
    let without: Vec<u32> = mined
        .anchors
        .iter()
        .filter(|a| !a.has_positive)
        .map(|a| a.anchor)
        .collect();
    assert_eq!(without, vec![2, 3]);
    assert!(mined.triplets.iter().all(|t| t.anchor < 2));
}
