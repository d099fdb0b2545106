//! The whole job (read Parquet, index, mine, score, write, report) on a generated table.
//!
//! Default: 100,000 rows x 128 dims, 1,000 labels, default strategy, exact Flat index, three
//! runs; prints each run and the medians of wall time, rows/s and peak RSS.
//! Shape by environment: `TRIPMINE_BENCH_ROWS`, `_DIM`, `_LABELS`, `_RUNS`, `_INDEX`.
//!
//! Run: `cargo bench --bench whole_job`

use std::time::Instant;

use tripmine::io::synthetic::{GenSpec, generate_to_file};
use tripmine::{MiningConfig, MiningOptions, MiningParams};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process (kB), from /proc.
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS so each run reports its own (Linux >= 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // Same OpenMP set-up as the binary (see `reexec_with_passive_openmp`).
    tripmine::cli::reexec_with_passive_openmp();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let spec = GenSpec {
        rows: env_or("TRIPMINE_BENCH_ROWS", 100_000),
        dim: env_or("TRIPMINE_BENCH_DIM", 128),
        labels: env_or("TRIPMINE_BENCH_LABELS", 1_000),
        seed: 42,
        separation: 1.0,
    };
    let runs: usize = env_or("TRIPMINE_BENCH_RUNS", 3);
    let index: String = env_or("TRIPMINE_BENCH_INDEX", "Flat".to_string());
    let dir = tempfile::TempDir::new().expect("temp dir");
    let input = dir.path().join("bench.parquet");
    generate_to_file(&spec, &input).expect("generate");
    let config = MiningConfig::new(MiningOptions {
        inputs: vec![input],
        params: MiningParams {
            index: index.clone(),
            ..Default::default()
        },
        out: dir.path().join("triplets.parquet"),
        report: dir.path().join("report.parquet"),
        ..Default::default()
    })
    .expect("valid config");

    let raw_mib = (spec.rows * spec.dim * 4) as f64 / (1 << 20) as f64;
    println!(
        "whole job: {} rows x {} dims, {} labels, index {index}, default strategy ({} cores; raw vectors {raw_mib:.1} MiB)",
        spec.rows,
        spec.dim,
        spec.labels,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let (mut walls, mut rates, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        reset_peak_rss();
        let started = Instant::now();
        let summary = tripmine::run(&config).expect("job runs");
        let wall = started.elapsed().as_secs_f64();
        let peak_mib = peak_rss_kb() as f64 / 1024.0;
        let rate = spec.rows as f64 / wall;
        println!(
            "  run {run}: {wall:7.2} s  {rate:9.0} rows/s  peak RSS {peak_mib:7.1} MiB  ({} triplets; read {:.2} s, index {:.2} s, mine+write {:.2} s)",
            summary.totals.triplets,
            summary.seconds.read,
            summary.seconds.index,
            summary.seconds.mine
        );
        walls.push(wall);
        rates.push(rate);
        peaks.push(peak_mib);
    }
    println!(
        "median of {runs}: {:.2} s, {:.0} rows/s, peak RSS {:.1} MiB",
        median(walls),
        median(rates),
        median(peaks)
    );
}
