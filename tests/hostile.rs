//! Hostile input and faults: wild pointers, impossible lengths, bad roots,
//! adoptions of memory no C allocator returned, violations in thread-local
//! destructors and at exit, a log that cannot be written. Each attack runs
//! in a child process (a crash there fails the test instead of killing the
//! suite), in mode 1 and in mode 2, and the parent asserts the child's exit
//! status and what it printed: a report of a fitting kind with its help
//! line, never a crash.
//!
//! The tracking allocator is installed, as in a program that checks its raw
//! pointers too.

mod common;

use std::cell::RefCell;
use std::ffi::c_void;
use std::os::raw::{c_char, c_int};

use common::{assert_report, child_passes, is_child, only, run_child, text};
use ffi_check::{
    add_root, c_adopt, c_free, c_malloc, call, capture, release, retain, scan_c_memory,
    slice_from_c, stats, to_c, CBox, Managed, Pinned, TrackingAllocator, ViolationKind,
};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

extern "C" {
    // The crate's C API (csrc/ffi_check.h), as C code calls it.
    fn ffi_check_free_at(ptr: *mut c_void, file: *const c_char, line: c_int);
    fn ffi_check_add_root_at(
        ptr: *const c_void,
        len: usize,
        file: *const c_char,
        line: c_int,
    ) -> c_int;
}

/// Runs the child test `name` in modes 1 and 2 (with `env` besides) and
/// asserts that it exited successfully and printed every one of `expect`.
fn attack(name: &str, env: &[(&str, &str)], expect: &[&str]) {
    for mode in ["1", "2"] {
        let mut vars = vec![("FFI_CHECK", mode)];
        vars.extend_from_slice(env);
        let stderr = child_passes(name, &vars);
        for e in expect {
            assert!(
                stderr.contains(e),
                "mode {mode}: child {name} did not print {e:?}:\n{stderr}"
            );
        }
    }
}

/// In the child: the one violation `f` reports, of `kind` with `phrase` in
/// its first line, printed for the parent to read.
fn one_report<R>(kind: ViolationKind, phrase: &str, f: impl FnOnce() -> R) -> R {
    let (r, v) = capture(f);
    let v = only(&v);
    assert_report(v, kind, phrase);
    eprintln!("{v}");
    r
}

// ---- frees of wild pointers --------------------------------------------------

#[test]
fn c_free_api_of_an_unmapped_address_is_refused() {
    const NAME: &str = "c_free_api_of_an_unmapped_address_is_refused";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[],
            &["InvalidFree", "0x1234", "not in readable memory", "help: "],
        );
    }
    one_report(
        ViolationKind::InvalidFree,
        "free of a pointer no C allocator returned",
        // SAFETY: the attack: a wild pointer handed to the C API's free.
        || unsafe { ffi_check_free_at(0x1234 as *mut c_void, c"hostile.c".as_ptr(), 7) },
    );
}

#[test]
fn c_free_of_an_mmapped_page_is_refused() {
    const NAME: &str = "c_free_of_an_mmapped_page_is_refused";
    if !is_child(NAME) {
        return attack(NAME, &[], &["InvalidFree", "not carried out", "help: "]);
    }
    // SAFETY: a fresh private mapping of two pages, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    for p in [map, map.wrapping_byte_add(4096)] {
        one_report(
            ViolationKind::InvalidFree,
            "free of a pointer no C allocator returned",
            // SAFETY: the attack: memory from mmap handed to free.
            || unsafe { c_free(p) },
        );
    }
    // The mapping is untouched: still readable and writable.
    // SAFETY: the mapping is still ours.
    unsafe {
        map.cast::<u8>().write(1);
        libc::munmap(map, 8192);
    }
}

// ---- roots -------------------------------------------------------------------

#[test]
fn a_root_over_unmapped_memory_is_refused() {
    const NAME: &str = "a_root_over_unmapped_memory_is_refused";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[],
            &["InvalidRoot", "0x1000", "not registered", "help: "],
        );
    }
    let registered = one_report(
        ViolationKind::InvalidRoot,
        "root for the mode-2 scans is not readable memory",
        // SAFETY: the attack: a root over the unmapped first pages, from C.
        || unsafe {
            ffi_check_add_root_at(0x1000 as *const c_void, 4096, c"hostile.c".as_ptr(), 9)
        },
    );
    assert_eq!(registered, 0, "the C API says the root was refused");
    // The scan that would have read it runs (and finds nothing).
    let ((), v) = capture(scan_c_memory);
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn a_root_longer_than_its_memory_is_refused() {
    const NAME: &str = "a_root_longer_than_its_memory_is_refused";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[],
            &[
                "InvalidRoot",
                "1099511627776 bytes",
                "not registered",
                "help: ",
            ],
        );
    }
    let table = Box::new([0usize; 8]);
    let registered = one_report(
        ViolationKind::InvalidRoot,
        "not readable memory",
        // SAFETY: the attack: 1 TiB claimed for a 64-byte table.
        || unsafe { add_root(&*table as *const [usize; 8], 1 << 40) },
    );
    assert!(!registered);
    let ((), v) = capture(scan_c_memory);
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn a_root_whose_end_overflows_is_refused() {
    const NAME: &str = "a_root_whose_end_overflows_is_refused";
    if !is_child(NAME) {
        return attack(NAME, &[], &["InvalidRoot", "overflows", "help: "]);
    }
    let table = Box::new([0usize; 8]);
    let registered = one_report(
        ViolationKind::InvalidRoot,
        "not readable memory",
        // SAFETY: the attack: a length of SIZE_MAX.
        || unsafe { add_root(&*table as *const [usize; 8], usize::MAX) },
    );
    assert!(!registered);
}

#[test]
fn a_readable_root_is_registered() {
    static mut TABLE: [usize; 8] = [0; 8];
    let (ok, v) = capture(|| {
        // SAFETY: a static is readable for the whole program.
        unsafe { add_root(std::ptr::addr_of!(TABLE), std::mem::size_of::<[usize; 8]>()) }
    });
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(ok, ffi_check::COMPILED_IN);
    ffi_check::remove_root(std::ptr::addr_of!(TABLE));
}

// ---- slices from C -----------------------------------------------------------

#[test]
fn a_slice_longer_than_any_slice_is_empty() {
    const NAME: &str = "a_slice_longer_than_any_slice_is_empty";
    if !is_child(NAME) {
        return attack(NAME, &[], &["OutOfBounds", "isize::MAX", "help: "]);
    }
    let b = CBox::new(7u32);
    let s: &[u32] = one_report(
        ViolationKind::OutOfBounds,
        "longer than any buffer can be",
        // SAFETY: the attack: a length no slice can have.
        || unsafe { slice_from_c(b.as_ptr(), usize::MAX) },
    );
    assert!(s.is_empty());
}

#[test]
fn a_slice_past_its_region_is_cut_to_the_region() {
    const NAME: &str = "a_slice_past_its_region_is_cut_to_the_region";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[],
            &[
                "OutOfBounds",
                "4000 bytes asked for",
                "4 element(s)",
                "help: ",
            ],
        );
    }
    let b = CBox::from_slice(&[1i32, 2, 3, 4]);
    let s: &[i32] = one_report(
        ViolationKind::OutOfBounds,
        "longer than the tracked region it lies in",
        // SAFETY: the attack: 1000 elements claimed for a 4-element block.
        || unsafe { slice_from_c(b.as_ptr(), 1000) },
    );
    assert_eq!(s, &[1, 2, 3, 4]);
}

#[test]
fn a_slice_inside_its_region_is_not_reported() {
    let b = CBox::from_slice(&[1i32, 2, 3, 4]);
    // SAFETY: three of the four elements.
    let (s, v) = capture(|| unsafe { slice_from_c(b.as_ptr(), 3) });
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(s, &[1, 2, 3]);
}

// ---- adoptions ---------------------------------------------------------------

#[test]
fn adopting_the_middle_of_a_tracked_block_is_refused() {
    const NAME: &str = "adopting_the_middle_of_a_tracked_block_is_refused";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[],
            &[
                "InvalidFree",
                "8 bytes into a tracked C block",
                "not adopted",
                "help: ",
            ],
        );
    }
    let p = c_malloc(64).cast::<u8>();
    let adopted = one_report(
        ViolationKind::InvalidFree,
        "adoption of a pointer no C allocator returned",
        // SAFETY: the attack: an interior pointer adopted as a block.
        || unsafe { CBox::<u64>::from_raw(p.add(8).cast::<u64>()) },
    );
    assert!(adopted.is_none(), "an interior pointer is not adopted");
    // Many frees later the quarantine gives back only real blocks.
    for _ in 0..2000 {
        drop(CBox::new(0u64));
    }
    // SAFETY: p came from c_malloc and is freed once.
    unsafe { c_free(p.cast()) };
}

#[test]
fn adopting_a_stack_address_a_static_or_managed_memory_is_refused() {
    const NAME: &str = "adopting_a_stack_address_a_static_or_managed_memory_is_refused";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[],
            &[
                "on this thread's stack",
                "in the static data or code of a loaded program or library",
                "managed memory",
                "help: ",
            ],
        );
    }
    static GLOBAL: u64 = 3;
    let mut local = 5u64;
    let m = Managed::new(9u64);
    let phrase = "adoption of a pointer no C allocator returned";
    for p in [
        &mut local as *mut u64,
        &GLOBAL as *const u64 as *mut u64,
        m.as_ptr() as *mut u64,
    ] {
        // SAFETY: the attack: memory no C allocator returned, adopted.
        let adopted = one_report(ViolationKind::InvalidFree, phrase, || unsafe {
            CBox::<u64>::from_raw(p)
        });
        assert!(adopted.is_none());
    }
    // c_adopt refuses the same way (and gives the pointer back).
    let q = one_report(ViolationKind::InvalidFree, phrase, || {
        c_adopt(&mut local as *mut u64 as *mut c_void, 8)
    });
    assert_eq!(q, &mut local as *mut u64 as *mut c_void);
    // The Managed is still the one owner of its memory: one clean drop.
    let (_, v) = capture(|| drop(m));
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn adopting_a_malloc_block_is_not_reported() {
    // SAFETY: a fresh block, adopted once and freed by the box.
    let p = unsafe { libc::malloc(8) }.cast::<u64>();
    // SAFETY: initialised before adoption.
    unsafe { p.write(1) };
    // SAFETY: p came from malloc and nobody else owns it.
    let (b, v) = capture(|| unsafe { CBox::<u64>::from_raw(p) });
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(*b.expect("adopted"), 1);
}

// ---- violations in thread-local destructors and at exit ------------------------

thread_local! {
    /// A pinned value C still holds (retained) when the thread ends.
    static KEPT: Pinned<u64> = {
        let p = Pinned::new(11u64);
        retain(p.as_ptr());
        p
    };
    /// The same, set after the thread-local exists.
    static KEPT_LATER: RefCell<Option<Pinned<u64>>> = const { RefCell::new(None) };
}

#[test]
fn a_violation_in_a_thread_local_destructor_is_reported_not_fatal() {
    const NAME: &str = "a_violation_in_a_thread_local_destructor_is_reported_not_fatal";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[("FFI_CHECK_ACTION", "panic")],
            &[
                "FreedWhileRetained",
                "not panicking: a panic inside a thread-local destructor would abort the process",
            ],
        );
    }
    std::thread::spawn(|| KEPT.with(|_| ()))
        .join()
        .expect("the thread ends cleanly");
    std::thread::spawn(|| {
        KEPT_LATER.with(|k| {
            let p = Pinned::new(12u64);
            retain(p.as_ptr());
            *k.borrow_mut() = Some(p);
        })
    })
    .join()
    .expect("the thread ends cleanly");
}

#[test]
fn a_violation_in_a_destructor_at_exit_is_reported_not_fatal() {
    const NAME: &str = "a_violation_in_a_destructor_at_exit_is_reported_not_fatal";
    if !is_child(NAME) {
        for mode in ["1", "2"] {
            let out = run_child(NAME, &[("FFI_CHECK", mode), ("FFI_CHECK_ACTION", "panic")]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "mode {mode}: {stderr}");
            assert!(
                stderr.contains("FreedWhileRetained"),
                "mode {mode}: {stderr}"
            );
        }
        return;
    }
    KEPT.with(|_| ());
    // exit() runs this thread's thread-local destructors, then ends the
    // process with the status asked for: the violation must not change it.
    std::process::exit(0);
}

// ---- the log -----------------------------------------------------------------

#[test]
fn a_log_that_cannot_be_written_says_so() {
    const NAME: &str = "a_log_that_cannot_be_written_says_so";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[("FFI_CHECK_LOG", "/dev/full")],
            &[
                "cannot write to FFI_CHECK_LOG=\"/dev/full\"",
                "LossyConversion",
            ],
        );
    }
    for _ in 0..3 {
        let _: c_int = one_report(ViolationKind::LossyConversion, "does not fit in", || {
            to_c(1usize << 40)
        });
    }
}

#[test]
fn an_empty_log_variable_is_warned_about() {
    const NAME: &str = "an_empty_log_variable_is_warned_about";
    if !is_child(NAME) {
        return attack(
            NAME,
            &[("FFI_CHECK_LOG", "")],
            &["ignoring empty FFI_CHECK_LOG"],
        );
    }
    let _: c_int = one_report(ViolationKind::LossyConversion, "does not fit in", || {
        to_c(1usize << 40)
    });
}

// ---- values and words ----------------------------------------------------------

#[test]
fn a_captured_lossy_length_is_zero() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    let data = [1u8; 16];
    let (n, v): (c_int, _) = capture(|| to_c(usize::MAX));
    assert_eq!(v.len(), 1);
    // A length C would use: zero reads nothing (the `as` value, -1, would
    // be taken as huge by C code that casts it back).
    let len = usize::try_from(n).expect("non-negative");
    assert!(len <= data.len());
}

#[test]
fn a_retain_of_a_freed_heap_block_is_worded_once() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    let b = Box::new(3u64);
    let p: *const u64 = &*b;
    drop(b);
    let ((), v) = capture(|| retain(p));
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "C retained a pointer into freed memory",
    );
    assert!(!v.first_line().contains("a pointer a pointer"), "{v}");
}

extern "C" fn read_nested(p: *const *const u64) -> u64 {
    // SAFETY: the caller lends one pointer to a live u64.
    unsafe { **p }
}

#[test]
fn a_report_on_two_heap_blocks_says_what_they_are_once() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    let inner = Box::new(5u64);
    let outer = Box::new(&*inner as *const u64);
    let p: *const *const u64 = &*outer;
    // Plain heap blocks are held to Go's rule P1 only when strict.
    let (n, v) = ffi_check::strictly(true, || capture(|| call!(read_nested(p))));
    assert_eq!(n, 5);
    let v = only(&v);
    assert_eq!(v.kind(), ViolationKind::UnpinnedNested);
    let text = v.to_string();
    assert_eq!(
        text.matches("the region is a Rust heap block (tracking allocator)")
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn an_unbalanced_release_changes_nothing_and_is_not_reported() {
    let kept = Pinned::new(1u64);
    let before = stats().retains;
    let ((), v) = capture(|| {
        release(kept.as_ptr()); // never retained
        retain(kept.as_ptr());
        release(kept.as_ptr());
        release(kept.as_ptr()); // one too many
    });
    assert!(v.is_empty(), "{v:?}");
    assert_eq!(stats().retains, before);
    // The count never went below zero: a retain now is held, and its free
    // while held is still seen.
    retain(kept.as_ptr());
    if ffi_check::COMPILED_IN {
        assert_eq!(stats().retains, before + 1);
    }
    release(kept.as_ptr());
}
