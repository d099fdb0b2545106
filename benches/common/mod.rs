//! Shared by the benchmarks: settings from the environment, peak RSS, medians, and the BLAS
//! that FAISS links, for timing bare matrix products beside tripmine's.
#![allow(dead_code)]

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process (kB), from /proc.
pub fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The generated table's shape from `TRIPMINE_BENCH_ROWS`, `_DIM`, `_LABELS`, `_SEPARATION`
/// and `_INTRINSIC_DIM`, with these defaults (seed 42).
pub fn spec_from_env(
    rows: usize,
    dim: usize,
    labels: usize,
    separation: f32,
) -> tripmine::commands::synthetic::GenSpec {
    tripmine::commands::synthetic::GenSpec {
        rows: env_or("TRIPMINE_BENCH_ROWS", rows),
        dim: env_or("TRIPMINE_BENCH_DIM", dim),
        labels: env_or("TRIPMINE_BENCH_LABELS", labels),
        seed: 42,
        separation: env_or("TRIPMINE_BENCH_SEPARATION", separation),
        intrinsic_dim: std::env::var("TRIPMINE_BENCH_INTRINSIC_DIM")
            .ok()
            .and_then(|v| v.parse().ok()),
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub const ROW_MAJOR: i32 = 101;
pub const NO_TRANS: i32 = 111;
pub const TRANS: i32 = 112;

unsafe extern "C" {
    // OpenBLAS, linked for FAISS.
    pub fn cblas_sgemm(
        layout: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}
