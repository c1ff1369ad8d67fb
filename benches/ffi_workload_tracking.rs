//! The FFI workload (`benches/ffi_workload`) with `TrackingAllocator` as the
//! global allocator: the plain variant (what the allocator alone costs) and
//! the raw pointers through `call!` (raw-pointer code checked without
//! wrappers), beside the wrappers on the same allocator. Compare with the
//! `plain` figure of `ffi_workload_system`, run right before it.
//!
//! Run: `cargo bench --features always --bench ffi_workload_system --bench ffi_workload_tracking`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::{set_mode, Mode, TrackingAllocator, COMPILED_IN};

mod ffi_workload;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

fn workload(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/ffi_workload"));
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    if COMPILED_IN {
        set_mode(Mode::Check);
    }
    let mut i = 0u32;
    g.bench_function("plain/TrackingAllocator/mode1", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ffi_workload::plain(black_box(i))
        })
    });
    g.bench_function("raw_pointers_call!/TrackingAllocator/mode1", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ffi_workload::raw_checked(black_box(i))
        })
    });
    g.bench_function("wrappers/TrackingAllocator/mode1", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ffi_workload::wrapped(black_box(i))
        })
    });
    g.finish();
}

criterion_group!(benches, workload);
criterion_main!(benches);
