//! What one event backtrace costs, unresolved: the stack walk mode 2 does
//! at every allocation, pin and free, before and after the cached unwind
//! rules, in the same run.
//!
//! - `depot/platform_unwinder` — the walk by `_Unwind_Backtrace` (the DWARF
//!   unwind tables read again for every frame), stored in the stack depot:
//!   the capture as it was before the cached rules.
//! - `depot/cached_rules` — the walk by the cached unwind rules (one table
//!   probe and a load or two a frame), stored in the depot: the capture
//!   now.
//! - `walk/platform_unwinder`, `walk/cached_rules` — the walks alone,
//!   without the depot.
//! - `backtrace_unresolved` — `backtrace::Backtrace::new_unresolved()`, the
//!   event backtrace before the stack depot.
//! - `baseline` — the way down alone (the recursion below, and nothing at
//!   its bottom): subtract it from the others.
//!
//! Each comes at the benchmark's own depth (`shallow`, about a dozen
//! frames of criterion under the closure) and `deep`, sixteen frames of
//! recursion further down, so that the walk sees about thirty frames, as
//! in a test suite's allocation: the number of frames walked is printed
//! once for each.
//!
//! Run: `cargo bench --features always --bench capture`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion};
use ffi_check::__private::{
    capture_event_stack, capture_event_stack_platform, capture_unresolved_backtrace,
    platform_stack, stack_walker, walk_stack,
};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Runs `f` sixteen non-inlined frames further down the stack. Every
/// variant returns a `usize`: with a `bool`, each frame's `black_box` stored
/// one byte of the word its epilogue then loads whole, a failed
/// store-to-load forwarding per frame on the way back up (about 60 ns at
/// `deep`, charged to the capture).
#[inline(never)]
fn deeper<R>(depth: u32, f: &mut dyn FnMut() -> R) -> R {
    if depth == 0 {
        return f();
    }
    black_box(deeper(depth - 1, f))
}

fn walk_cached() -> usize {
    let mut ips = [0usize; 32];
    walk_stack(&mut ips)
}

fn walk_platform() -> usize {
    let mut ips = [0usize; 32];
    platform_stack(&mut ips)
}

fn variants(g: &mut Group<'_>, depth: u32, label: &str) {
    println!(
        "capture/{label}: the walk sees {} frames (32 at most)",
        deeper(depth, &mut walk_cached)
    );
    g.bench_function(format!("baseline/{label}"), |b| {
        b.iter(|| deeper(depth, &mut || black_box(0usize)))
    });
    g.bench_function(format!("depot/platform_unwinder/{label}"), |b| {
        b.iter(|| deeper(depth, &mut || capture_event_stack_platform() as usize))
    });
    g.bench_function(format!("depot/cached_rules/{label}"), |b| {
        b.iter(|| deeper(depth, &mut || capture_event_stack() as usize))
    });
    g.bench_function(format!("walk/platform_unwinder/{label}"), |b| {
        b.iter(|| deeper(depth, &mut walk_platform))
    });
    g.bench_function(format!("walk/cached_rules/{label}"), |b| {
        b.iter(|| deeper(depth, &mut walk_cached))
    });
    g.bench_function(format!("backtrace_unresolved/{label}"), |b| {
        b.iter(|| deeper(depth, &mut capture_unresolved_backtrace))
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("capture");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(20);
    variants(&mut g, 0, "shallow");
    variants(&mut g, 16, "deep");
    g.finish();
    println!("capture: {}", stack_walker());
    c.final_summary();
}
