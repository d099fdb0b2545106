//! Hot kernels: the exact distance every candidate is rescored with.
//!
//! Run: `cargo bench --bench kernels`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tripmine::Metric;

fn distances(c: &mut Criterion) {
    let mut group = c.benchmark_group("exact distance");
    for dim in [32usize, 128, 768] {
        let a: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let rows = 256;
        let b: Vec<f32> = (0..dim * rows).map(|i| (i as f32 * 0.11).cos()).collect();
        group.throughput(Throughput::Elements((dim * rows) as u64));
        for metric in [Metric::L2sq, Metric::Cosine] {
            group.bench_with_input(
                BenchmarkId::new(format!("{metric:?}"), dim),
                &dim,
                |bench, &dim| {
                    bench.iter(|| {
                        let mut s = 0f32;
                        for r in b.chunks_exact(dim) {
                            s += metric.distance(black_box(&a), black_box(r));
                        }
                        s
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, distances);
criterion_main!(benches);
