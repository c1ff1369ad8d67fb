//! The FFI workload both `ffi_workload_*` benches run: per iteration, a
//! Rust buffer lent to C, a C allocation read and freed, and a string lent,
//! the way code around a C library does. The "C" functions are
//! `#[inline(never)] extern "C"` functions written in Rust, so every variant
//! calls the same code and the difference is what the checks add.
//!
//! Three variants of one iteration:
//!
//! - [`plain`]: raw pointers, no `call!` (the baseline);
//! - [`raw_checked`]: the same raw pointers, through `call!` (with the
//!   tracking allocator, every Rust buffer is managed memory);
//! - [`wrapped`]: `Managed` buffers and strings and a `CBox` for the C
//!   allocation, through `call!`.

#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::hint::black_box;
use std::os::raw::c_char;
use std::time::Duration;

use criterion::Criterion;
use ffi_check::{call, set_mode, CBox, Managed, Mode, COMPILED_IN};

/// The three variants in one criterion group, in mode 1, each named
/// `name/<allocator>/mode1` (`plain_name` for the baseline).
pub fn bench_variants(c: &mut Criterion, plain_name: &str, allocator: &str) {
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/ffi_workload"));
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    if COMPILED_IN {
        set_mode(Mode::Check);
    }
    let mut i = 0u32;
    type Variant = (String, fn(u32) -> usize);
    let variants: [Variant; 3] = [
        (plain_name.to_owned(), plain),
        (format!("raw_pointers_call!/{allocator}/mode1"), raw_checked),
        (format!("wrappers/{allocator}/mode1"), wrapped),
    ];
    for (name, run) in variants {
        g.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                run(black_box(i))
            })
        });
    }
    g.finish();
}

const BUF: usize = 256;
const C_BLOCK: usize = 64;

/// The checked variants again in mode 2 (event backtraces on, as mode 2
/// has them by default), beside mode 1 in the same run: what mode 2 costs
/// an allocation-heavy workload.
pub fn bench_mode2(c: &mut Criterion, allocator: &str) {
    if !COMPILED_IN {
        return;
    }
    let mut g = c.benchmark_group("COMPILED_IN=true/ffi_workload_mode2");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let mut i = 0u32;
    type Variant = (&'static str, fn(u32) -> usize);
    let variants: [Variant; 2] = [("raw_pointers_call!", raw_checked), ("wrappers", wrapped)];
    for (name, run) in variants {
        for (mode, label) in [(Mode::Check, "mode1"), (Mode::Full, "mode2")] {
            set_mode(mode);
            g.bench_function(format!("{name}/{allocator}/{label}"), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    run(black_box(i))
                })
            });
        }
    }
    set_mode(Mode::Check);
    g.finish();
}

/// C fills the buffer it is lent.
#[inline(never)]
pub extern "C" fn fill(buf: *mut u8, len: usize, value: u8) -> usize {
    // SAFETY: every caller lends `len` writable bytes.
    unsafe { std::ptr::write_bytes(buf, value, len) };
    len
}

/// C allocates a block with `malloc` and hands it over.
#[inline(never)]
pub extern "C" fn make_block(len: usize, value: u8) -> *mut u8 {
    // SAFETY: plain malloc; a null result is left to the caller.
    let p = unsafe { libc::malloc(len) }.cast::<u8>();
    if !p.is_null() {
        // SAFETY: `len` fresh bytes.
        unsafe { std::ptr::write_bytes(p, value, len) };
    }
    p
}

/// C reads a NUL-terminated string it is lent.
#[inline(never)]
pub extern "C" fn string_len(s: *const c_char) -> usize {
    // SAFETY: every caller lends a NUL-terminated string.
    unsafe { CStr::from_ptr(s) }.to_bytes().len()
}

fn name(i: u32) -> String {
    format!("item-{i}")
}

/// One iteration with raw pointers and plain calls.
pub fn plain(i: u32) -> usize {
    let mut buf = vec![0u8; BUF];
    let n = fill(buf.as_mut_ptr(), buf.len(), i as u8);
    let block = make_block(C_BLOCK, 3);
    // SAFETY: C handed over `C_BLOCK` initialised bytes.
    let sum: usize = unsafe { std::slice::from_raw_parts(block, C_BLOCK) }
        .iter()
        .map(|b| *b as usize)
        .sum();
    // SAFETY: malloc'd by C, freed once.
    unsafe { libc::free(block.cast()) };
    let s = CString::new(name(i)).expect("no NUL");
    let len = string_len(s.as_ptr());
    black_box(&buf);
    n + sum + len
}

/// The same, each call through `call!` with the raw pointers.
pub fn raw_checked(i: u32) -> usize {
    let mut buf = vec![0u8; BUF];
    let n = call!(fill(buf.as_mut_ptr(), buf.len(), i as u8));
    let block = call!(make_block(C_BLOCK, 3));
    // SAFETY: C handed over `C_BLOCK` initialised bytes.
    let sum: usize = unsafe { std::slice::from_raw_parts(block, C_BLOCK) }
        .iter()
        .map(|b| *b as usize)
        .sum();
    // SAFETY: malloc'd by C, freed once.
    unsafe { libc::free(block.cast()) };
    let s = CString::new(name(i)).expect("no NUL");
    let len = call!(string_len(s.as_ptr()));
    black_box(&buf);
    n + sum + len
}

/// The same with the wrappers: `Managed` for what Rust lends, `CBox` for
/// what C hands over.
pub fn wrapped(i: u32) -> usize {
    let mut buf = Managed::from_vec(vec![0u8; BUF]);
    let n = buf.len();
    let n = call!(fill(&mut buf, n, i as u8));
    let p = call!(make_block(C_BLOCK, 3));
    // SAFETY: C handed over `C_BLOCK` bytes from its malloc.
    let block = unsafe { CBox::from_raw_parts(p, C_BLOCK) }.expect("allocated");
    let sum: usize = block.iter().map(|b| *b as usize).sum();
    drop(block);
    let s = Managed::from_cstring(CString::new(name(i)).expect("no NUL"));
    let len = call!(string_len(&s));
    black_box(&*buf);
    n + sum + len
}
