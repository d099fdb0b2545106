//! The whole job (read Parquet, index, mine, score, write, report) on a generated table.
//!
//! Default: 100,000 rows x 128 dims, 1,000 labels, default strategy, exact Flat index, three
//! runs; prints each run and the medians of wall time, rows/s and peak RSS.
//! Shape by environment: `TRIPMINE_BENCH_ROWS`, `_DIM`, `_LABELS`, `_SEPARATION` (of the class
//! centres, 1.0 by default; larger values make well-separated clusters), `_INTRINSIC_DIM` (the
//! dimension centres and spread live in; all of `_DIM` by default), `_RUNS`, `_INDEX`; more
//! `tripmine mine` flags in `TRIPMINE_BENCH_ARGS` (e.g. `--nprobe 16 --check-recall 2000`).
//!
//! Run: `cargo bench --bench whole_job`

mod common;
use common::*;

use std::time::Instant;

use clap::Parser;
use tripmine::commands::synthetic::generate_to_file;

/// The machine's sgemm GFLOP/s on the shape FAISS's exact search uses: 4096 queries times
/// 1024 base rows of dimension `dim` (C = A B^T).
fn sgemm_gflops(dim: usize) -> f64 {
    let (m, n) = (4096usize, 1024usize);
    let a: Vec<f32> = (0..m * dim).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * dim).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut run = || {
        // SAFETY: buffers of the sizes the call reads and writes.
        unsafe {
            cblas_sgemm(
                ROW_MAJOR,
                NO_TRANS,
                TRANS,
                m as i32,
                n as i32,
                dim as i32,
                1.0,
                a.as_ptr(),
                dim as i32,
                b.as_ptr(),
                dim as i32,
                0.0,
                c.as_mut_ptr(),
                n as i32,
            )
        }
    };
    run();
    let reps = 40;
    let started = Instant::now();
    for _ in 0..reps {
        run();
    }
    2.0 * (m * n * dim * reps) as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// One run in this process: prints `wall_seconds peak_rss_kb triplets read index mine search
/// queries recall_negatives recall_candidates tune`, and the index with how it was chosen
/// and tuned into `search.txt`. `extra` holds `tripmine mine` flags.
fn child(input: &str, index: &str, out_dir: &str, extra: &str) {
    let out = std::path::Path::new(out_dir);
    let mut argv: Vec<String> = ["tripmine", "mine", "--in", input, "--index", index]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.extend(extra.split_whitespace().map(str::to_string));
    argv.extend([
        "--out".into(),
        out.join("triplets.parquet").display().to_string(),
    ]);
    argv.extend([
        "--report".into(),
        out.join("report.parquet").display().to_string(),
    ]);
    // Every run does the work: the previous run's manifest must not skip it.
    argv.extend(["--force".into(), "--no-progress".into()]);
    let cli = tripmine::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
    let tripmine::cli::Command::Mine(args) = cli.command else {
        unreachable!("a mine command")
    };
    let config = args.config().expect("valid config");
    let started = Instant::now();
    let summary = tripmine::run(&config).expect("job runs");
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{wall} {} {} {} {} {} {} {} {} {} {}",
        peak_rss_kb(),
        summary.totals.triplets,
        summary.seconds.read,
        summary.seconds.index,
        summary.seconds.mine,
        summary.seconds.search.seconds,
        summary.seconds.search.queries,
        summary.totals.recall_negatives.unwrap_or(f64::NAN),
        summary.totals.recall_candidates.unwrap_or(f64::NAN),
        summary.seconds.tune
    );
    // The index mined with and how it was chosen and tuned, for the parent to print.
    let note = tripmine::pipeline::search_note(
        summary.tuning.as_ref(),
        summary.auto.as_ref(),
        summary.exact,
    );
    let lo = summary.totals.recall_negatives_lo.unwrap_or(f64::NAN);
    std::fs::write(
        out.join("search.txt"),
        format!(
            "index {} (recall negatives lower bound {lo:.4}){}",
            summary.index,
            note.map_or(String::new(), |n| format!(": {n}"))
        ),
    )
    .expect("search note written");
}

fn main() {
    // Same OpenMP set-up as the binary (see `reexec_with_passive_openmp`).
    tripmine::process::reexec_with_passive_openmp();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let index: String = env_or("TRIPMINE_BENCH_INDEX", "Flat".to_string());
    if let Ok(input) = std::env::var("TRIPMINE_BENCH_CHILD") {
        let out_dir = std::env::var("TRIPMINE_BENCH_OUT").expect("output folder");
        let extra = std::env::var("TRIPMINE_BENCH_ARGS").unwrap_or_default();
        child(&input, &index, &out_dir, &extra);
        return;
    }
    let spec = spec_from_env(100_000, 128, 1_000, 1.0);
    let runs: usize = env_or("TRIPMINE_BENCH_RUNS", 3);
    let dir = tempfile::TempDir::new().expect("temp dir");
    let input = dir.path().join("bench.parquet");
    generate_to_file(&spec, &input).expect("generate");

    let raw_mib = (spec.rows * spec.dim * 4) as f64 / (1 << 20) as f64;
    let flags = std::env::var("TRIPMINE_BENCH_ARGS").unwrap_or_default();
    let flags = if flags.trim().is_empty() {
        "default strategy".to_string()
    } else {
        format!("flags `{}`", flags.trim())
    };
    println!(
        "whole job: {} rows x {} dims, {} labels (separation {}, intrinsic dimension {}), index {index}, {flags} ({} cores; raw vectors {raw_mib:.1} MiB)",
        spec.rows,
        spec.dim,
        spec.labels,
        spec.separation,
        spec.intrinsic_dim.unwrap_or(spec.dim),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let sgemm = sgemm_gflops(spec.dim);
    println!(
        "machine sgemm: {sgemm:.1} GFLOP/s (4096 x 1024 x {} blocks, as FAISS's exact search)",
        spec.dim
    );
    let (mut walls, mut rates, mut peaks, mut search) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        // Each run in a fresh process, so its peak RSS is its own.
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .env("TRIPMINE_BENCH_CHILD", &input)
            .env("TRIPMINE_BENCH_OUT", dir.path())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run child");
        assert!(
            out.status.success(),
            "run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).expect("utf-8");
        let f: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse().expect("number"))
            .collect();
        let (wall, peak_mib) = (f[0], f[1] / 1024.0);
        let rate = spec.rows as f64 / wall;
        // An exact search compares every query with every row: 2 * dim flops each.
        let search_gflops = 2.0 * spec.dim as f64 * spec.rows as f64 * f[7] / f[6] / 1e9;
        println!(
            "  run {run}: {wall:7.2} s  {rate:9.0} rows/s  peak RSS {peak_mib:7.1} MiB  ({} triplets; read {:.2} s, index {:.2} s, mine+write {:.2} s, of which search {:.2} s for {} queries: {search_gflops:.1} GFLOP/s if exact; recall negatives {:.4}, candidates {:.4})",
            f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]
        );
        println!(
            "         tune {:.2} s; {}",
            f[10],
            std::fs::read_to_string(dir.path().join("search.txt")).unwrap_or_default()
        );
        search.push(search_gflops);
        walls.push(wall);
        rates.push(rate);
        peaks.push(peak_mib);
    }
    let search = median(search);
    let peak = median(peaks);
    println!(
        "median of {runs}: {:.2} s, {:.0} rows/s, peak RSS {peak:.1} MiB ({:.2} x the raw vectors); search {search:.1} GFLOP/s = {:.0}% of sgemm",
        median(walls),
        median(rates),
        peak / raw_mib,
        100.0 * search / sgemm
    );
}
