//! The real zlib (built from its bundled source) under ffi-check: the safe
//! streaming wrapper in `examples/wrappers/zlib.rs` is silent on correct use
//! over thousands of calls, and each real mistake around zlib is reported
//! with its kind, its words and sites in this file.
//!
//! zlib's memory goes through `ffi_check::hooks::{zalloc, zfree}`, so its
//! internal state is tracked C memory attributed to the `call!` that made it.

// The checks only exist in builds that compile them in.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

#[path = "../examples/wrappers/zlib.rs"]
mod zwrap;

use std::os::raw::c_int;

use common::{
    assert_report, assert_report_line, assert_rust_site, is_child, only, run_child, text,
};
use ffi_check::{
    c_free, call, capture, hooks, release, retain, LeakCheck, Managed, Pinned, Pinner, RegionKind,
    ViolationKind,
};
use libz_sys as z;
use zwrap::{compress, decompress, new_stream, stream_size, version, Deflater, Flush, Inflater};

const THIS_FILE: &str = file!();

/// A small deterministic generator (xorshift), so every run checks the same
/// sequences and a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Text-like data that compresses (repeated words) with some noise.
fn sample(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 6] = [
        b"pointer ",
        b"pinned ",
        b"zlib ",
        b"C ",
        b"rust ",
        b"\x00\xff",
    ];
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        if rng.below(8) == 0 {
            v.push(rng.next() as u8);
        } else {
            v.extend_from_slice(WORDS[rng.below(WORDS.len())]);
        }
    }
    v.truncate(len);
    v
}

fn flush_of(n: usize) -> Flush {
    [Flush::None, Flush::None, Flush::Sync, Flush::Full][n % 4]
}

// ---- correct use: silent ---------------------------------------------------

/// 300 streams, each cut into random chunks with random flushes, some lent
/// in place (pinned for the call), decompressed in other random chunks:
/// several thousand zlib calls, every round trip exact, no violation, and
/// nothing of zlib's memory left behind.
#[test]
fn round_trips_in_random_chunks_and_flushes_are_clean() {
    let mut rng = Rng(0x5eed_cafe);
    let scope = LeakCheck::start();
    let (calls, v) = capture(|| {
        let mut calls = 0usize;
        for _ in 0..300 {
            let len = rng.below(40_000);
            let data = sample(&mut rng, len);
            let level = rng.below(11) as c_int - 1;
            let mut d = Deflater::new(level).expect("deflateInit");
            let mut packed = Vec::new();
            let mut at = 0;
            while at < data.len() {
                let len = (1 + rng.below(6000)).min(data.len() - at);
                let chunk = &data[at..at + len];
                at += len;
                let flush = flush_of(rng.below(4));
                if rng.below(3) == 0 {
                    let lent = Managed::from_vec(chunk.to_vec());
                    let mut pinner = Pinner::new();
                    pinner.pin(&lent);
                    d.write_lent(&lent, flush, &mut packed).expect("deflate");
                } else {
                    d.write(chunk, flush, &mut packed).expect("deflate");
                }
                calls += 1;
            }
            d.finish(&mut packed).expect("finish");

            let mut i = Inflater::new().expect("inflateInit");
            let mut unpacked = Vec::new();
            let mut at = 0;
            while at < packed.len() {
                let len = (1 + rng.below(3000)).min(packed.len() - at);
                i.write(&packed[at..at + len], &mut unpacked)
                    .expect("inflate");
                at += len;
                calls += 1;
            }
            assert!(i.is_finished());
            i.finish().expect("inflateEnd");
            assert_eq!(unpacked, data);
        }
        calls
    });
    assert!(v.is_empty(), "{}", v[0]);
    let leaks = scope.finish();
    assert!(leaks.is_empty(), "{leaks}");
    assert!(calls > 2000, "only {calls} writes");
}

/// The hooks make zlib's state tracked C memory: while a stream lives, its
/// state is there, attributed to the line that created the stream; once the
/// stream ends, it is gone.
#[test]
fn zlib_state_is_tracked_c_memory_of_the_line_that_created_the_stream() {
    let scope = LeakCheck::start();
    let d = Deflater::new(9).expect("deflateInit");
    let init_line = line!() - 1;
    let live = scope.finish();
    let group = only_group(&live);
    assert_rust_site(group.site(), THIS_FILE, init_line);
    // deflate's state, window, hash chains and pending buffer: over 256 KiB.
    assert!(group.count() >= 4, "{live}");
    assert!(group.bytes() > 256 * 1024, "{live}");
    let leak = group.violation();
    let region = &leak.regions()[0];
    assert_eq!(region.kind(), RegionKind::C);
    assert_eq!(region.allocator(), "zlib zfree");

    let scope = LeakCheck::start();
    let mut out = Vec::new();
    d.finish(&mut out).expect("finish");
    assert!(scope.finish().is_empty());
    assert_eq!(decompress(&out).expect("inflate"), b"");
}

/// Bad input is an error, and the stream's memory is still given back.
#[test]
fn corrupt_input_is_an_error_and_nothing_leaks() {
    let scope = LeakCheck::start();
    let (r, v) = capture(|| {
        let mut packed = compress(b"some text that will be damaged", 6).expect("deflate");
        packed[3] ^= 0x55;
        packed[4] ^= 0xaa;
        decompress(&packed)
    });
    assert!(v.is_empty(), "{}", v[0]);
    assert_eq!(r.expect_err("damaged").code, z::Z_DATA_ERROR);
    assert!(scope.finish().is_empty());
}

// ---- P1: what zlib reaches through the stream must be pinned ------------------

/// Lending a buffer in place without pinning it: zlib reaches the buffer
/// through the stream's `next_in`, so the stream holds a pointer to unpinned
/// memory when it is lent to `deflate`.
#[test]
fn lending_an_unpinned_buffer_through_the_stream_is_unpinned_nested() {
    let mut d = Deflater::new(6).expect("deflateInit");
    let data = Managed::from_vec(b"lent in place, but not pinned".to_vec());
    let mut packed = Vec::new();
    let (r, v) = capture(|| d.write_lent(&data, Flush::Sync, &mut packed));
    let write_line = line!() - 1;
    r.expect("deflate still works");
    // One report per `deflate` call the write made, all the same mistake.
    assert!(!v.is_empty());
    for v in &v {
        assert_report_line(
            v,
            ViolationKind::UnpinnedNested,
            "P1",
            "ffi-check: argument 1 of `deflate` has managed pointer to unpinned managed pointer",
        );
        assert_eq!(v.callee(), Some("deflate"));
        assert_rust_site(v.call_site(), THIS_FILE, write_line);
        let points_to = v.regions().last().expect("regions");
        assert_eq!(points_to.role(), "points to");
        assert_eq!(points_to.addr(), data.addr());
        assert!(v
            .to_string()
            .contains("the nested pointer is at offset 0 of the lent memory"));
    }

    // The fix: pin it for the call.
    let mut pinner = Pinner::new();
    pinner.pin(&data);
    let (r, v) = capture(|| d.write_lent(&data, Flush::Finish, &mut packed));
    r.expect("deflate");
    assert!(v.is_empty(), "{}", v[0]);
    drop(pinner);
    d.finish(&mut packed).expect("finish");
    let mut twice = b"lent in place, but not pinned".to_vec();
    twice.extend_from_slice(&data);
    assert_eq!(decompress(&packed).expect("inflate"), twice);
}

/// The same mistake in raw code: a stream whose `next_out` points into an
/// unpinned output buffer between calls.
#[test]
fn a_stream_pointing_into_an_unpinned_output_buffer_is_unpinned_nested() {
    let mut stream = Pinned::new(new_stream());
    // SAFETY: a fresh stream, zlib's version and struct size.
    let rc = unsafe { call!(z::deflateInit_(&mut stream, 6, version(), stream_size())) };
    assert_eq!(rc, z::Z_OK);
    let mut input = Pinned::from_vec(b"abcabcabcabc".to_vec());
    let mut output = Managed::from_vec(vec![0u8; 256]);
    stream.next_in = input.as_mut_ptr();
    stream.avail_in = 12;
    stream.next_out = output.as_mut_ptr();
    stream.avail_out = 256;
    // SAFETY: both buffers are live for the call.
    let (rc, v) = capture(|| unsafe { call!(z::deflate(&mut stream, z::Z_FINISH)) });
    let line = line!() - 1;
    assert_eq!(rc, z::Z_STREAM_END);
    let v = only(&v);
    assert_report(v, ViolationKind::UnpinnedNested, "argument 1 of `deflate`");
    assert_rust_site(v.call_site(), THIS_FILE, line);
    // next_out is the fourth word of the stream.
    assert!(v.to_string().contains(&format!(
        "the nested pointer is at offset {} of the lent memory",
        std::mem::offset_of!(z::z_stream, next_out)
    )));
    assert_eq!(v.regions().last().expect("regions").addr(), output.addr());
    // The stream must let go of the buffer before it is lent again.
    stream.next_out = std::ptr::null_mut();
    // SAFETY: initialised above, ended once.
    unsafe { call!(z::deflateEnd(&mut stream)) };
}

// ---- P2: zlib keeps a pointer to the stream -------------------------------------

/// zlib's state keeps `state->strm`, a pointer back to the stream, from init
/// to end. A stream in unpinned memory that zlib keeps is `Retained` (here
/// declared the way the wrapper declares it; mode 2 finds the pointer inside
/// zlib's state by itself, see the next test).
#[test]
fn a_stream_zlib_keeps_in_unpinned_memory_is_retained() {
    if ffi_check::mode() == ffi_check::Mode::Full {
        // Mode 2 reports it at the call itself, by scanning: see
        // `mode_2_finds_zlibs_pointer_to_an_unpinned_stream`.
        return;
    }
    let mut stream = Managed::new(new_stream());
    // SAFETY: a fresh stream, zlib's version and struct size.
    let rc = unsafe { call!(z::inflateInit_(&mut stream, version(), stream_size())) };
    assert_eq!(rc, z::Z_OK);
    let ((), v) = capture(|| retain(stream.as_ptr()));
    let line = line!() - 1;
    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::Retained,
        "P2",
        "ffi-check: C keeps a pointer to unpinned managed memory after the call",
    );
    assert_rust_site(v.call_site(), THIS_FILE, line);
    assert_eq!(v.regions()[0].addr(), stream.addr());
    // SAFETY: initialised above, ended once; then zlib keeps nothing.
    unsafe { call!(z::inflateEnd(&mut stream)) };
    release(stream.as_ptr());
}

/// Mode 2 scans tracked C memory after each call: zlib's state (tracked
/// through the hooks) holding `state->strm` into an unpinned stream is
/// `Retained` without anyone declaring it.
#[test]
fn mode_2_finds_zlibs_pointer_to_an_unpinned_stream() {
    const NAME: &str = "mode_2_finds_zlibs_pointer_to_an_unpinned_stream";
    if is_child(NAME) {
        let mut stream = Managed::new(new_stream());
        // SAFETY: a fresh stream, zlib's version and struct size.
        let (rc, v) =
            capture(|| unsafe { call!(z::deflateInit_(&mut stream, 6, version(), stream_size())) });
        let line = line!() - 1;
        assert_eq!(rc, z::Z_OK);
        let v = only(&v);
        assert_report(
            v,
            ViolationKind::Retained,
            "C keeps a pointer to unpinned managed memory",
        );
        assert_eq!(v.callee(), Some("deflateInit_"));
        assert_rust_site(v.call_site(), THIS_FILE, line);
        assert!(v.regions().iter().any(|r| r.addr() == stream.addr()));
        // SAFETY: initialised above, ended once.
        let _ = capture(|| unsafe { call!(z::deflateEnd(&mut stream)) });
        return;
    }
    common::child_passes(NAME, &[("FFI_CHECK", "2")]);
}

/// In mode 2 the correct wrapper stays silent too.
#[test]
fn mode_2_is_silent_on_the_wrapper() {
    const NAME: &str = "mode_2_is_silent_on_the_wrapper";
    if is_child(NAME) {
        ffi_check::assert_clean(|| {
            let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let packed = compress(&data, 6).expect("deflate");
            assert_eq!(decompress(&packed).expect("inflate"), data);
        });
        return;
    }
    let out = run_child(NAME, &[("FFI_CHECK", "2")]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("1 passed"));
}

// ---- C3: a stream never ended leaks zlib's state, at the init -----------------

#[test]
fn forgetting_deflate_end_leaks_zlibs_state_at_the_init_line() {
    let mut stream = Pinned::new(new_stream());
    let mut input = Pinned::from_vec(vec![7u8; 1000]);
    let mut output = Pinned::from_vec(vec![0u8; 2000]);
    let scope = LeakCheck::start();
    // SAFETY: a fresh stream, zlib's version and struct size.
    let rc = unsafe { call!(z::deflateInit_(&mut stream, 6, version(), stream_size())) };
    let init_line = line!() - 1;
    assert_eq!(rc, z::Z_OK);
    stream.next_in = input.as_mut_ptr();
    stream.avail_in = 1000;
    stream.next_out = output.as_mut_ptr();
    stream.avail_out = 2000;
    // SAFETY: the stream and both (pinned) buffers are live.
    let rc = unsafe { call!(z::deflate(&mut stream, z::Z_FINISH)) };
    assert_eq!(rc, z::Z_STREAM_END);
    // The mistake: no deflateEnd.
    let report = scope.finish();
    let group = only_group(&report);
    assert_rust_site(group.site(), THIS_FILE, init_line);
    assert_report(
        &group.violation(),
        ViolationKind::Leak,
        &format!(
            "leak of C memory: {} byte(s) in {} allocation(s) from {THIS_FILE}:{init_line}:",
            group.bytes(),
            group.count()
        ),
    );
    let text = report.to_string();
    assert!(
        text.contains(&format!(
            "of C memory allocated at {THIS_FILE}:{init_line}:"
        )),
        "{text}"
    );

    let scope = LeakCheck::start();
    // SAFETY: initialised above, ended once.
    unsafe { call!(z::deflateEnd(&mut stream)) };
    assert!(scope.finish().is_empty());
    assert!(LeakCheck::start().finish().is_empty());
}

/// `inflate` allocates its window on the first call that needs it: a stream
/// never ended leaks the state at the init line and the window at the line of
/// that call.
#[test]
fn forgetting_inflate_end_leaks_state_and_window_at_their_lines() {
    let packed = compress(&vec![1u8; 50_000], 6).expect("deflate");
    let mut stream = Pinned::new(new_stream());
    let mut input = Pinned::from_vec(packed);
    let mut output = Pinned::from_vec(vec![0u8; 10_000]);
    let scope = LeakCheck::start();
    // SAFETY: a fresh stream, zlib's version and struct size.
    let rc = unsafe { call!(z::inflateInit_(&mut stream, version(), stream_size())) };
    let init_line = line!() - 1;
    assert_eq!(rc, z::Z_OK);
    stream.next_in = input.as_mut_ptr();
    stream.avail_in = zwrap_len(&input);
    stream.next_out = output.as_mut_ptr();
    stream.avail_out = 10_000;
    // SAFETY: the stream and both (pinned) buffers are live.
    let rc = unsafe { call!(z::inflate(&mut stream, z::Z_NO_FLUSH)) };
    let inflate_line = line!() - 1;
    assert_eq!(rc, z::Z_OK, "the output window is too small to finish");
    let report = scope.finish();
    let mut lines: Vec<u32> = report
        .groups()
        .iter()
        .map(|g| g.site().expect("a site").line())
        .collect();
    lines.sort_unstable();
    assert_eq!(lines, vec![init_line, inflate_line], "{report}");
    for g in report.groups() {
        assert_eq!(g.site().expect("a site").file(), THIS_FILE);
    }
    // SAFETY: initialised above, ended once.
    unsafe { call!(z::inflateEnd(&mut stream)) };
}

fn zwrap_len(b: &[u8]) -> u32 {
    ffi_check::to_c(b.len())
}

// ---- C1: zlib's memory is zlib's to free -------------------------------------

/// Freeing zlib's state with `free` behind zlib's back is refused as
/// `MismatchedFree` (it is `zlib zfree`'s memory), so `deflateEnd` can still
/// free it once.
#[test]
fn freeing_zlibs_state_with_free_is_mismatched() {
    let mut stream = Pinned::new(new_stream());
    // SAFETY: a fresh stream, zlib's version and struct size.
    let rc = unsafe { call!(z::deflateInit_(&mut stream, 6, version(), stream_size())) };
    assert_eq!(rc, z::Z_OK);
    let state = stream.state.cast::<std::ffi::c_void>();
    // SAFETY: refused: the memory is zlib's.
    let ((), v) = capture(|| unsafe { c_free(state) });
    let line = line!() - 1;
    let v = only(&v);
    assert_report_line(
        v,
        ViolationKind::MismatchedFree,
        "C1",
        "ffi-check: C memory freed with the wrong deallocator: allocated by `zlib zfree`, freed with `free`",
    );
    assert_rust_site(v.call_site(), THIS_FILE, line);
    let scope = LeakCheck::start();
    // SAFETY: initialised above, ended once: its state is still intact.
    let (rc, v) = capture(|| unsafe { call!(z::deflateEnd(&mut stream)) });
    assert_eq!(rc, z::Z_OK);
    assert!(v.is_empty(), "{}", v[0]);
    assert!(scope.finish().is_empty());
}

/// zalloc and zfree as a pair, outside zlib: zfree of a block twice is a
/// double free, refused the second time.
#[test]
fn zfree_twice_is_a_double_free() {
    let p = hooks::zalloc(std::ptr::null_mut(), 8, 8);
    // SAFETY: p came from zalloc; the second zfree is the mistake.
    let ((), v) = capture(|| unsafe {
        hooks::zfree(std::ptr::null_mut(), p);
        hooks::zfree(std::ptr::null_mut(), p);
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::DoubleFree,
        "double free of C memory (`zlib zfree`)",
    );
}

fn only_group(report: &ffi_check::LeakReport) -> &ffi_check::LeakGroup {
    assert_eq!(report.groups().len(), 1, "{report}");
    &report.groups()[0]
}
