//! The exact engine against its floor: one bare sgemm pass over all pairs of the table, timed
//! in the same run, then mining with every exact strategy, by the one-pass engine and (for the
//! default strategy) by the deepening ladder it replaces. Prints each time and its ratio to the
//! sgemm pass, medians over `TRIPMINE_BENCH_RUNS` runs (default 3).
//!
//! Tables: E1 (`tripmine gen` defaults of the whole-job bench: separation 1.0) and E1-overlap
//! (separation 0.3: mean d(a, p) within 2% of mean d(a, n)), `TRIPMINE_BENCH_ROWS` x
//! `TRIPMINE_BENCH_DIM` (default 100,000 x 128), `TRIPMINE_BENCH_LABELS` (1,000).
//! `TRIPMINE_BENCH_TABLES=overlap` (or `e1`) runs one table only; `TRIPMINE_BENCH_LADDER=0`
//! skips the ladder (slow on overlapping classes); `TRIPMINE_BENCH_STRATEGIES=semihard,hard`
//! runs the strategies whose names start so; `TRIPMINE_BENCH_TILES=2048x256` sets the
//! engine's tiles (anchors x rows; anchors of many positives take a sixteenth of the anchors
//! and sixteen times the rows).
//!
//! Run: `cargo bench --bench exact_engine`

mod common;
use common::*;

use std::time::Instant;

use tripmine::commands::synthetic::{GenSpec, generate_to_file};
use tripmine::config::{Count, MiningParams, NegativeSampling, NegativeStrategy, PositiveStrategy};
use tripmine::mine::{Miner, Tiles};

/// Seconds of one bare pass of inner products over all pairs of `v` (`rows x dim`), in
/// blocks of 512 x 2048, results discarded: what every exact miner pays at least.
fn sgemm_pass(v: &[f32], dim: usize) -> f64 {
    let rows = v.len() / dim;
    let (qb, tb) = (512usize, 2048usize);
    let mut out = vec![0f32; qb * tb];
    let started = Instant::now();
    for q0 in (0..rows).step_by(qb) {
        let q = &v[q0 * dim..(q0 + qb).min(rows) * dim];
        for t0 in (0..rows).step_by(tb) {
            let t = &v[t0 * dim..(t0 + tb).min(rows) * dim];
            let (m, n) = ((q.len() / dim) as i32, (t.len() / dim) as i32);
            // SAFETY: row-major q (m x dim) times t^T (dim x n) into out (m x n).
            unsafe {
                cblas_sgemm(
                    ROW_MAJOR,
                    NO_TRANS,
                    TRANS,
                    m,
                    n,
                    dim as i32,
                    1.0,
                    q.as_ptr(),
                    dim as i32,
                    t.as_ptr(),
                    dim as i32,
                    0.0,
                    out.as_mut_ptr(),
                    n,
                );
            }
        }
    }
    std::hint::black_box(&out);
    started.elapsed().as_secs_f64()
}

fn main() {
    tripmine::process::reexec_with_passive_openmp();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rows: usize = env_or("TRIPMINE_BENCH_ROWS", 100_000);
    let dim: usize = env_or("TRIPMINE_BENCH_DIM", 128);
    let labels: usize = env_or("TRIPMINE_BENCH_LABELS", 1_000);
    let runs: usize = env_or("TRIPMINE_BENCH_RUNS", 3);
    let ladder = env_or("TRIPMINE_BENCH_LADDER", 1) != 0;
    let only: String = env_or("TRIPMINE_BENCH_TABLES", "both".to_string());
    // `ANCHORSxROWS`, e.g. `256x2048`, to try other tile shapes.
    let tiles: Option<Tiles> = std::env::var("TRIPMINE_BENCH_TILES").ok().and_then(|t| {
        let (a, r) = t.split_once('x')?;
        Some(Tiles {
            anchors: a.parse().ok()?,
            rows: r.parse().ok()?,
        })
    });
    let tables: Vec<(&str, f32)> = [("E1", 1.0), ("E1-overlap", 0.3)]
        .into_iter()
        .filter(|(name, _)| match only.as_str() {
            "overlap" => *name == "E1-overlap",
            "e1" => *name == "E1",
            _ => true,
        })
        .collect();
    println!(
        "exact engine: {rows} rows x {dim} dims, {labels} labels, {} cores, {runs} run(s) each",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let base = MiningParams::default();
    let strategies: Vec<(&str, MiningParams)> = vec![
        ("semihard (default)", base.clone()),
        (
            "hard",
            MiningParams {
                negatives: NegativeStrategy::Hard,
                ..base.clone()
            },
        ),
        (
            "violating",
            MiningParams {
                negatives: NegativeStrategy::Violating,
                ..base.clone()
            },
        ),
        (
            "easy",
            MiningParams {
                negatives: NegativeStrategy::Easy,
                ..base.clone()
            },
        ),
        (
            "hardest",
            MiningParams {
                negatives: NegativeStrategy::Hardest,
                ..base.clone()
            },
        ),
        (
            "semihard, sample random",
            MiningParams {
                sample: NegativeSampling::Random,
                ..base.clone()
            },
        ),
        (
            "positives random x 4",
            MiningParams {
                positives: PositiveStrategy::Random,
                num_positives: Count::AtMost(4),
                ..base.clone()
            },
        ),
        (
            "positives all",
            MiningParams {
                positives: PositiveStrategy::All,
                ..base.clone()
            },
        ),
    ];
    // `TRIPMINE_BENCH_STRATEGIES=semihard,hard` runs those only (by the start of their names).
    let wanted: Option<Vec<String>> = std::env::var("TRIPMINE_BENCH_STRATEGIES")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let strategies: Vec<_> = strategies
        .into_iter()
        .filter(|(name, _)| {
            wanted
                .as_ref()
                .is_none_or(|w| w.iter().any(|w| name.starts_with(w.as_str())))
        })
        .collect();
    for (name, separation) in tables {
        let spec = GenSpec {
            rows,
            dim,
            labels,
            seed: 42,
            separation,
            intrinsic_dim: None,
        };
        let dir = tempfile::TempDir::new().expect("temp dir");
        let path = dir.path().join("table.parquet");
        generate_to_file(&spec, &path).expect("generate");
        let table = tripmine::io::read_table(&[path], &Default::default()).expect("read");
        let floor = median(
            (0..runs)
                .map(|_| sgemm_pass(table.vectors(), dim))
                .collect(),
        );
        println!(
            "{name} (separation {separation}): one sgemm pass over all pairs {floor:.2} s ({:.1} GFLOP/s)",
            2.0 * (rows * rows * dim) as f64 / floor / 1e9
        );
        let time = |params: &MiningParams, one_pass: bool, runs: usize| {
            let mut triplets = 0;
            let mut pass = 0.0;
            let walls: Vec<f64> = (0..runs)
                .map(|_| {
                    let started = Instant::now();
                    let mut miner = Miner::new(&table, params).expect("miner");
                    miner.set_one_pass(one_pass);
                    if let Some(tiles) = tiles {
                        miner.set_tiles(tiles);
                    }
                    triplets = miner.mine_all().expect("mined").triplets.len();
                    pass = miner.search_stats().seconds;
                    started.elapsed().as_secs_f64()
                })
                .collect();
            (median(walls), triplets, pass)
        };
        for (label, params) in &strategies {
            let (wall, triplets, pass) = time(params, true, runs);
            println!(
                "  {label:<24} {wall:8.2} s  {:5.2} x sgemm  (negatives {pass:.2} s; {triplets} triplets, peak RSS so far {:.0} MiB)",
                wall / floor,
                peak_rss_kb() as f64 / 1024.0
            );
        }
        if ladder {
            let (wall, triplets, _) = time(&base, false, 1);
            println!(
                "  {:<24} {wall:8.2} s  {:5.2} x sgemm  ({triplets} triplets; one run)",
                "semihard, ladder",
                wall / floor
            );
        }
    }
}
