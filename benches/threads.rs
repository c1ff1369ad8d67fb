//! Do checked calls on two threads scale? Each thread lends its own 64-byte
//! struct holding one pinned pointer (so every call scans the struct and
//! looks the pointer up in the registry) `iters` times; the figure is the
//! wall time per call *per thread*. With perfect scaling the two-thread
//! figure equals the one-thread figure; if the threads serialised, it would
//! double.
//!
//! A second pair does the same for tracked allocation: each thread makes
//! and frees `CBox`es, which registers and quarantines them.
//!
//! Run: `cargo bench --features always --bench threads`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::{call, CBox, Managed, Pinned, COMPILED_IN};

#[inline(never)]
extern "C" fn touch(buf: *const u8, len: usize) -> usize {
    // SAFETY: every caller lends `len` >= 1 readable bytes.
    black_box(unsafe { *buf } as usize + len)
}

#[repr(C)]
struct Header {
    data: *const u64,
    rest: [u64; 7],
}

/// One thread's work: its own pinned target and header, `iters` calls.
fn work(iters: u64, start: &Barrier) -> Duration {
    let target = Pinned::new(7u64);
    let header = Managed::new(Header {
        data: target.as_ptr(),
        rest: [1; 7],
    });
    start.wait();
    let t = Instant::now();
    for _ in 0..iters {
        black_box(call!(touch(black_box(&header), 64)));
    }
    t.elapsed()
}

/// One thread's allocation work: `iters` `CBox` allocate + free pairs.
fn alloc_work(iters: u64, start: &Barrier) -> Duration {
    start.wait();
    let t = Instant::now();
    for _ in 0..iters {
        CBox::new(black_box([0u8; 64])).free();
    }
    t.elapsed()
}

fn run(threads: usize, iters: u64) -> Duration {
    run_with(threads, iters, work)
}

fn run_with(threads: usize, iters: u64, body: fn(u64, &Barrier) -> Duration) -> Duration {
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || body(iters, &start))
        })
        .collect();
    // The slowest thread's time: what the caller waits for.
    handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .max()
        .unwrap_or_default()
}

fn scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/threads"));
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    for threads in [1usize, 2] {
        g.bench_function(
            format!("lend_struct_with_pinned_pointer/{threads}_thread"),
            |b| b.iter_custom(|iters| run(threads, iters)),
        );
    }
    for threads in [1usize, 2] {
        g.bench_function(format!("cbox_new_free/{threads}_thread"), |b| {
            b.iter_custom(|iters| run_with(threads, iters, alloc_work))
        });
    }
    g.finish();
}

criterion_group!(benches, scaling);
criterion_main!(benches);
