//! The interposed C allocator (feature `interpose`): plain C — no ffi-check
//! header, no hooks — seen through `malloc`, `free` and `realloc`
//! themselves. Each mistake is reported with its kind, its sites and its
//! `help:` line; the correct shapes are clean.

#![cfg(all(feature = "interpose", target_os = "linux"))]

mod common;

use std::ffi::{c_void, CStr};
use std::os::raw::c_char;

use common::fixtures::plainc as pc;
use common::{assert_report, child_passes, is_child, only};
use ffi_check::{call, capture, CBox, LeakCheck, TrackingAllocator, ViolationKind};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

fn checks() -> bool {
    ffi_check::COMPILED_IN && ffi_check::mode() != ffi_check::Mode::Off
}

// ---- C1: C's own frees ---------------------------------------------------------

#[test]
fn c_double_free_reports_both_sites() {
    if !checks() {
        return;
    }
    let name = c"you";
    // SAFETY: a fresh string from C, freed by C; the second free is the
    // mistake (and is not carried out).
    let (_, v) = capture(|| unsafe {
        let s = call!(pc::pc_greeting(name.as_ptr()));
        call!(pc::pc_free_it(s.cast()));
        call!(pc::pc_free_it(s.cast()))
    });
    // The dead pointer crossing the second call is C2; its free is C1.
    assert_eq!(
        common::kinds(&v),
        [ViolationKind::UseAfterFree, ViolationKind::DoubleFree]
    );
    let v = &v[1];
    assert_report(
        v,
        ViolationKind::DoubleFree,
        "double free of C memory (`free`)",
    );
    let text = v.to_string();
    let first = line_of("call!(pc::pc_free_it(s.cast()));");
    let again = first + 1;
    assert!(
        text.contains(&format!(
            "first freed during the call at tests/interpose.rs:{first}:"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "freed again during the call at tests/interpose.rs:{again}:"
        )),
        "{text}"
    );
    assert!(text.contains("allocated at tests/interpose.rs:"), "{text}");
}

#[test]
fn c_double_free_inside_one_call_is_reported_not_carried_out() {
    if !checks() {
        return;
    }
    // SAFETY: the fixture frees one block twice; the second is refused.
    let (_, v) = capture(|| unsafe { call!(pc::pc_double_free()) });
    assert_report(
        only(&v),
        ViolationKind::DoubleFree,
        "double free of C memory",
    );
}

#[test]
fn c_free_of_a_rust_box_is_invalid_free_and_not_carried_out() {
    if !checks() {
        return;
    }
    let b = Box::into_raw(Box::new([7u64; 4]));
    // SAFETY: C frees what it was handed; the free is refused.
    let (_, v) = capture(|| unsafe { call!(pc::pc_take(b.cast())) });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InvalidFree,
        "C free of managed memory (`free`)",
    );
    let text = v.to_string();
    assert!(
        text.contains("allocated by Rust's allocator, freed with `free`"),
        "{text}"
    );
    // Not freed: the box is intact and Rust frees it.
    // SAFETY: the block was never freed; Rust takes it back once.
    let back = unsafe { Box::from_raw(b) };
    assert_eq!(*back, [7u64; 4]);
}

#[test]
fn c_free_of_a_wild_pointer_is_reported_without_a_crash() {
    if !checks() {
        return;
    }
    // SAFETY: the fixture frees 0x1234; the free is refused.
    let (_, v) = capture(|| unsafe { call!(pc::pc_free_wild()) });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InvalidFree,
        "free of a pointer no C allocator returned (`free`)",
    );
    let text = v.to_string();
    assert!(
        text.contains("the pointer 0x1234 is not in readable memory"),
        "{text}"
    );
    assert!(
        text.contains("in call to `pc_free_wild`") || text.contains("tests/interpose.rs:"),
        "{text}"
    );
}

#[test]
fn c_free_of_an_interior_pointer_is_reported() {
    if !checks() {
        return;
    }
    // SAFETY: the fixture frees p + 8 (refused), then p.
    let (_, v) = capture(|| unsafe { call!(pc::pc_free_interior()) });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InvalidFree,
        "free of a pointer into the middle of C memory (`free`)",
    );
    assert!(
        v.to_string()
            .contains("the pointer is 8 bytes into a C block of 32 bytes"),
        "{v}"
    );
}

#[test]
fn c_free_of_stack_static_and_mapped_memory_is_reported() {
    if !checks() {
        return;
    }
    for (f, what) in [
        (
            pc::pc_free_stack as unsafe extern "C" fn(),
            "on this thread's stack",
        ),
        (
            pc::pc_free_static,
            "in the static data or code of a loaded program or library",
        ),
        (pc::pc_free_mapping, "not a block of C's allocator"),
    ] {
        // SAFETY: each fixture frees memory no allocator returned; refused.
        let (_, v) = capture(|| unsafe { call!(f()) });
        let v = only(&v);
        assert_report(
            v,
            ViolationKind::InvalidFree,
            "free of a pointer no C allocator returned",
        );
        assert!(v.to_string().contains(what), "{what}: {v}");
    }
}

// ---- C2: use after C freed it ----------------------------------------------------

#[test]
fn handle_used_after_c_destroyed_it_is_use_after_free() {
    if !checks() {
        return;
    }
    // SAFETY: create, destroy, then the mistake: the dead handle crosses.
    let (_, v) = capture(|| unsafe {
        let o = call!(pc::pc_obj_new(7));
        assert_eq!(call!(pc::pc_obj_get(o)), 7);
        call!(pc::pc_obj_destroy(o));
        let _ = call!(pc::pc_obj_get(o));
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 1 of `pc_obj_get` is a pointer into freed memory",
    );
    let text = v.to_string();
    let destroy = line_of("call!(pc::pc_obj_destroy(o));");
    assert!(
        text.contains(&format!("freed at tests/interpose.rs:{destroy}:")),
        "{text}"
    );
}

#[test]
fn handle_to_a_field_of_an_object_c_destroyed_is_use_after_free() {
    if !checks() {
        return;
    }
    // SAFETY: a handle into the object (its `name` field) outlives the
    // object; the freed block waits in the quarantine, so reading through
    // the handle reads memory still allocated.
    let (_, v) = capture(|| unsafe {
        let o = call!(pc::pc_obj_new(7)); // the object
        let slot = call!(pc::pc_obj_name_slot(o));
        assert_eq!(call!(pc::pc_slot_len(slot)), 6);
        call!(pc::pc_obj_destroy(o)); // destroys the object behind the field
        let _ = call!(pc::pc_slot_len(slot));
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 1 of `pc_slot_len` is a pointer into freed memory",
    );
    let text = v.to_string();
    assert!(
        text.contains("the pointer is 8 bytes into the freed region"),
        "{text}"
    );
    let destroy = line_of("call!(pc::pc_obj_destroy(o)); // destroys the object behind the field");
    let new = line_of("let o = call!(pc::pc_obj_new(7)); // the object");
    assert!(
        text.contains(&format!("freed at tests/interpose.rs:{destroy}:")),
        "{text}"
    );
    assert!(
        text.contains(&format!("allocated at tests/interpose.rs:{new}:")),
        "{text}"
    );
}

#[test]
fn pointer_deep_into_a_large_freed_c_buffer_is_use_after_free() {
    if !checks() {
        return;
    }
    // SAFETY: a 64 KiB C buffer, freed by C, then a pointer 40,000 bytes
    // into it crosses (the buffer waits in the quarantine: still mapped).
    let (_, v) = capture(|| unsafe {
        let buf = call!(pc::pc_buf_new(64 << 10));
        let inside = buf.add(40_000);
        assert_eq!(call!(pc::pc_peek(inside)), 0);
        call!(pc::pc_take(buf.cast())); // C frees the buffer
        let _ = call!(pc::pc_peek(inside));
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 1 of `pc_peek` is a pointer into freed memory",
    );
    let text = v.to_string();
    assert!(
        text.contains("the pointer is 40000 bytes into the freed region"),
        "{text}"
    );
    let take = line_of("call!(pc::pc_take(buf.cast())); // C frees the buffer");
    assert!(
        text.contains(&format!("freed at tests/interpose.rs:{take}:")),
        "{text}"
    );
}

#[test]
fn pointers_into_live_c_blocks_are_clean() {
    if !checks() {
        return;
    }
    // SAFETY: every pointer is into a live block; each block is freed once,
    // after its last use. A freed neighbour sits beside the live ones.
    let (_, v) = capture(|| unsafe {
        let gone = call!(pc::pc_obj_new(1));
        let o = call!(pc::pc_obj_new(7));
        call!(pc::pc_obj_destroy(gone));
        let slot = call!(pc::pc_obj_name_slot(o));
        assert_eq!(call!(pc::pc_slot_len(slot)), 6);
        let buf = call!(pc::pc_buf_new(64 << 10));
        for at in [1, 16, 4095, 4096, 40_000, (64 << 10) - 1] {
            assert_eq!(call!(pc::pc_peek(buf.add(at))), 0);
        }
        call!(pc::pc_take(buf.cast()));
        call!(pc::pc_obj_destroy(o));
    });
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn pointer_just_past_a_freed_c_block_is_not_blamed_on_it() {
    if !checks() {
        return;
    }
    // SAFETY: the pointer one past the freed block's end is only compared
    // by the callee, never read.
    let (_, v) = capture(|| unsafe {
        let s = call!(pc::pc_greeting(c"abcdefghi".as_ptr())); // 16 bytes
        let end = s.add(16).cast::<c_void>();
        call!(pc::pc_take(s.cast()));
        let h = call!(pc::pc_hold(end));
        call!(pc::pc_holder_free(h));
    });
    let kinds = common::kinds(&v);
    assert!(!kinds.contains(&ViolationKind::UseAfterFree), "{v:?}");
}

// ---- C3: leaks by reachability -----------------------------------------------------

#[inline(never)]
fn lose_a_greeting() -> usize {
    let name = c"leak";
    // SAFETY: C returns a string the caller owns; it is never freed.
    let s = unsafe { call!(pc::pc_greeting(name.as_ptr())) };
    // SAFETY: a live C string.
    let n = unsafe { CStr::from_ptr(s) }.to_bytes().len();
    std::hint::black_box(s as usize ^ usize::MAX);
    n
}

#[test]
fn leaked_c_string_is_reported_at_the_call_that_returned_it() {
    if !alone_in_a_child("leaked_c_string_is_reported_at_the_call_that_returned_it") {
        return;
    }
    if !checks() {
        return;
    }
    let scope = LeakCheck::start();
    assert_eq!(lose_a_greeting(), 10);
    wipe_stack();
    let report = scope.finish();
    assert_eq!(report.leaked_allocations(), 1, "{report}");
    assert_eq!(report.leaked_bytes(), 11, "{report}");
    let line = line_of("let s = unsafe { call!(pc::pc_greeting(name.as_ptr())) };");
    let site = report.groups()[0].site().expect("the call's site");
    assert_eq!((site.file(), site.line()), ("tests/interpose.rs", line));
    let text = report.to_string();
    assert!(text.contains(&format!("Leak of 11 byte(s) in 1 allocation(s) of C memory allocated at tests/interpose.rs:{line}:")), "{text}");
    let v = report.groups()[0].violation();
    assert_report(
        &v,
        ViolationKind::Leak,
        "leak of C memory: 11 byte(s) in 1 allocation(s)",
    );
}

#[test]
fn with_backtraces_a_leak_group_shows_the_c_frame_that_allocated() {
    const NAME: &str = "with_backtraces_a_leak_group_shows_the_c_frame_that_allocated";
    if !alone_in_a_child(NAME) {
        return;
    }
    if !checks() {
        return;
    }
    ffi_check::set_event_backtraces(Some(true));
    let scope = LeakCheck::start();
    assert_eq!(lose_a_greeting(), 10);
    wipe_stack();
    let report = scope.finish();
    ffi_check::set_event_backtraces(None);
    assert_eq!(report.leaked_allocations(), 1, "{report}");
    let line = line_of("let s = unsafe { call!(pc::pc_greeting(name.as_ptr())) };");
    let text = report.to_string();
    // The group names the Rust call and, under it, the stack that
    // allocated, starting at C's frame: the interposed `malloc` is the
    // checker's and is not shown.
    let group = text
        .split("Leak of 11 byte(s) in 1 allocation(s) of C memory allocated at ")
        .nth(1)
        .expect("the group");
    assert!(
        group.starts_with(&format!("tests/interpose.rs:{line}:")),
        "{text}"
    );
    let first_frame = group.lines().nth(1).expect("a frame");
    assert!(
        first_frame.trim_start().starts_with("0: pc_greeting"),
        "{text}"
    );
    assert!(group.contains("csrc/fixtures/plainc.c"), "{text}");
    assert!(!group.contains("src/interpose"), "{text}");
}

#[test]
fn a_block_c_loses_is_a_leak() {
    if !alone_in_a_child("a_block_c_loses_is_a_leak") {
        return;
    }
    if !checks() {
        return;
    }
    let scope = LeakCheck::start();
    // SAFETY: the fixture allocates and loses a block.
    unsafe { call!(pc::pc_lose(40)) };
    let report = scope.finish();
    assert_eq!(report.leaked_bytes(), 40, "{report}");
}

#[test]
fn a_cache_kept_reachable_from_a_global_is_not_a_leak_until_dropped() {
    if !alone_in_a_child("a_cache_kept_reachable_from_a_global_is_not_a_leak_until_dropped") {
        return;
    }
    if !checks() {
        return;
    }
    let _lock = common::slot();
    let scope = LeakCheck::start();
    // SAFETY: the fixture fills its cache, kept in its globals.
    assert_eq!(unsafe { call!(pc::pc_cache_fill()) }, 0);
    let report = scope.finish();
    assert!(report.is_empty(), "{report}");
    // SAFETY: the cache is freed by the library.
    unsafe { call!(pc::pc_cache_clear()) };

    let scope = LeakCheck::start();
    // SAFETY: the cache is filled, then dropped from the globals: leaked.
    unsafe {
        call!(pc::pc_cache_fill());
        call!(pc::pc_cache_forget());
    }
    let report = scope.finish();
    assert_eq!(report.leaked_allocations(), 4, "{report}");
    assert_eq!(report.leaked_bytes(), 128 + 3 * 32, "{report}");
}

#[test]
fn correct_c_code_that_frees_is_clean() {
    if !checks() {
        return;
    }
    ffi_check::assert_clean(|| {
        // SAFETY: create, use and destroy, as the API says.
        unsafe {
            let o = call!(pc::pc_obj_new(3));
            assert_eq!(call!(pc::pc_obj_get(o)), 3);
            call!(pc::pc_obj_destroy(o));
            let s = call!(pc::pc_greeting(c"me".as_ptr()));
            assert_eq!(CStr::from_ptr(s).to_bytes(), b"hello me");
            libc::free(s.cast());
        }
    });
}

// ---- realloc ---------------------------------------------------------------------------

#[test]
fn a_realloc_loop_is_clean() {
    if !checks() {
        return;
    }
    // SAFETY: the fixture grows and frees its own buffer.
    let sum = ffi_check::assert_clean(|| unsafe { call!(pc::pc_grow(200)) });
    assert_eq!(sum, (0..200).sum::<i64>() as std::os::raw::c_long);
}

#[test]
fn c_growing_a_c_malloc_block_moves_its_record() {
    if !checks() {
        return;
    }
    let scope = LeakCheck::start();
    let p = ffi_check::c_malloc(16);
    // SAFETY: C grows the block it was given and hands the new one back.
    let q = unsafe { call!(pc::pc_regrow(p, 4096)) };
    assert!(!q.is_null());
    let report = scope.finish();
    // Rust still owns it: one live block, of the new size; no stale record.
    assert_eq!(report.leaked_allocations(), 1, "{report}");
    assert_eq!(report.leaked_bytes(), 4096, "{report}");
    let scope = LeakCheck::start();
    // SAFETY: the grown block is freed once.
    ffi_check::assert_clean(|| unsafe { ffi_check::c_free(q) });
    assert!(scope.finish().is_empty());
}

// ---- CBox handed to C -------------------------------------------------------------------

unsafe extern "C" fn make_string() -> *mut c_char {
    ffi_check::callback!({ CBox::from_str("from Rust").into_raw() })
}

#[test]
fn a_cbox_string_returned_to_c_and_freed_by_c_is_clean() {
    if !checks() {
        return;
    }
    // SAFETY: C frees the string the callback hands it.
    let n = ffi_check::assert_clean(|| unsafe { call!(pc::pc_take_string(Some(make_string))) });
    assert_eq!(n, 9);
}

#[test]
fn a_cbox_handed_over_with_into_raw_and_freed_by_c_is_clean() {
    if !checks() {
        return;
    }
    ffi_check::assert_clean(|| {
        let b = CBox::new([1u32; 8]);
        // SAFETY: C takes ownership and frees it.
        unsafe { call!(pc::pc_take(b.into_raw().cast())) };
    });
}

#[test]
fn c_freeing_a_cbox_rust_still_owns_is_the_cbox_s_free() {
    if !checks() {
        return;
    }
    let mut b = CBox::new([0u8; 32]);
    // SAFETY: C frees the box (the mistake); Rust's drop is then the second
    // free, reported and not carried out.
    let (_, v) = capture(|| unsafe {
        call!(pc::pc_free_it(b.as_mut_ptr().cast::<c_void>()));
        drop(b);
    });
    assert_report(
        only(&v),
        ViolationKind::DoubleFree,
        "double free of C memory",
    );
}

#[test]
fn mode_2_c_freeing_a_guarded_cbox_is_handled() {
    if is_child("mode_2_c_freeing_a_guarded_cbox_is_handled") {
        ffi_check::set_mode(ffi_check::Mode::Full);
        let mut b = CBox::new([0u8; 32]);
        // SAFETY: as above, with the block guarded.
        let (_, v) = capture(|| unsafe {
            call!(pc::pc_free_it(b.as_mut_ptr().cast::<c_void>()));
            drop(b);
        });
        assert_report(
            only(&v),
            ViolationKind::DoubleFree,
            "double free of C memory",
        );
        return;
    }
    if !ffi_check::COMPILED_IN {
        return;
    }
    child_passes("mode_2_c_freeing_a_guarded_cbox_is_handled", &[]);
}

// ---- mode 2: every C block is scanned -----------------------------------------------------

#[test]
fn mode_2_finds_a_lent_pointer_kept_in_a_block_c_allocated() {
    if is_child("mode_2_finds_a_lent_pointer_kept_in_a_block_c_allocated") {
        ffi_check::set_mode(ffi_check::Mode::Full);
        let lent = ffi_check::Managed::new(5u64);
        // SAFETY: C mallocs a holder of its own and keeps the pointer in it.
        let (h, v) = capture(|| unsafe { call!(pc::pc_hold(&lent)) });
        let v = only(&v);
        assert_report(
            v,
            ViolationKind::Retained,
            "C keeps a pointer to unpinned managed memory after the call (`pc_hold`)",
        );
        assert!(v.to_string().contains("held by: the C memory at"), "{v}");
        // SAFETY: the holder is C's, freed once, before `lent` drops.
        unsafe { call!(pc::pc_holder_free(h)) };
        drop(lent);
        return;
    }
    if !ffi_check::COMPILED_IN {
        return;
    }
    child_passes(
        "mode_2_finds_a_lent_pointer_kept_in_a_block_c_allocated",
        &[],
    );
}

// ---- the leak report at exit -------------------------------------------------------------

#[test]
fn exit_report_lists_unreachable_c_blocks() {
    if is_child("exit_report_lists_unreachable_c_blocks") {
        // SAFETY: the fixture allocates and loses a block.
        unsafe { call!(pc::pc_lose(72)) };
        return;
    }
    if !ffi_check::COMPILED_IN {
        return;
    }
    let stderr = child_passes(
        "exit_report_lists_unreachable_c_blocks",
        &[("FFI_CHECK_LEAKS", "1")],
    );
    let line = line_of("unsafe { call!(pc::pc_lose(72)) };");
    assert!(
        stderr.contains(&format!("Leak of 72 byte(s) in 1 allocation(s) of C memory allocated at tests/interpose.rs:{line}:")),
        "{stderr}"
    );
}

// ---- helpers -----------------------------------------------------------------

/// True in the child process that runs the test `name` alone; in the
/// parent, runs that child and asserts it passed. Leak assertions are exact
/// only there: another thread walking the heap at the same moment (a leak
/// scan, a mode-2 scan) holds every block's address on its stack, which the
/// conservative scan reads.
fn alone_in_a_child(name: &str) -> bool {
    if is_child(name) {
        return true;
    }
    if ffi_check::COMPILED_IN {
        child_passes(name, &[]);
    }
    false
}

/// The line of this file that holds `needle` (its first occurrence).
fn line_of(needle: &str) -> u32 {
    let src = include_str!("interpose.rs");
    let i = src
        .lines()
        .position(|l| l.contains(needle))
        .expect("the needle is in this file");
    i as u32 + 1
}

/// Overwrites the dead part of the stack below this frame, so a stale copy
/// of a pointer there cannot matter (the scan starts at the live frames
/// anyway; this keeps registers spilled by deeper calls from holding one).
#[inline(never)]
fn wipe_stack() {
    let mut junk = [0usize; 512];
    std::hint::black_box(&mut junk);
}

// ---- a real C library, without the allocator hooks -------------------------------------

mod zlib {
    use super::*;
    use libz_sys as z;

    /// What a plain binding hands zlib: C's own `calloc` and `free`, no
    /// ffi-check hook.
    extern "C" fn plain_zalloc(_: z::voidpf, n: z::uInt, size: z::uInt) -> z::voidpf {
        // SAFETY: calloc has no preconditions.
        unsafe { libc::calloc(n as usize, size as usize) }
    }
    extern "C" fn plain_zfree(_: z::voidpf, p: z::voidpf) {
        // SAFETY: zlib frees what plain_zalloc gave it, once.
        unsafe { libc::free(p) }
    }

    fn stream() -> Box<z::z_stream> {
        Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc: plain_zalloc,
            zfree: plain_zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        })
    }

    fn size() -> std::os::raw::c_int {
        ffi_check::to_c(std::mem::size_of::<z::z_stream>())
    }

    /// Initialises a deflate stream, then drops it without `deflateEnd`.
    #[inline(never)]
    fn init_and_drop(end: bool) {
        let mut s = stream();
        // SAFETY: a fresh stream, zlib's own version string and struct size.
        let rc = unsafe { call!(z::deflateInit_(&mut *s, 6, z::zlibVersion(), size())) };
        assert_eq!(rc, z::Z_OK);
        if end {
            // SAFETY: the stream was initialised above and is ended once.
            unsafe { call!(z::deflateEnd(&mut *s)) };
        }
        drop(s);
    }

    #[test]
    fn zlib_state_dropped_without_deflate_end_is_a_leak_at_the_init_line() {
        if !alone_in_a_child(
            "zlib::zlib_state_dropped_without_deflate_end_is_a_leak_at_the_init_line",
        ) {
            return;
        }
        // In mode 2 dropping the stream is already P3: zlib's state points
        // back to it (`FreedWhileRetained`, from inside the allocator).
        if !checks() || ffi_check::mode() == ffi_check::Mode::Full {
            return;
        }
        let scope = LeakCheck::start();
        init_and_drop(false);
        wipe_stack();
        let report = scope.finish();
        let line = line_of(
            "let rc = unsafe { call!(z::deflateInit_(&mut *s, 6, z::zlibVersion(), size())) };",
        );
        assert_eq!(report.groups().len(), 1, "{report}");
        let g = &report.groups()[0];
        let site = g.site().expect("the init call's site");
        assert_eq!(
            (site.file(), site.line()),
            ("tests/interpose.rs", line),
            "{report}"
        );
        // The state, the window, the hash chains and the pending buffer.
        assert!(g.count() >= 4 && g.bytes() > 64 * 1024, "{report}");
    }

    #[test]
    fn zlib_stream_ended_is_clean() {
        if !checks() {
            return;
        }
        let scope = LeakCheck::start();
        init_and_drop(true);
        let report = scope.finish();
        assert!(report.is_empty(), "{report}");
    }
}

mod sqlite {
    use super::*;
    use libsqlite3_sys as sql;

    /// Opens an in-memory database and loses the handle without closing it.
    #[inline(never)]
    fn open(close: bool) {
        let mut db = std::ptr::null_mut();
        // SAFETY: SQLite's documented open; closed once when asked.
        unsafe {
            let rc = call!(sql::sqlite3_open(c":memory:".as_ptr(), &mut db));
            assert_eq!(rc, sql::SQLITE_OK);
            let create = c"CREATE TABLE t(a INTEGER, b TEXT); INSERT INTO t VALUES(1, 'one');";
            let rc = call!(sql::sqlite3_exec(
                db,
                create.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut()
            ));
            assert_eq!(rc, sql::SQLITE_OK);
            if close {
                assert_eq!(call!(sql::sqlite3_close(db)), sql::SQLITE_OK);
            }
        }
        std::hint::black_box(&mut db);
        db = std::ptr::null_mut();
        std::hint::black_box(&mut db);
    }

    #[test]
    fn a_connection_never_closed_leaks_at_the_open_line() {
        if !alone_in_a_child("sqlite::a_connection_never_closed_leaks_at_the_open_line") {
            return;
        }
        if !checks() {
            return;
        }
        // SQLite's own one-time set-up (kept in its globals) happens first.
        open(true);
        let scope = LeakCheck::start();
        open(false);
        wipe_stack();
        let report = scope.finish();
        let line = line_of("let rc = call!(sql::sqlite3_open(c\":memory:\".as_ptr(), &mut db));");
        let at_open = report.groups().iter().find(|g| {
            g.site()
                .is_some_and(|s| s.file() == "tests/interpose.rs" && s.line() == line)
        });
        assert!(at_open.is_some_and(|g| g.bytes() > 0), "{report}");
    }

    #[test]
    fn a_closed_connection_is_clean() {
        if !checks() {
            return;
        }
        open(true);
        let scope = LeakCheck::start();
        open(true);
        let report = scope.finish();
        assert!(report.is_empty(), "{report}");
    }
}
