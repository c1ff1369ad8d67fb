//! The baseline of the tracking-allocator benchmark: the allocation-heavy
//! workload (`benches/workload`) on the system allocator. Compare with
//! `alloc_tracking`.
//!
//! Run: `cargo bench --features always --bench alloc_system --bench alloc_tracking`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

mod workload;

fn system(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_workload");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    let mut seed = 0u32;
    g.bench_function("System", |b| {
        b.iter(|| {
            seed = seed.wrapping_add(1);
            workload::round(seed)
        })
    });
    g.finish();
}

/// One 64-byte `Box` allocated and freed: the baseline of
/// `alloc_box_64B/TrackingAllocator/*`.
fn box_64(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_box_64B");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    g.bench_function("System", |b| {
        b.iter(|| drop(std::hint::black_box(Box::new([0u8; 64]))))
    });
    g.finish();
}

criterion_group!(benches, system, box_64);
criterion_main!(benches);
