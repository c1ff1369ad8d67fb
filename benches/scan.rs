//! The mode-2 scan of C memory (`ffi_check::scan_c_memory`, what mode 2
//! runs before and after every outermost `call!`), in GB/s of tracked C
//! memory, against a plain read of the same bytes in the same run.
//!
//! Two shapes, each over 256 tracked `c_malloc` blocks:
//! - pointer-free (64 MiB): numbers, none inside the bounds of the unpinned
//!   managed regions, so every word is settled by the vectorised bounds test;
//! - pointer-dense (16 MiB): every word a pointer to pinned managed memory
//!   lying *between* 1,000 unpinned managed regions, so every word passes
//!   the bounds test and costs a search of the scan's snapshot (C legally
//!   keeping many pointers to pinned Rust memory: the worst correct case).
//!
//! The baseline reads every word of the same blocks (a XOR fold): the
//! memory-speed ceiling on this machine. A scan also pays a fixed cost per
//! call for its snapshot of the registry (every region visited once); the
//! `fixed cost` figure is that cost with one 4 KiB block to read.
//!
//! Run: `cargo bench --features always --bench scan` (compiled out, the
//! bench says so and measures nothing).

use std::ffi::c_void;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffi_check::{c_free, c_malloc, scan_c_memory, Managed, Pinned};

const BLOCKS: usize = 256;

/// `BLOCKS` tracked C blocks of `bytes / BLOCKS` bytes each, filled by
/// `fill(word index)`.
fn c_blocks(bytes: usize, fill: impl Fn(usize) -> usize) -> Vec<*mut usize> {
    let words = bytes / BLOCKS / std::mem::size_of::<usize>();
    (0..BLOCKS)
        .map(|b| {
            let p = c_malloc(words * std::mem::size_of::<usize>()).cast::<usize>();
            assert!(!p.is_null());
            for i in 0..words {
                // SAFETY: i < words, inside the fresh block.
                unsafe { p.add(i).write(fill(b * words + i)) };
            }
            p
        })
        .collect()
}

fn free_blocks(blocks: Vec<*mut usize>) {
    for p in blocks {
        // SAFETY: each block came from c_malloc and is freed once.
        unsafe { c_free(p.cast::<c_void>()) };
    }
}

/// Reads every word of the blocks: the memory-speed baseline.
fn read_all(blocks: &[*mut usize], words: usize) -> usize {
    blocks.iter().fold(0, |acc, p| {
        // SAFETY: each block holds `words` initialised words.
        let s = unsafe { std::slice::from_raw_parts(*p, words) };
        acc ^ s.iter().fold(0, |a, w| a ^ w)
    })
}

fn scan(c: &mut Criterion) {
    if !ffi_check::COMPILED_IN {
        eprintln!("scan bench: checks compiled out; run with --features always");
        return;
    }
    ffi_check::set_mode(ffi_check::Mode::Full);
    // The scan's own speed: every scan reads everything (with the write
    // watch it would read only what was written since the last one, which
    // `benches/mode2.rs` measures).
    ffi_check::__private::set_write_watch(false);
    // Unpinned managed regions, so the scan has something to look for,
    // with pinned ones allocated in between them.
    let mut unpinned = Vec::new();
    let mut pinned = Vec::new();
    for i in 0..1000u64 {
        unpinned.push(Managed::new([i; 8]));
        pinned.push(Pinned::new([i; 8]));
    }
    unpinned.push(Managed::new([0u64; 8]));

    let mut g = c.benchmark_group("mode-2 scan");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);

    // Pointer-free: small numbers, far below any heap address.
    let bytes = 64 << 20;
    let words = bytes / BLOCKS / std::mem::size_of::<usize>();
    let blocks = c_blocks(bytes, |i| i.wrapping_mul(2654435761) & 0xffff_ffff);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("pointer-free, 64 MiB: read (baseline)", |b| {
        b.iter(|| black_box(read_all(black_box(&blocks), words)))
    });
    g.bench_function("pointer-free, 64 MiB: scan", |b| b.iter(scan_c_memory));
    free_blocks(blocks);

    // Pointer-dense: every word points into a pinned region.
    let bytes = 16 << 20;
    let words = bytes / BLOCKS / std::mem::size_of::<usize>();
    let targets: Vec<usize> = pinned.iter().map(|p| p.addr()).collect();
    let blocks = c_blocks(bytes, |i| targets[i % targets.len()] + 8 * (i % 8));
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("pointer-dense, 16 MiB: read (baseline)", |b| {
        b.iter(|| black_box(read_all(black_box(&blocks), words)))
    });
    g.bench_function("pointer-dense, 16 MiB: scan", |b| b.iter(scan_c_memory));
    free_blocks(blocks);

    // The fixed cost: the registry snapshot, with one small block to read.
    let small = c_malloc(4096);
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("fixed cost: 4 KiB, 2,001 managed regions", |b| {
        b.iter(scan_c_memory)
    });
    // SAFETY: came from c_malloc, freed once.
    unsafe { c_free(small) };
    g.finish();

    drop(pinned);
    drop(unpinned);
    ffi_check::set_mode(ffi_check::Mode::Check);
}

criterion_group!(benches, scan);
criterion_main!(benches);
