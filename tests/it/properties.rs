//! Property tests: on random tables and settings, the miner equals the oracle, every triplet
//! satisfies its kind, and the report's counts add up.

use std::sync::Arc;

use crate::common::{Oracle, admits, outcomes};
use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{Float64Type, UInt64Type};
use proptest::prelude::*;
use tripmine::config::{Count, Metric, MiningParams, NegativeStrategy, PositiveStrategy};
use tripmine::mine::Miner;
use tripmine::report::ReportBuilder;
use tripmine::{Table, TripletKind};

fn table_strategy() -> impl Strategy<Value = Table> {
    (8usize..70, 1usize..5, 2i64..5, 2u32..6).prop_flat_map(|(rows, dim, labels, side)| {
        (
            proptest::collection::vec(0..side, rows * dim),
            proptest::collection::vec(0..labels, rows),
        )
            // A table with a single label is refused (tested elsewhere): draw again.
            .prop_filter_map("two labels", move |(coords, ls)| {
                let vectors = coords.into_iter().map(|c| c as f32 * 0.5).collect();
                Table::from_arrays(None, Arc::new(Int64Array::from(ls)), vectors, dim).ok()
            })
    })
}

fn params_strategy() -> impl Strategy<Value = MiningParams> {
    (
        prop_oneof![Just(Metric::L2sq), Just(Metric::Cosine)],
        prop_oneof![Just(0.0f32), Just(0.25f32), Just(1.0f32)],
        prop_oneof![
            Just(PositiveStrategy::Hardest),
            Just(PositiveStrategy::Easiest),
            Just(PositiveStrategy::All)
        ],
        prop_oneof![
            Just(Count::AtMost(1)),
            Just(Count::AtMost(2)),
            Just(Count::All)
        ],
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
        1usize..12,
    )
        .prop_map(
            |(metric, margin, positives, num_positives, negatives, num_negatives, k)| {
                MiningParams {
                    metric,
                    margin,
                    positives,
                    num_positives,
                    negatives,
                    num_negatives,
                    k: Some(k),
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mined_sets_equal_exhaustive_search(table in table_strategy(), params in params_strategy()) {
        let mined = Miner::new(&table, &params).unwrap().mine_all().unwrap();
        let (triplets, anchors) = Oracle::new(&table, params.metric).mine(&params);
        prop_assert_eq!(outcomes(mined.anchors), anchors);
        prop_assert_eq!(mined.triplets, triplets);
    }

    #[test]
    fn every_triplet_satisfies_its_strategy(table in table_strategy(), params in params_strategy()) {
        let mined = Miner::new(&table, &params).unwrap().mine_all().unwrap();
        let labels = &table.label_codes();
        for t in &mined.triplets {
            prop_assert_eq!(labels[t.anchor as usize], labels[t.positive as usize]);
            prop_assert_ne!(labels[t.anchor as usize], labels[t.negative as usize]);
            prop_assert_ne!(t.anchor, t.positive);
            let kind = TripletKind::classify(t.d_ap, t.d_an, params.margin);
            let ok = admits(params.negatives, kind);
            prop_assert!(ok, "{:?} triplet is {:?}", params.negatives, kind);
            let d = params.metric;
            let mut v = table.vectors().to_vec();
            if d == Metric::Cosine {
                tripmine::score::normalize_rows(&mut v, table.dim());
            }
            let row = |i: u32| &v[i as usize * table.dim()..(i as usize + 1) * table.dim()];
            prop_assert_eq!(t.d_ap, d.distance(row(t.anchor), row(t.positive)));
            prop_assert_eq!(t.d_an, d.distance(row(t.anchor), row(t.negative)));
        }
    }

    #[test]
    fn report_counts_add_up(table in table_strategy(), params in params_strategy()) {
        let mined = Miner::new(&table, &params).unwrap().mine_all().unwrap();
        let mut builder = ReportBuilder::new(params.margin);
        builder.add(&mined.triplets, &mined.anchors, |r| table.label_codes()[r as usize]).unwrap();
        let report = builder.finish(&table.label_names()).unwrap();
        let b = &report.batch;
        let rows = b.num_rows();
        // One row per label that has an anchor, then the overall row with a null label.
        prop_assert_eq!(rows, table.num_labels() + 1);
        prop_assert!(b.column(0).is_null(rows - 1));
        let count = |name: &str| b.column_by_name(name).unwrap().as_primitive::<UInt64Type>().values().to_vec();
        for name in ["anchors", "anchors_without_positive", "anchors_without_negative", "anchors_capped", "triplets", "hard", "semihard", "easy"] {
            let c = count(name);
            prop_assert_eq!(c[..rows - 1].iter().sum::<u64>(), c[rows - 1], "{} per label sums to overall", name);
        }
        let (t, h, s, e) = (count("triplets"), count("hard"), count("semihard"), count("easy"));
        for i in 0..rows {
            prop_assert_eq!(h[i] + s[i] + e[i], t[i]);
        }
        prop_assert_eq!(t[rows - 1], mined.triplets.len() as u64);
        prop_assert_eq!(count("anchors")[rows - 1], table.rows() as u64);
        let totals = &report.totals;
        prop_assert_eq!(totals.triplets, mined.triplets.len() as u64);
        if let Some(active) = totals.active_fraction {
            let want = mined.triplets.iter().filter(|t| t.d_ap - t.d_an + params.margin > 0.0).count() as f64
                / mined.triplets.len() as f64;
            prop_assert!((active - want).abs() < 1e-9);
        }
        let share = b.column_by_name("neighbour_violation_share").unwrap().as_primitive::<Float64Type>();
        for i in 0..rows {
            if share.is_valid(i) {
                prop_assert!((0.0..=1.0).contains(&share.value(i)));
            }
        }
    }
}
