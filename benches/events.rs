//! What recording an event costs: a `CBox` allocate + free against plain
//! `malloc` + `free`, with and without a backtrace at every event, and the
//! capture of one unresolved backtrace on its own. These figures decide the
//! default of `FFI_CHECK_BACKTRACE` (see BENCHMARKS.md).
//!
//! Run: `cargo bench --features always --bench events`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::{set_event_backtraces, set_mode, CBox, Mode, COMPILED_IN};

fn events(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/events"));
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    g.bench_function("malloc+free", |b| {
        b.iter(|| {
            // SAFETY: a fresh block, freed once.
            unsafe {
                let p = libc::malloc(black_box(64));
                libc::free(black_box(p));
            }
        })
    });
    g.bench_function("backtrace_capture", |b| {
        b.iter(|| black_box(backtrace::Backtrace::new_unresolved()))
    });
    if COMPILED_IN {
        set_mode(Mode::Check);
        for (label, on) in [("sites_only", false), ("backtraces", true)] {
            set_event_backtraces(Some(on));
            g.bench_function(format!("CBox_new+free/mode1/{label}"), |b| {
                b.iter(|| CBox::new(black_box([0u8; 64])).free())
            });
        }
        set_event_backtraces(None);
        set_mode(Mode::Off);
        g.bench_function("CBox_new+free/mode0", |b| {
            b.iter(|| CBox::new(black_box([0u8; 64])).free())
        });
        set_mode(Mode::Check);
    } else {
        g.bench_function("CBox_new+free", |b| {
            b.iter(|| CBox::new(black_box([0u8; 64])).free())
        });
    }
    g.finish();
}

criterion_group!(benches, events);
criterion_main!(benches);
