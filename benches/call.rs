//! What one checked Rust→C call costs, against the raw call, in the same run.
//!
//! Every figure is the time of one call to `touch`, a tiny `extern "C"`
//! function that takes a pointer and a length and reads two bytes, so the
//! figures are the boundary's cost, not the callee's work:
//!
//! - `raw` — `touch(ptr, len)` called directly: the baseline.
//! - `call!/mode0`, `call!/mode1`, `call!/mode2` — the same call made through
//!   `call!`, with the checks off at run time (`set_mode(Mode::Off)`: one
//!   relaxed load per call), in the default mode, and in the full mode.
//!
//! The groups:
//!
//! - `no_pointer` — a call that takes two integers: the cost of the
//!   boundary itself, with nothing to check.
//! - `lend_64B` — lending a 64-byte `Managed<[u8]>`. `call!/mode1 - raw` is
//!   the per-call overhead of the default mode; `call!/mode0 - raw` is what a
//!   program that ships with the checks compiled in but turned off pays.
//! - `buffer_size` — a 4 KiB and a 1 MiB `Managed<[u8]>` against a 64-byte
//!   one. Byte buffers cannot hold an aligned pointer, so they are never
//!   scanned: the three figures should be the same.
//! - `struct_with_pinned_pointer` — a 64-byte `#[repr(C)]` struct holding one
//!   pointer to pinned memory. Its type can hold pointers, so lending it
//!   scans its 8 words (rule P1) and looks the one candidate up.
//! - `eight_u64_struct` — a 64-byte `#[repr(C)]` struct of eight `u64`s,
//!   undeclared (its type can hold pointers: lending it scans its 8 words)
//!   and declared with `#[derive(PointerFree)]` (its pointer map is empty:
//!   never read). `struct_with_pinned_pointer` also runs declared with
//!   `#[derive(PointerMap)]`: only its one pointer word is read.
//! - `pinned_pointer_array_4KiB` — 512 pointers, each to its own pinned
//!   value: 512 registry lookups per call, the worst case of the scan.
//!   `u64_no_pointers_4KiB` lends 4 KiB of `u64`s that point nowhere: the
//!   scan's streaming speed (reported as throughput).
//!
//! Every group name starts with `COMPILED_IN=true` or `COMPILED_IN=false`.
//! The checks are compiled in with `debug_assertions` or the `always`
//! feature. `cargo bench` builds the release (bench) profile, where
//! `ffi_check::COMPILED_IN == false`: `call!` is the plain call and the
//! wrappers plain owners, so that run compares the compiled-out `call!` with
//! the raw call (they should be equal within noise), and the per-mode
//! variants are not run (the mode does not exist). `cargo bench --features
//! always` compiles the checks into the release build and measures the three
//! modes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use ffi_check::{call, set_mode, Managed, Mode, Pinned, COMPILED_IN};
use ffi_check_derive::{PointerFree, PointerMap};

/// The stand-in for a C function: takes a pointer and a length, reads the
/// first and the last byte.
#[inline(never)]
extern "C" fn touch(buf: *const u8, len: usize) -> usize {
    // SAFETY: every caller lends at least `len` >= 1 readable bytes.
    let (first, last) = unsafe { (*buf, *buf.add(len - 1)) };
    black_box(first as usize + last as usize + len)
}

/// A 64-byte struct that holds one pointer (to pinned memory).
#[repr(C)]
struct Header {
    data: *const u64,
    rest: [u64; 7],
}

/// The same layout, with its pointer map declared: one pointer word, at 0.
#[derive(PointerMap)]
#[repr(C)]
struct DeclaredHeader {
    data: *const u64,
    rest: [u64; 7],
}

/// A 64-byte struct of numbers, undeclared: lending it scans its words.
#[repr(C)]
struct Counters {
    words: [u64; 8],
}

/// The same, declared pointer-free: lending it reads nothing.
#[derive(PointerFree)]
#[repr(C)]
struct DeclaredCounters {
    words: [u64; 8],
}

/// Runs one measured call behind a call that is never inlined, for the raw
/// baseline and `call!` alike, so that every variant pays the same call
/// overhead around it and the difference is what `call!` adds at the call
/// site. (Without it, the compiler inlines a small closure into criterion's
/// loop and not a larger one, and that alone moves a figure by a nanosecond.)
#[inline(never)]
fn outlined<R>(f: &mut impl FnMut() -> R) -> R {
    f()
}

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn group<'a>(c: &'a mut Criterion, name: &str) -> Group<'a> {
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/{name}"));
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.sample_size(20);
    g
}

/// Benchmarks `f` (a `call!` of `touch`) in each mode, or once when the
/// checks are compiled out.
fn in_modes(g: &mut Group<'_>, modes: &[Mode], mut f: impl FnMut() -> usize) {
    if !COMPILED_IN {
        g.bench_function("call!", |b| b.iter(|| outlined(&mut f)));
        return;
    }
    for &mode in modes {
        set_mode(mode);
        let id = format!("call!/mode{}", mode as u8);
        g.bench_function(id, |b| b.iter(|| outlined(&mut f)));
    }
    set_mode(Mode::Check);
}

const ALL_MODES: [Mode; 3] = [Mode::Check, Mode::Off, Mode::Full];

fn lend_64_bytes(c: &mut Criterion) {
    let raw: Box<[u8]> = vec![1u8; 64].into_boxed_slice();
    let buf = Managed::from_vec(vec![1u8; 64]);
    let mut g = group(c, "lend_64B");
    g.bench_function("raw", |b| {
        b.iter(|| outlined(&mut || touch(black_box(&raw).as_ptr(), black_box(64))))
    });
    in_modes(&mut g, &ALL_MODES, || {
        call!(touch(black_box(&buf), black_box(64)))
    });
    g.finish();
}

/// A C function that takes no pointer.
#[inline(never)]
extern "C" fn add(a: i32, b: i32) -> i32 {
    black_box(a.wrapping_add(b))
}

fn no_pointer(c: &mut Criterion) {
    let mut g = group(c, "no_pointer");
    g.bench_function("raw", |b| {
        b.iter(|| outlined(&mut || add(black_box(1), black_box(2))))
    });
    in_modes(&mut g, &ALL_MODES, || {
        call!(add(black_box(1), black_box(2))) as usize
    });
    g.finish();
}

fn buffer_size(c: &mut Criterion) {
    let small = Managed::from_vec(vec![1u8; 64]);
    let page = Managed::from_vec(vec![1u8; 4096]);
    let big = Managed::from_vec(vec![1u8; 1 << 20]);
    let mut g = group(c, "buffer_size");
    g.bench_function("raw/1MiB", |b| {
        b.iter(|| outlined(&mut || touch(black_box(&big).as_ptr(), black_box(1 << 20))))
    });
    if COMPILED_IN {
        set_mode(Mode::Check);
    }
    g.bench_function("call!/64B", |b| {
        b.iter(|| outlined(&mut || call!(touch(black_box(&small), black_box(64)))))
    });
    g.bench_function("call!/4KiB", |b| {
        b.iter(|| outlined(&mut || call!(touch(black_box(&page), black_box(4096)))))
    });
    g.bench_function("call!/1MiB", |b| {
        b.iter(|| outlined(&mut || call!(touch(black_box(&big), black_box(1 << 20)))))
    });
    g.finish();
}

fn struct_with_pinned_pointer(c: &mut Criterion) {
    let target = Pinned::new(5u64);
    let header = Managed::new(Header {
        data: target.as_ptr(),
        rest: [1; 7],
    });
    let size = std::mem::size_of::<Header>();
    assert_eq!(size, 64);
    let mut g = group(c, "struct_with_pinned_pointer");
    g.bench_function("raw", |b| {
        b.iter(|| outlined(&mut || touch(black_box(header.as_ptr().cast()), black_box(size))))
    });
    in_modes(&mut g, &[Mode::Check, Mode::Full], || {
        call!(touch(black_box(&header), black_box(size)))
    });
    let declared = Managed::new(DeclaredHeader {
        data: target.as_ptr(),
        rest: [1; 7],
    });
    if COMPILED_IN {
        set_mode(Mode::Check);
    }
    g.bench_function("call!/mode1/declared", |b| {
        b.iter(|| outlined(&mut || call!(touch(black_box(&declared), black_box(size)))))
    });
    g.finish();
}

fn eight_u64_struct(c: &mut Criterion) {
    let undeclared = Managed::new(Counters { words: [7; 8] });
    let declared = Managed::new(DeclaredCounters { words: [7; 8] });
    let size = std::mem::size_of::<Counters>();
    assert_eq!(size, 64);
    let mut g = group(c, "eight_u64_struct");
    g.bench_function("raw", |b| {
        b.iter(|| outlined(&mut || touch(black_box(undeclared.as_ptr().cast()), black_box(size))))
    });
    if COMPILED_IN {
        set_mode(Mode::Check);
    }
    g.bench_function("call!/mode1/undeclared", |b| {
        b.iter(|| outlined(&mut || call!(touch(black_box(&undeclared), black_box(size)))))
    });
    g.bench_function("call!/mode1/declared", |b| {
        b.iter(|| outlined(&mut || call!(touch(black_box(&declared), black_box(size)))))
    });
    g.finish();
}

fn pinned_pointer_array(c: &mut Criterion) {
    let targets: Vec<Pinned<u64>> = (0..512).map(Pinned::new).collect();
    let table = Managed::from_vec(targets.iter().map(|t| t.as_ptr()).collect::<Vec<_>>());
    let plain = Managed::from_vec((0..512u64).collect::<Vec<_>>());
    let bytes = 512 * std::mem::size_of::<usize>();
    let mut g = group(c, "pinned_pointer_array_4KiB");
    g.bench_function("raw", |b| {
        b.iter(|| outlined(&mut || touch(black_box(table.as_ptr().cast()), black_box(bytes))))
    });
    in_modes(&mut g, &[Mode::Check, Mode::Full], || {
        call!(touch(black_box(&table), black_box(bytes)))
    });
    g.finish();

    let mut g = group(c, "u64_no_pointers_4KiB");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("raw", |b| {
        b.iter(|| outlined(&mut || touch(black_box(plain.as_ptr().cast()), black_box(bytes))))
    });
    in_modes(&mut g, &[Mode::Check], || {
        call!(touch(black_box(&plain), black_box(bytes)))
    });
    g.finish();
}

criterion_group!(
    benches,
    no_pointer,
    lend_64_bytes,
    buffer_size,
    struct_with_pinned_pointer,
    eight_u64_struct,
    pinned_pointer_array
);
criterion_main!(benches);
