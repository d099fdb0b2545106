//! The one-pass exact engine: equal to the brute-force oracle and to the deepening ladder
//! whatever the tile shape (tables not a multiple of a tile, tiles of one row or one anchor),
//! with bands that are empty, narrower than `N`, or all tied, and with enough rows per band
//! that its selectors prune. Random samples are the same for any tiles and thread count, are
//! qualifying rows with exact ranks, and spread over the band; rank windows (with guards and
//! random sampling) equal the ladder.

use crate::common::{Oracle, blob_table, grid_table, outcomes};
use proptest::prelude::*;
use tripmine::Table;
use tripmine::config::{
    Count, Metric, MiningParams, NegativeSampling, NegativeStrategy, PositiveStrategy,
};
use tripmine::mine::{MinedBlock, Miner, Tiles};

fn mine(table: &Table, params: &MiningParams, one_pass: bool, tiles: Tiles) -> MinedBlock {
    let mut miner = Miner::new(table, params).unwrap();
    miner.set_one_pass(one_pass);
    miner.set_tiles(tiles);
    miner.mine_all().unwrap()
}

const STRATEGIES: [NegativeStrategy; 5] = [
    NegativeStrategy::Hard,
    NegativeStrategy::Semihard,
    NegativeStrategy::Easy,
    NegativeStrategy::Violating,
    NegativeStrategy::Hardest,
];

fn params(negatives: NegativeStrategy, num_negatives: Count, metric: Metric) -> MiningParams {
    MiningParams {
        metric,
        negatives,
        num_negatives,
        positives: PositiveStrategy::Hardest,
        num_positives: Count::AtMost(2),
        margin: 0.3,
        ..Default::default()
    }
}

fn assert_equals_oracle(table: &Table, p: &MiningParams, tiles: Tiles) {
    let mined = mine(table, p, true, tiles);
    let (triplets, anchors) = Oracle::new(table, p.metric).mine(p);
    assert_eq!(outcomes(mined.anchors), anchors, "{p:?} {tiles:?}");
    assert_eq!(mined.triplets, triplets, "{p:?} {tiles:?}");
}

#[test]
fn tables_that_are_not_a_multiple_of_the_tile_equal_the_oracle() {
    let table = blob_table(203, 6, 5, 11);
    for tiles in [
        Tiles {
            anchors: 1,
            rows: 1,
        },
        Tiles {
            anchors: 7,
            rows: 50,
        },
        Tiles {
            anchors: 64,
            rows: 202,
        },
        Tiles {
            anchors: 500,
            rows: 5000,
        },
    ] {
        for s in STRATEGIES {
            assert_equals_oracle(&table, &params(s, Count::AtMost(3), Metric::L2sq), tiles);
        }
    }
}

#[test]
fn selectors_that_prune_keep_exact_ranks() {
    // 900 rows, few labels: each band holds hundreds of rows, so selectors prune many times.
    for (table, metric) in [
        (blob_table(900, 8, 3, 5), Metric::L2sq),
        (blob_table(900, 8, 3, 6), Metric::Cosine),
        (grid_table(900, 3, 4, 3, 7), Metric::L2sq),
    ] {
        for s in STRATEGIES {
            for n in [Count::AtMost(1), Count::AtMost(5)] {
                let tiles = Tiles {
                    anchors: 37,
                    rows: 64,
                };
                assert_equals_oracle(&table, &params(s, n, metric), tiles);
            }
        }
    }
}

/// The one-pass engine with every anchor's pairs sharing one selector (or each its own), on
/// both scan paths.
fn mine_shared(
    table: &Table,
    p: &MiningParams,
    tiles: Tiles,
    shared: bool,
    portable: bool,
) -> MinedBlock {
    let mut miner = Miner::new(table, p).unwrap();
    miner.set_tiles(tiles);
    miner.set_portable_scan(portable);
    miner.set_gap_min_pairs(if shared { 1 } else { usize::MAX });
    miner.mine_all().unwrap()
}

#[test]
fn anchors_of_many_positives_share_one_selector_that_equals_the_oracle() {
    // Few labels: every anchor has dozens of positives, whose bands overlap and interleave;
    // each pair's negatives and ranks must be what its own search gives.
    for (table, metric) in [
        (blob_table(301, 8, 4, 21), Metric::L2sq),
        (blob_table(301, 8, 5, 22), Metric::Cosine),
        (grid_table(257, 3, 4, 3, 23), Metric::L2sq),
    ] {
        for s in STRATEGIES {
            for n in [Count::AtMost(1), Count::AtMost(5), Count::All] {
                for margin in [0.0, 0.3, 2.0] {
                    let p = MiningParams {
                        metric,
                        negatives: s,
                        num_negatives: n,
                        positives: PositiveStrategy::All,
                        num_positives: Count::All,
                        margin,
                        ..Default::default()
                    };
                    let (triplets, anchors) = Oracle::new(&table, metric).mine(&p);
                    for portable in [false, true] {
                        let tiles = Tiles {
                            anchors: 29,
                            rows: 70,
                        };
                        let mined = mine_shared(&table, &p, tiles, true, portable);
                        assert_eq!(outcomes(mined.anchors), anchors, "{p:?} {portable}");
                        assert_eq!(mined.triplets, triplets, "{p:?} {portable}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_shared_selector_equals_one_per_pair_at_tile_edges_and_ties() {
    // All-tied rows (every distance 0), and tables not a multiple of the tile.
    for table in [grid_table(120, 4, 3, 1, 3), blob_table(203, 6, 3, 11)] {
        for s in STRATEGIES {
            for n in [Count::AtMost(2), Count::All] {
                let p = MiningParams {
                    negatives: s,
                    num_negatives: n,
                    positives: PositiveStrategy::All,
                    num_positives: Count::All,
                    margin: 0.1,
                    ..Default::default()
                };
                for tiles in [
                    Tiles {
                        anchors: 1,
                        rows: 1,
                    },
                    Tiles {
                        anchors: 16,
                        rows: 17,
                    },
                    Tiles {
                        anchors: 500,
                        rows: 5000,
                    },
                ] {
                    let own = mine_shared(&table, &p, tiles, false, false);
                    let shared = mine_shared(&table, &p, tiles, true, false);
                    assert_eq!(shared.anchors, own.anchors, "{p:?} {tiles:?}");
                    assert_eq!(shared.triplets, own.triplets, "{p:?} {tiles:?}");
                }
            }
        }
    }
}

#[test]
fn all_tied_bands_are_ranked_by_row() {
    // Every vector the same: every distance 0, every order decided by row.
    let table = grid_table(120, 4, 3, 1, 3);
    for s in STRATEGIES {
        for n in [Count::AtMost(2), Count::All] {
            let p = MiningParams {
                margin: 0.0,
                ..params(s, n, Metric::L2sq)
            };
            assert_equals_oracle(
                &table,
                &p,
                Tiles {
                    anchors: 16,
                    rows: 17,
                },
            );
        }
    }
}

#[test]
fn bands_that_are_empty_or_narrower_than_n() {
    let table = grid_table(150, 2, 3, 4, 9);
    // Margin 0: the semi-hard band is empty. N = 50: wider than any band.
    for (margin, n) in [(0.0, Count::AtMost(3)), (0.5, Count::AtMost(50))] {
        for s in STRATEGIES {
            let p = MiningParams {
                margin,
                ..params(s, n, Metric::L2sq)
            };
            assert_equals_oracle(
                &table,
                &p,
                Tiles {
                    anchors: 9,
                    rows: 31,
                },
            );
        }
    }
}

/// Grid tables (ties and duplicate vectors) or continuous ones, with at least two labels.
fn table_strategy() -> impl Strategy<Value = Table> {
    (8usize..90, 1usize..5, 2i64..5, 1u32..6, any::<bool>()).prop_flat_map(
        |(rows, dim, labels, side, grid)| {
            (
                proptest::collection::vec(0..side, rows * dim),
                proptest::collection::vec(-1.0f32..1.0, rows * dim),
                proptest::collection::vec(0..labels, rows),
            )
                .prop_filter_map("two labels", move |(coords, noise, ls)| {
                    let vectors = if grid {
                        coords.into_iter().map(|c| c as f32 * 0.5).collect()
                    } else {
                        noise
                    };
                    let labels = std::sync::Arc::new(arrow::array::Int64Array::from(ls));
                    Table::from_arrays(None, labels, vectors, dim).ok()
                })
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn one_pass_equals_the_ladder_whatever_the_tiles(
        table in table_strategy(),
        strategy in proptest::sample::select(STRATEGIES.to_vec()),
        n in prop_oneof![Just(Count::AtMost(1)), Just(Count::AtMost(4)), Just(Count::All)],
        positives in prop_oneof![Just(PositiveStrategy::Hardest), Just(PositiveStrategy::Easiest), Just(PositiveStrategy::All)],
        metric in prop_oneof![Just(Metric::L2sq), Just(Metric::Cosine)],
        margin in prop_oneof![Just(0.0f32), Just(0.2f32), Just(1.5f32)],
        tiles in (1usize..20, 1usize..40).prop_map(|(anchors, rows)| Tiles { anchors, rows }),
        portable in any::<bool>(),
        num_positives in prop_oneof![Just(Count::AtMost(2)), Just(Count::All)],
        shared in any::<bool>(),
    ) {
        let p = MiningParams {
            metric,
            margin,
            negatives: strategy,
            num_negatives: n,
            positives,
            num_positives,
            ..Default::default()
        };
        let ladder = mine(&table, &p, false, Tiles::default());
        let mut miner = Miner::new(&table, &p).unwrap();
        miner.set_tiles(tiles);
        miner.set_portable_scan(portable);
        if shared {
            // Every anchor's pairs share one selector, even one pair.
            miner.set_gap_min_pairs(1);
        }
        let one_pass = miner.mine_all().unwrap();
        prop_assert_eq!(one_pass.anchors, ladder.anchors);
        prop_assert_eq!(one_pass.triplets, ladder.triplets);
    }
}

#[test]
fn large_norms_and_small_distances_stay_exact() {
    // Every row far from the origin, rows close together: the products cancel to a few bits,
    // so nearly every decision is left to exact distances.
    use rand::{RngExt, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    let (rows, dim) = (400usize, 16usize);
    let vectors: Vec<f32> = (0..rows * dim)
        .map(|_| 100.0 + rng.random_range(-0.01f32..0.01))
        .collect();
    let labels: Vec<i64> = (0..rows as i64).map(|i| i % 4).collect();
    let table = Table::from_arrays(
        None,
        std::sync::Arc::new(arrow::array::Int64Array::from(labels)),
        vectors,
        dim,
    )
    .unwrap();
    for s in STRATEGIES {
        let p = MiningParams {
            margin: 0.0005,
            ..params(s, Count::AtMost(3), Metric::L2sq)
        };
        assert_equals_oracle(
            &table,
            &p,
            Tiles {
                anchors: 32,
                rows: 64,
            },
        );
    }
}

fn random(negatives: NegativeStrategy, n: usize, metric: Metric, seed: u64) -> MiningParams {
    MiningParams {
        sample: NegativeSampling::Random,
        seed,
        ..params(negatives, Count::AtMost(n), metric)
    }
}

/// Mines on a pool of `threads`, with the portable scan where `threads` is 1 (so that the
/// sample is also compared across the two scans).
fn mine_on_threads(table: &Table, p: &MiningParams, tiles: Tiles, threads: usize) -> MinedBlock {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(|| {
            let mut miner = Miner::new(table, p).unwrap();
            miner.set_tiles(tiles);
            miner.set_portable_scan(threads == 1);
            miner.mine_all().unwrap()
        })
}

#[test]
fn random_samples_do_not_depend_on_tiles_or_threads() {
    let table = blob_table(700, 6, 3, 31);
    for s in STRATEGIES {
        let p = random(s, 4, Metric::L2sq, 9);
        let one = mine_on_threads(&table, &p, Tiles::default(), 1);
        assert!(!one.triplets.is_empty(), "{s:?}");
        for (tiles, threads) in [
            (
                Tiles {
                    anchors: 7,
                    rows: 33,
                },
                2,
            ),
            (
                Tiles {
                    anchors: 1,
                    rows: 1,
                },
                2,
            ),
            (
                Tiles {
                    anchors: 100,
                    rows: 512,
                },
                1,
            ),
        ] {
            let other = mine_on_threads(&table, &p, tiles, threads);
            assert_eq!(one.triplets, other.triplets, "{s:?} {tiles:?} {threads}");
            assert_eq!(one.anchors, other.anchors, "{s:?} {tiles:?} {threads}");
        }
    }
}

#[test]
fn sample_shortcuts_give_the_samples_and_ranks_of_two_passes() {
    // Dense bands (hardest: every negative) are drawn in key order before the pass, sparse
    // ones found by it and ranked from the whole band it kept; with the shortcuts off, the
    // pass finds all of them and a second pass ranks them. Same triplets, ranks and records.
    for (table, metric) in [
        (blob_table(600, 6, 3, 41), Metric::L2sq),
        (blob_table(500, 5, 20, 42), Metric::Cosine),
        (grid_table(400, 2, 3, 3, 43), Metric::L2sq),
    ] {
        let mut total = 0;
        for s in STRATEGIES {
            for n in [1, 4] {
                let p = random(s, n, metric, 13);
                let mined = |draw: bool| {
                    let mut miner = Miner::new(&table, &p).unwrap();
                    miner.set_tiles(Tiles {
                        anchors: 37,
                        rows: 64,
                    });
                    miner.set_sample_shortcuts(draw);
                    miner.mine_all().unwrap()
                };
                let (drawn, found) = (mined(true), mined(false));
                total += found.triplets.len();
                assert_eq!(drawn.triplets, found.triplets, "{s:?} {n} {metric:?}");
                assert_eq!(drawn.anchors, found.anchors, "{s:?} {n} {metric:?}");
            }
        }
        assert!(total > 1000, "{metric:?}: {total} triplets");
    }
}

/// `table` with `offset` added to every coordinate (labels kept).
fn shifted(table: Table, offset: f32) -> Table {
    let vectors: Vec<f32> = table.vectors().iter().map(|x| x + offset).collect();
    let labels = table.label_column().expect("labelled").clone();
    Table::from_arrays(None, labels, vectors, table.dim()).unwrap()
}

#[test]
fn random_samples_are_qualifying_rows_with_exact_ranks() {
    for (table, metric) in [
        (blob_table(500, 6, 3, 32), Metric::L2sq),
        (blob_table(400, 5, 4, 33), Metric::Cosine),
        (grid_table(300, 2, 3, 3, 34), Metric::L2sq),
        // Far from the origin: the products' rounding errors (the norms are large) exceed the
        // gaps between neighbours' distances, so many decisions fall to the exact distance.
        (shifted(blob_table(500, 6, 3, 36), 200.0), Metric::L2sq),
    ] {
        let oracle = Oracle::new(&table, metric);
        for s in STRATEGIES {
            let p = random(s, 3, metric, 5);
            let mined = mine(
                &table,
                &p,
                true,
                Tiles {
                    anchors: 13,
                    rows: 40,
                },
            );
            for a in 0..table.rows() {
                let chosen = oracle.chosen_positives(a, &p);
                let got: Vec<_> = mined
                    .triplets
                    .iter()
                    .filter(|t| t.anchor == a as u32)
                    .collect();
                for &(d_ap, pos) in &chosen {
                    let qualifying = oracle.qualifying(a, d_ap, &p);
                    let of_pair: Vec<(u32, f32, u32)> = got
                        .iter()
                        .filter(|t| t.positive == pos)
                        .map(|t| (t.negative_rank, t.d_an, t.negative))
                        .collect();
                    assert_eq!(of_pair.len(), qualifying.len().min(3), "{s:?} anchor {a}");
                    assert!(of_pair.windows(2).all(|w| w[0].0 < w[1].0), "rank order");
                    for t in &of_pair {
                        assert!(
                            qualifying.contains(t),
                            "{s:?} anchor {a}: {t:?} ({metric:?})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn random_samples_spread_over_the_band() {
    // Wide bands (hundreds of qualifying rows): where the sampled rows sit in their band,
    // as a fraction of its length, averages near the middle, far from nearest-first.
    let table = blob_table(800, 4, 2, 35);
    let oracle = Oracle::new(&table, Metric::L2sq);
    let p = random(NegativeStrategy::Hardest, 2, Metric::L2sq, 11);
    let mined = mine(&table, &p, true, Tiles::default());
    let mut positions = Vec::new();
    for t in &mined.triplets {
        let qualifying = oracle.qualifying(t.anchor as usize, t.d_ap, &p);
        let at = qualifying
            .iter()
            .position(|q| q.2 == t.negative)
            .expect("a qualifying row");
        positions.push(at as f64 / qualifying.len() as f64);
    }
    assert!(positions.len() > 1000);
    let mean = positions.iter().sum::<f64>() / positions.len() as f64;
    assert!((mean - 0.5).abs() < 0.05, "mean position {mean}");
    let other = mine(
        &table,
        &MiningParams {
            seed: 12,
            ..p.clone()
        },
        true,
        Tiles::default(),
    );
    assert_ne!(
        mined.triplets, other.triplets,
        "another seed, another sample"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn rank_windows_equal_the_ladder_whatever_the_tiles(
        table in table_strategy(),
        strategy in proptest::sample::select(STRATEGIES.to_vec()),
        n in prop_oneof![Just(Count::AtMost(1)), Just(Count::AtMost(3)), Just(Count::All)],
        sample in prop_oneof![Just(NegativeSampling::Nearest), Just(NegativeSampling::Random)],
        range_min in 0usize..6,
        range_len in 1usize..30,
        ceiling in prop_oneof![Just(None), Just(Some(0.5f32))],
        tiles in (1usize..20, 1usize..40).prop_map(|(anchors, rows)| Tiles { anchors, rows }),
    ) {
        let p = MiningParams {
            metric: Metric::Cosine,
            margin: 0.2,
            negatives: strategy,
            num_negatives: n,
            sample,
            range_min,
            range_max: Some(range_min + range_len),
            max_negative_similarity: ceiling,
            ..Default::default()
        };
        let ladder = mine(&table, &p, false, Tiles::default());
        let one_pass = mine(&table, &p, true, tiles);
        prop_assert_eq!(one_pass.anchors, ladder.anchors);
        prop_assert_eq!(one_pass.triplets, ladder.triplets);
    }
}

#[test]
fn shared_selectors_over_a_spilled_table_write_what_they_write_in_memory() {
    // Vectors spilled (a limit of a few KiB, unchecked in tests): the kept rows' exact
    // distances read the rows from the scratch file, the gaps' rows among them.
    use crate::common::bin::{generated, mine_with_summary};
    let dir = tempfile::TempDir::new().unwrap();
    let input = generated(dir.path(), "t.parquet", 900, 12, 41);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let all = ["--positives", "all", "--num-positives", "all"];
    for (out, limited) in [("mem.parquet", false), ("spilled.parquet", true)] {
        let mut args = vec!["--out", out];
        args.extend(all);
        if limited {
            args.extend(["--memory-limit", "32KiB", "--scratch-dir"]);
            args.push(scratch.to_str().unwrap());
        }
        let run = mine_with_summary(dir.path(), &input, &args).success();
        let log = String::from_utf8_lossy(&run.get_output().stderr).to_string();
        assert_eq!(log.contains("vectors spill"), limited, "{log}");
    }
    let bytes = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    assert!(bytes("mem.parquet") == bytes("spilled.parquet"));
}
