//! Recall against search settings: one approximate index over a generated table, a seeded
//! sample of anchors mined exactly, then the sample mined at every (nprobe, k) of a grid: the
//! recall of mined negatives (with its 95% interval) and of candidates, and the time the
//! sample took, projected to every anchor beside exact mining's (timed on the same sample).
//! Last, what `--target-recall 0.95` settles on from the default setting.
//!
//! Shape by environment: `TRIPMINE_BENCH_ROWS` (300,000), `_DIM` (64), `_LABELS` (3,000),
//! `_SEPARATION` (1.0), `_INTRINSIC_DIM`, `_INDEX` (default: `auto`'s IVF layout for the
//! shape), `_SAMPLE` (anchors, 1,000), `_NPROBES` and `_KS` (comma-separated grids), and
//! `_NEGATIVES` (`semihard`, the default strategy, or another strategy name).

mod common;

use std::time::Instant;

use common::{env_or, median, spec_from_env};
use tripmine::commands::synthetic::generate_to_file;
use tripmine::config::{MiningParams, NegativeStrategy};
use tripmine::index::resolve_factory;
use tripmine::mine::{Miner, SearchKnobs};

fn list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|x| x.trim().parse().expect("a number"))
        .collect()
}

fn main() {
    tripmine::process::reexec_with_passive_openmp();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let spec = spec_from_env(300_000, 64, 3_000, 1.0);
    let negatives: NegativeStrategy = clap::ValueEnum::from_str(
        &env_or("TRIPMINE_BENCH_NEGATIVES", "semihard".to_string()),
        true,
    )
    .expect("a negative strategy");
    let index = env_or(
        "TRIPMINE_BENCH_INDEX",
        resolve_factory("auto", spec.rows, spec.dim, None, 0),
    );
    let sample_size: usize = env_or("TRIPMINE_BENCH_SAMPLE", 1_000);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let path = dir.path().join("table.parquet");
    generate_to_file(&spec, &path).expect("generate");
    let table = tripmine::io::read_table(&[path], &Default::default()).expect("read");
    println!(
        "recall grid: {} rows x {} dims, {} labels (separation {}, intrinsic dimension {}), {index}, negatives {negatives:?}, sample of {sample_size} anchors",
        spec.rows,
        spec.dim,
        spec.labels,
        spec.separation,
        spec.intrinsic_dim.unwrap_or(spec.dim)
    );
    let params = MiningParams {
        index: index.clone(),
        negatives,
        ..MiningParams::default()
    };
    let started = Instant::now();
    let mut miner = Miner::new(&table, &params).expect("index");
    println!("index built in {:.1} s", started.elapsed().as_secs_f64());
    let step = (spec.rows / sample_size).max(1);
    let sample: Vec<u32> = (0..spec.rows)
        .step_by(step)
        .take(sample_size)
        .map(|r| r as u32)
        .collect();
    let exact_per_anchor = median(
        (0..3)
            .map(|_| miner.exact_seconds_per_anchor(&sample).expect("exact"))
            .collect(),
    );
    let all = spec.rows as f64;
    println!(
        "exact mining: {:.2} ms an anchor, {:.0} s for all {} anchors",
        1e3 * exact_per_anchor,
        exact_per_anchor * all,
        spec.rows
    );
    let mut truth = miner.recall_truth(&sample).expect("truth");
    let defaults = miner.search_knobs();
    println!(
        "| nprobe | k | recall of mined negatives | of candidates | sample s | all anchors s |"
    );
    println!("|---|---|---|---|---|---|");
    for &nprobe in &list("TRIPMINE_BENCH_NPROBES", "8,16,32,64,128") {
        for &k in &list("TRIPMINE_BENCH_KS", "64,128,256,512,1024") {
            let knobs = SearchKnobs {
                nprobe: defaults.nprobe.map(|_| nprobe),
                k,
                ..defaults
            };
            miner.set_search_knobs(knobs).expect("settings");
            let started = Instant::now();
            let mined = miner.mine_block(&sample).expect("mined");
            let seconds = started.elapsed().as_secs_f64();
            let recall = miner
                .recall_of(&mut truth, &mined.triplets, true)
                .expect("recall");
            let negatives = recall.negatives.map_or("-".to_string(), |e| e.to_string());
            println!(
                "| {nprobe} | {k} | {negatives} | {} | {seconds:.2} | {:.0} |",
                recall.candidates.map_or("-".to_string(), |e| e.to_string()),
                seconds / sample.len() as f64 * all
            );
        }
    }
    miner.set_search_knobs(defaults).expect("settings");
    let tuning = miner
        .tune_recall(
            &mut truth,
            0.95,
            Some(exact_per_anchor * sample.len() as f64),
        )
        .expect("tuning");
    for step in &tuning.steps {
        let show =
            |e: Option<tripmine::mine::Estimate>| e.map_or("-".to_string(), |e| e.to_string());
        println!(
            "  tried {}: recall {}, reach {}, within depth {}, capped {}, {:.2} s",
            step.knobs,
            show(step.recall.negatives),
            show(step.recall.reach),
            show(step.recall.depth),
            step.capped,
            step.seconds
        );
    }
    let settled = tuning.settled_step();
    println!(
        "--target-recall 0.95 from {defaults}: {} after {} settings ({:.1} s); recall {}, all anchors {:.0} s{}",
        tuning.settled,
        tuning.steps.len(),
        tuning.seconds,
        settled
            .recall
            .negatives
            .map_or("-".to_string(), |e| e.to_string()),
        settled.seconds / sample.len() as f64 * all,
        tuning
            .stopped
            .as_ref()
            .map_or(String::new(), |s| format!(" (not met: {s})"))
    );
}
