//! ffi-check on the real zlib: a safe streaming compressor and decompressor
//! (`examples/wrappers/zlib.rs`) whose zlib memory is tracked through
//! `ffi_check::hooks::{zalloc, zfree}`.
//!
//! ```text
//! cargo run --example zlib
//! ```
//!
//! It runs the wrapper the right way (which must be silent: "ok: ...") and
//! then makes each real mistake around zlib inside `ffi_check::capture`,
//! printing the report. It exits non-zero if a correct pattern was reported
//! or a mistake was not.

#[path = "wrappers/checklist.rs"]
mod checklist;
#[path = "wrappers/zlib.rs"]
mod zwrap;

use checklist::{checks_ready, Checklist};
use ffi_check::{c_free, call, release, retain, Managed, Pinned, Pinner, ViolationKind};
use libz_sys as z;
use zwrap::{decompress, new_stream, stream_size, version, Deflater, Flush, Inflater};

fn main() {
    if !checks_ready("zlib") {
        return;
    }
    let mut list = Checklist::new("zlib");
    correct_use(&mut list);
    p1_buffers_zlib_reaches_through_the_stream(&mut list);
    p2_the_stream_zlib_keeps(&mut list);
    c3_a_stream_never_ended(&mut list);
    c1_zlibs_memory_is_zlibs(&mut list);
    std::process::exit(list.finish());
}

/// Text that compresses, `len` bytes of it.
fn sample(len: usize) -> Vec<u8> {
    b"ffi-check lends zlib pinned buffers; "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn correct_use(list: &mut Checklist) {
    list.section("correct use: the wrapper, silent");
    let data = sample(200_000);
    let packed = list.ok(
        "compress 200 kB in 37 chunks with every kind of flush; zlib's state is tracked C memory",
        || {
            let mut d = Deflater::new(6).expect("deflateInit");
            let mut packed = Vec::new();
            for (i, chunk) in data.chunks(5_432).enumerate() {
                let flush = [Flush::None, Flush::Sync, Flush::Full][i % 3];
                d.write(chunk, flush, &mut packed).expect("deflate");
            }
            d.finish(&mut packed).expect("finish");
            packed
        },
    );
    println!("    {} bytes in, {} bytes out", data.len(), packed.len());
    let unpacked = list.ok("decompress it in 1 kB pieces", || {
        let mut i = Inflater::new().expect("inflateInit");
        let mut out = Vec::new();
        for piece in packed.chunks(1024) {
            i.write(piece, &mut out).expect("inflate");
        }
        i.finish().expect("inflateEnd");
        out
    });
    assert_eq!(unpacked, data, "the round trip must be exact");

    list.ok(
        "lend a buffer in place, pinned for the call (zlib reads it through next_in)",
        || {
            let lent = Managed::from_vec(sample(10_000));
            let mut pinner = Pinner::new();
            pinner.pin(&lent);
            let mut d = Deflater::new(9).expect("deflateInit");
            let mut packed = Vec::new();
            d.write_lent(&lent, Flush::Finish, &mut packed)
                .expect("deflate");
            d.finish(&mut packed).expect("finish");
            assert_eq!(decompress(&packed).expect("inflate"), &*lent);
        },
    );
}

fn p1_buffers_zlib_reaches_through_the_stream(list: &mut Checklist) {
    list.section("P1: memory zlib reaches through the stream it is lent must be pinned");
    let mut d = Deflater::new(6).expect("deflateInit");
    let lent = Managed::from_vec(sample(1_000));
    let mut packed = Vec::new();
    list.mistake(
        "lend a buffer in place without pinning it: the stream's next_in points to it",
        &[ViolationKind::UnpinnedNested],
        || d.write_lent(&lent, Flush::Finish, &mut packed),
    )
    .expect("deflate");
    d.finish(&mut packed).expect("finish");
}

fn p2_the_stream_zlib_keeps(list: &mut Checklist) {
    list.section(
        "P2: zlib keeps a pointer to the stream from init to end: the stream must be pinned",
    );
    println!("(the wrapper keeps its stream in a `Pinned` and declares what zlib keeps; mode 2");
    println!(" finds the pointer inside zlib's state, tracked through the hooks, by itself)");
    let mut stream = Managed::new(new_stream());
    // SAFETY: a fresh stream, zlib's version and struct size.
    let rc = unsafe { call!(z::inflateInit_(&mut stream, version(), stream_size())) };
    assert_eq!(rc, z::Z_OK);
    list.mistake(
        "keep the stream zlib points back to in unpinned memory",
        &[ViolationKind::Retained],
        || retain(stream.as_ptr()),
    );
    // SAFETY: initialised above, ended once.
    unsafe { call!(z::inflateEnd(&mut stream)) };
    release(stream.as_ptr());
}

fn c3_a_stream_never_ended(list: &mut Checklist) {
    list.section("C3: deflateEnd gives zlib's memory back; without it, the leak names the init");
    let mut stream = Pinned::new(new_stream());
    list.leak("deflateInit_ without deflateEnd", file!(), || {
        // SAFETY: a fresh stream, zlib's version and struct size.
        let rc = unsafe { call!(z::deflateInit_(&mut stream, 6, version(), stream_size())) };
        assert_eq!(rc, z::Z_OK);
        line!() - 2
    });
    // SAFETY: initialised above, ended once (the clean-up).
    unsafe { call!(z::deflateEnd(&mut stream)) };
}

fn c1_zlibs_memory_is_zlibs(list: &mut Checklist) {
    list.section("C1: zlib's memory is freed by zlib, with zfree");
    let mut stream = Pinned::new(new_stream());
    // SAFETY: a fresh stream, zlib's version and struct size.
    let rc = unsafe { call!(z::deflateInit_(&mut stream, 6, version(), stream_size())) };
    assert_eq!(rc, z::Z_OK);
    let state = stream.state.cast::<std::ffi::c_void>();
    list.mistake(
        "free zlib's state with free behind zlib's back (refused, so deflateEnd still works)",
        &[ViolationKind::MismatchedFree],
        // SAFETY: refused by the checker: the memory is zlib's.
        || unsafe { c_free(state) },
    );
    list.ok("deflateEnd frees it, once", || {
        // SAFETY: initialised above, ended once.
        unsafe { call!(z::deflateEnd(&mut stream)) }
    });
}
