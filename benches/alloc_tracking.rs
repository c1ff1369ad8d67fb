//! The allocation-heavy workload (`benches/workload`) with
//! `TrackingAllocator` installed, in modes 0, 1 and 2 (mode 2 with a
//! backtrace at every free, its default). Compare with `alloc_system`.
//!
//! Run: `cargo bench --features always --bench alloc_system --bench alloc_tracking`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::{set_mode, Mode, TrackingAllocator, COMPILED_IN};

mod workload;

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

fn tracking(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_workload");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    let modes: &[(&str, Mode)] = if COMPILED_IN {
        &[
            ("mode0", Mode::Off),
            ("mode1", Mode::Check),
            ("mode2", Mode::Full),
        ]
    } else {
        &[("compiled_out", Mode::Off)]
    };
    let mut seed = 0u32;
    for (label, mode) in modes {
        set_mode(*mode);
        g.bench_function(format!("TrackingAllocator/{label}"), |b| {
            b.iter(|| {
                seed = seed.wrapping_add(1);
                workload::round(seed)
            })
        });
    }
    set_mode(Mode::Check);
    g.finish();
}

/// One 64-byte `Box` allocated and freed, in modes 0 and 1: the
/// allocator's own cost per block (compare with `alloc_box_64B/System`).
fn box_64(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_box_64B");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let modes: &[(&str, Mode)] = if COMPILED_IN {
        &[("mode0", Mode::Off), ("mode1", Mode::Check)]
    } else {
        &[("compiled_out", Mode::Off)]
    };
    for (label, mode) in modes {
        set_mode(*mode);
        g.bench_function(format!("TrackingAllocator/{label}"), |b| {
            b.iter(|| drop(std::hint::black_box(Box::new([0u8; 64]))))
        });
    }
    set_mode(Mode::Check);
    g.finish();
}

criterion_group!(benches, tracking, box_64);
criterion_main!(benches);
