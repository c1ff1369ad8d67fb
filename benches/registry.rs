//! The registry at scale: containing-address lookup with 1,000, 100,000 and
//! 1,000,000 live regions, insert + remove, the bookkeeping bytes per region,
//! and the leak report over a million live allocations from 1,000 sites.
//!
//! Regions are registered at synthetic addresses (the registry never reads
//! the memory it tracks), 64 bytes apart, as a malloc-heavy program's would
//! be. Bytes per region are measured with a counting global allocator: every
//! byte the registry allocates (page blocks, directory nodes) divided by the
//! number of regions; printed both as what registering the n regions
//! allocated and as everything allocated since the bench started (which
//! also counts blocks kept from the smaller runs before).
//!
//! `lookup_floor` is the raw baseline for the cold lookups, in the same run:
//! the same access pattern reading one word of a plain array of n 32-byte
//! records (one cache miss per lookup, overlapped as freely as the processor
//! can), i.e. what any lookup that must read a record costs at least.
//!
//! Run: `cargo bench --features always --bench registry` (without the
//! `always` feature the checks, and so the registry, are compiled out of
//! the bench profile, and the bench says so and measures nothing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::hint::black_box;
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ffi_check::__private::{registry_contains, registry_forget};

struct Counting;
static NET_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to System and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        NET_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        NET_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        NET_BYTES.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BASE: usize = 0x5000_0000_0000;
const STRIDE: usize = 64;

/// Registers `n` regions of 48 bytes, 64 apart, starting at `base`.
fn populate(base: usize, n: usize) {
    for i in 0..n {
        ffi_check::c_adopt((base + i * STRIDE) as *mut c_void, 48);
    }
}

fn clear(base: usize, n: usize) {
    for i in 0..n {
        registry_forget(base + i * STRIDE);
    }
}

fn lookup(c: &mut Criterion) {
    if !ffi_check::COMPILED_IN {
        eprintln!("registry bench: checks compiled out; run with --features always");
        return;
    }
    let mut g = c.benchmark_group("registry");
    g.measurement_time(Duration::from_secs(2)).sample_size(20);
    let start = NET_BYTES.load(Ordering::Relaxed);
    for &n in &[1_000usize, 100_000, 1_000_000] {
        let before = NET_BYTES.load(Ordering::Relaxed);
        populate(BASE, n);
        let after = NET_BYTES.load(Ordering::Relaxed);
        let (bytes, total) = (after - before, after - start);
        println!(
            "registry: {n} regions use {bytes} bytes: {:.1} bytes/region ({:.1} counting all since start; record + offset: {} bytes)",
            bytes as f64 / n as f64,
            total as f64 / n as f64,
            ffi_check::REGION_RECORD_BYTES
        );
        let mut i = 0usize;
        // Warm: the 256 most recently registered regions, as a program
        // passes the buffers it just made (the bookkeeping is in cache).
        g.bench_with_input(BenchmarkId::new("lookup_recent", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 1) % 256;
                black_box(registry_contains(BASE + (n - 1 - i) * STRIDE + 17))
            })
        });
        // Cold: a region anywhere among the n, each lookup far from the last.
        g.bench_with_input(BenchmarkId::new("lookup_interior", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(registry_contains(BASE + i * STRIDE + 17))
            })
        });
        let records: Vec<[u64; 4]> = (0..n as u64).map(|k| [k, k, k, k]).collect();
        g.bench_with_input(BenchmarkId::new("lookup_floor", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(records[i][2])
            })
        });
        drop(records);
        g.bench_with_input(BenchmarkId::new("lookup_miss", n), &n, |b, &n| {
            b.iter(|| {
                i = (i + 7919) % n;
                // In the gap between two regions.
                black_box(registry_contains(BASE + i * STRIDE + 56))
            })
        });
        let extra = BASE + n * STRIDE + (1 << 30);
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("insert_remove", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % 4096;
                let p = extra + k * STRIDE;
                ffi_check::c_adopt(p as *mut c_void, 48);
                registry_forget(p);
            })
        });
        clear(BASE, n);
    }
    g.finish();
    leak_report_from_1000_sites();
}

extern "C" {
    // The crate's C API (csrc/ffi_check.h), as C code calls it.
    fn ffi_check_malloc_at(size: usize, file: *const c_char, line: c_int) -> *mut c_void;
    fn ffi_check_free_at(ptr: *mut c_void, file: *const c_char, line: c_int);
}

/// The leak report over a million live allocations made from 1,000
/// distinct (C) sites: real blocks, allocated the way C code using the
/// header allocates them.
fn leak_report_from_1000_sites() {
    const N: usize = 1_000_000;
    let file = c"bench.c".as_ptr();
    let blocks: Vec<*mut c_void> = (0..N)
        // SAFETY: a plain allocation through the C API, freed below.
        .map(|i| unsafe { ffi_check_malloc_at(16, file, (i % 1000) as c_int + 1) })
        .collect();
    let t = Instant::now();
    let report = ffi_check::leak_report();
    let took = t.elapsed();
    println!(
        "registry: leak report over {} live allocations from {} sites took {took:?}",
        report.leaked_allocations(),
        report.groups().len(),
    );
    for p in blocks {
        // SAFETY: each block came from ffi_check_malloc_at and is freed once.
        unsafe { ffi_check_free_at(p, file, 0) };
    }
}

criterion_group!(benches, lookup);
criterion_main!(benches);
