//! The interposed C allocator (feature `interpose`): a C `malloc`+`free`
//! pair of 32 bytes through it in mode 1 (outside any call, and inside a
//! `call!` where C code allocates), beside glibc's own pair
//! (`__libc_malloc`/`__libc_free`) and the tracking allocator's
//! (`TrackingAllocator::alloc`/`dealloc`), all in one run.
//!
//! Run: `cargo bench --features always,interpose --bench interpose` (the
//! checks must be compiled into the optimised build).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::{call, set_mode, Mode, TrackingAllocator};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
}

/// Not the global allocator: its pair is measured by calling it.
static TRACKING: TrackingAllocator = TrackingAllocator::new();

const SIZE: usize = 32;

extern "C" fn c_pair(n: usize) -> usize {
    // SAFETY: plain malloc/free pairs, each block freed once.
    unsafe {
        for _ in 0..n {
            let p = libc::malloc(SIZE);
            black_box(p);
            libc::free(p);
        }
    }
    n
}

fn pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("c_malloc_free_32");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    set_mode(Mode::Check);
    g.bench_function("glibc (__libc_malloc/__libc_free)", |b| {
        b.iter(|| {
            // SAFETY: a plain glibc allocation, freed once.
            unsafe {
                let p = __libc_malloc(SIZE);
                black_box(p);
                __libc_free(p);
            }
        })
    });
    g.bench_function("interposed malloc/free, mode 1", |b| {
        b.iter(|| {
            // SAFETY: as above, through the interposed allocator.
            unsafe {
                let p = libc::malloc(SIZE);
                black_box(p);
                libc::free(p);
            }
        })
    });
    g.bench_function(
        "interposed malloc/free, mode 1, 1000 pairs inside one call!",
        |b| b.iter(|| call!(c_pair(1000))),
    );
    let layout = Layout::from_size_align(SIZE, 8).expect("a valid layout");
    g.bench_function("TrackingAllocator alloc/dealloc, mode 1", |b| {
        b.iter(|| {
            // SAFETY: a block of `layout`, freed once with it.
            unsafe {
                let p = TRACKING.alloc(layout);
                black_box(p);
                TRACKING.dealloc(p, layout);
            }
        })
    });
    set_mode(Mode::Off);
    g.bench_function("interposed malloc/free, mode 0", |b| {
        b.iter(|| {
            // SAFETY: as above.
            unsafe {
                let p = libc::malloc(SIZE);
                black_box(p);
                libc::free(p);
            }
        })
    });
    set_mode(Mode::Check);
    g.finish();
}

criterion_group!(benches, pairs);
criterion_main!(benches);
