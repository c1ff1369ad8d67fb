//! The FFI workload (`benches/ffi_workload`: a Rust buffer lent to C, a C
//! allocation read and freed, a string lent, per iteration) on the system
//! allocator: plain calls, the same raw pointers through `call!`, and the
//! wrappers (`Managed`, `CBox`) through `call!`, in one run. Its twin
//! `ffi_workload_tracking` runs the raw-pointer variant with
//! `TrackingAllocator` as the global allocator.
//!
//! Run: `cargo bench --features always --bench ffi_workload_system --bench ffi_workload_tracking`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::{set_mode, Mode, COMPILED_IN};

mod ffi_workload;

fn workload(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/ffi_workload"));
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    if COMPILED_IN {
        set_mode(Mode::Check);
    }
    let mut i = 0u32;
    g.bench_function("plain", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ffi_workload::plain(black_box(i))
        })
    });
    g.bench_function("raw_pointers_call!/System/mode1", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ffi_workload::raw_checked(black_box(i))
        })
    });
    g.bench_function("wrappers/System/mode1", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ffi_workload::wrapped(black_box(i))
        })
    });
    g.finish();
}

criterion_group!(benches, workload);
criterion_main!(benches);
