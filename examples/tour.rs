//! A guided tour of ffi-check: every rule, the right way and the wrong way,
//! against the C fixture library in `csrc/fixtures/`.
//!
//! ```text
//! cargo run --example tour
//! ```
//!
//! For each rule the tour prints a heading, runs the correct pattern (which
//! must pass silently: "ok: ..."), then makes the mistake inside
//! `ffi_check::capture` and prints the full report. `capture` collects the
//! violations instead of panicking, so the tour never stops half-way. At the
//! end it checks that every mistake was reported as the kind it expected,
//! and exits non-zero if one was not.

// The C fixture library's declarations (the workspace crate in `fixtures/`).
use ffi_check_fixtures as fixtures;

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::os::raw::{c_char, c_int, c_long};

use ffi_check::{
    c_free, c_free_with, c_malloc, call, callback, capture, slice_from_c, str_from_c,
    string_from_c, to_c, try_to_c, CBox, Deallocator, LeakCheck, Managed, Mode, Pinned, Pinner,
    Violation, ViolationKind,
};
use fixtures::*;

/// The fixture library's own allocator is not `malloc`: memory from
/// `fx_alloc` must go back through `fx_dealloc`, as SQLite's must go back
/// through `sqlite3_free`. Naming the deallocator lets ffi-check hold every
/// free of that memory to it.
const FX_DEALLOC: Deallocator = Deallocator::new("fx_dealloc", fx_dealloc);

fn main() {
    if !ffi_check::COMPILED_IN {
        println!(
            "tour: the checks are compiled out of this build (release without the `always` \
             feature); run `cargo run --example tour` in a debug build"
        );
        return;
    }
    if ffi_check::mode() == Mode::Off {
        println!("tour: FFI_CHECK=0 turned the checks off; the tour turns them back on");
        ffi_check::set_mode(Mode::Check);
    }
    // Mode 1 (the default) records a `file:line:col` site at every
    // allocation, pin and free, and one backtrace per violation, which keeps
    // the tour short. `FFI_CHECK_BACKTRACE=1` adds a backtrace to every event.

    let mut tour = Tour::default();
    p1_nested_pointers(&mut tour);
    p2_c_keeps_a_pointer(&mut tour);
    p3_freed_while_held(&mut tour);
    p4_callback_results(&mut tour);
    p5_stores_into_c_memory(&mut tour);
    p6_pins_end(&mut tour);
    c1_free_once_with_the_right_deallocator(&mut tour);
    c2_no_use_after_free(&mut tour);
    c3_no_leaks(&mut tour);
    c4_guarded_loans(&mut tour);
    mode_2_scans(&mut tour);
    x1_numbers(&mut tour);
    x2_strings(&mut tour);
    x3_no_implicit_pointers(&mut tour);
    c4_p2_bounds_and_roots(&mut tour);
    std::process::exit(tour.finish());
}

// ---- P1 ------------------------------------------------------------------

fn p1_nested_pointers(tour: &mut Tour) {
    tour.rule(
        "P1",
        "memory lent to C for a call holds no pointer to unpinned managed memory",
    );

    // An iovec-like table: an array of pointers to buffers. The table itself
    // is only lent for the call, but the buffers it points to are reached by
    // C through it, so they must be pinned. A `Pinner` pins them until it
    // unpins or drops, like Go's `runtime.Pinner`.
    let a = Managed::new(40 as c_int);
    let b = Managed::new(2 as c_int);
    let table = Managed::from_vec(vec![a.as_ptr(), b.as_ptr()]);
    let mut pinner = Pinner::new();
    pinner.pin(&a);
    pinner.pin(&b);
    tour.ok(
        "an array of pointers to pinned ints (a Pinner pins them)",
        || {
            // SAFETY: the table holds two valid pointers to ints.
            let sum = unsafe { call!(fx_sum_nested(&table, table.len())) };
            assert_eq!(sum, 42);
        },
    );

    // A struct holding a pointer: a `Pinned<[c_int]>` is pinned for its whole
    // life, the simplest choice for data that a C-facing struct points to.
    let data = Pinned::from_vec(vec![1 as c_int, 2, 3]);
    let view = Managed::new(FxView {
        data: data.as_ptr(),
        len: data.len(),
    });
    tour.ok(
        "a struct whose pointer points into a Pinned<[c_int]>",
        || {
            // SAFETY: the view points to `len` valid ints.
            let sum = unsafe { call!(fx_sum_view(&view)) };
            assert_eq!(sum, 6);
        },
    );

    pinner.unpin();
    tour.mistake(
        "the same table after the Pinner unpinned the ints",
        &[ViolationKind::UnpinnedNested],
        || {
            // SAFETY: the pointers are still valid; only the pin is missing.
            unsafe { call!(fx_sum_nested(&table, table.len())) }
        },
    );
}

// ---- P2 ------------------------------------------------------------------

fn p2_c_keeps_a_pointer(tour: &mut Tour) {
    tour.rule(
        "P2",
        "C keeps no pointer to unpinned managed memory after the call that lent it",
    );

    // `fx_keep` stores the pointer and says so with `ffi_check_retain`.
    // What C keeps must be pinned, and C must let go before Rust frees it.
    let kept = Pinned::new(7 as c_int);
    tour.ok(
        "C keeps a pointer to a Pinned<c_int>, then forgets it",
        || {
            // SAFETY: fx_keep only stores the pointer; fx_forget drops it
            // before `kept` is dropped.
            unsafe {
                call!(fx_keep(&kept));
                assert_eq!(call!(fx_kept()), kept.as_ptr().cast::<c_void>());
                call!(fx_forget());
            }
        },
    );

    let lent = Managed::new(8 as c_int);
    tour.mistake(
        "C keeps a pointer to a Managed<c_int> nothing pins",
        &[ViolationKind::Retained],
        || {
            // SAFETY: as above; fx_forget runs before `lent` is dropped.
            unsafe { call!(fx_keep(&lent)) };
        },
    );
    // SAFETY: empties the slot (and releases the retain).
    unsafe { call!(fx_forget()) };
}

// ---- P3 ------------------------------------------------------------------

fn p3_freed_while_held(tour: &mut Tour) {
    tour.rule(
        "P3",
        "managed memory is not freed or unpinned while C holds it, nor dropped while pinned",
    );

    tour.ok("C forgets the pointer, then Rust drops the memory", || {
        let kept = Pinned::new(1u64);
        // SAFETY: fx_keep stores the pointer; fx_forget drops it before the
        // memory is dropped.
        unsafe {
            call!(fx_keep(&kept));
            call!(fx_forget());
        }
        drop(kept);
    });
    tour.ok("the Pinner goes before the memory it pins", || {
        let m = Managed::new(2u64);
        let mut pinner = Pinner::new();
        pinner.pin(&m);
        drop(pinner);
        drop(m);
    });

    tour.mistake(
        "Rust drops a Pinned while C still keeps a pointer to it",
        &[ViolationKind::FreedWhileRetained],
        || {
            let kept = Pinned::new(3u64);
            // SAFETY: fx_keep only stores the pointer. The checker keeps the
            // memory alive (leaks it) when the drop is reported, so C's
            // pointer stays valid.
            unsafe { call!(fx_keep(&kept)) };
            drop(kept);
        },
    );
    // SAFETY: empties the slot.
    unsafe { call!(fx_forget()) };

    tour.mistake(
        "Rust drops a Managed that a Pinner still pins",
        &[ViolationKind::FreedWhilePinned],
        || {
            let m = Managed::new(4u64);
            let mut pinner = Pinner::new();
            pinner.pin(&m);
            drop(m);
            drop(pinner);
        },
    );
}

// ---- P4 ------------------------------------------------------------------

/// A visitor for `fx_for_each`: adds each item to the `c_long` behind `user`.
/// `callback!` stops a panic or a violation from unwinding into C.
unsafe extern "C" fn add_item(user: *mut c_void, item: c_int) -> c_int {
    callback!({
        // SAFETY: `user` is the `c_long` lent to fx_for_each for this call.
        unsafe { *user.cast::<c_long>() += c_long::from(item) };
        0
    })
}

/// A producer that hands C a fresh copy in C memory: C may keep it.
unsafe extern "C" fn produce_c_copy(_user: *mut c_void) -> *const c_void {
    callback!({ CBox::from_slice(b"copy\0").into_raw() as *const c_void })
}

/// A producer that hands C back the user data it was given: fine when that
/// is pinned, P4 when it is not.
unsafe extern "C" fn produce_user_data(user: *mut c_void) -> *const c_void {
    callback!({ user as *const c_void })
}

type Producer = unsafe extern "C" fn(*mut c_void) -> *const c_void;
type Visitor = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;

fn p4_callback_results(tour: &mut Tour) {
    tour.rule(
        "P4",
        "a callback returns to C no pointer to unpinned managed memory",
    );

    let items = Managed::from_vec(vec![1 as c_int, 2, 3, 4]);
    let mut total = Managed::new(0 as c_long);
    tour.ok(
        "a visitor callback with user data, returning a number",
        || {
            // SAFETY: add_item matches fx_visit_fn and `total` is a c_long.
            let calls = unsafe {
                call!(fx_for_each(
                    &items,
                    items.len(),
                    Some(add_item as Visitor),
                    &mut total
                ))
            };
            assert_eq!(calls, 4);
        },
    );
    assert_eq!(*total, 10);

    tour.ok(
        "a producer callback returning C memory (CBox::into_raw)",
        || {
            // SAFETY: produce_c_copy matches fx_produce_fn; it ignores `user`.
            let p = unsafe {
                call!(fx_call_producer(
                    Some(produce_c_copy as Producer),
                    std::ptr::null_mut::<c_void>()
                ))
            };
            // Take the copy back: the CBox frees it once, on drop.
            // SAFETY: p is the malloc'd, NUL-terminated copy the callback made.
            let copy = unsafe { CBox::from_raw_cstr(p as *mut c_char) }.expect("non-null");
            assert_eq!(copy.to_bytes(), b"copy");
        },
    );

    let mut pinned = Pinned::new(5 as c_int);
    tour.ok(
        "a producer callback returning pinned user data (Pinned<c_int>)",
        || {
            // SAFETY: produce_user_data matches fx_produce_fn.
            let p = unsafe {
                call!(fx_call_producer(
                    Some(produce_user_data as Producer),
                    &mut pinned
                ))
            };
            assert_eq!(p, pinned.as_ptr().cast::<c_void>());
        },
    );

    let mut unpinned = Managed::new(6 as c_int);
    tour.mistake(
        "a producer callback returning unpinned user data (Managed<c_int>)",
        &[ViolationKind::CallbackReturnedUnpinned],
        || {
            // SAFETY: as above; the tour does not use the returned pointer.
            unsafe {
                call!(fx_call_producer(
                    Some(produce_user_data as Producer),
                    &mut unpinned
                ))
            }
        },
    );
}

// ---- P5 ------------------------------------------------------------------

fn p5_stores_into_c_memory(tour: &mut Tour) {
    tour.rule(
        "P5",
        "Rust stores no pointer to unpinned managed memory into C memory",
    );

    // A pointer slot in C memory, as a C struct field would be.
    let mut slot = CBox::new(std::ptr::null::<c_int>());
    let pinned = Pinned::new(1 as c_int);
    tour.ok("CBox::set stores a pointer to a Pinned<c_int>", || {
        slot.set(pinned.as_ptr());
    });

    let unpinned = Managed::new(2 as c_int);
    tour.mistake(
        "CBox::set stores a pointer to a Managed<c_int> nothing pins",
        &[ViolationKind::StoredUnpinned],
        || slot.set(unpinned.as_ptr()),
    );
    slot.set(std::ptr::null());
}

// ---- P6 ------------------------------------------------------------------

fn p6_pins_end(tour: &mut Tour) {
    tour.rule(
        "P6",
        "a pin ends: a Pinner leaked while it pins something is reported",
    );

    let m = Managed::new(0u32);
    tour.ok("a Pinner that drops at the end of its scope", || {
        let scope = LeakCheck::start();
        {
            let mut pinner = Pinner::new();
            pinner.pin(&m);
        }
        assert!(scope.finish().is_empty());
    });

    let forever = Managed::new(1u32);
    println!("\nmistake: a Pinner is mem::forget-ed while it pins a Managed<u32>\n");
    let scope = LeakCheck::start();
    let mut pinner = Pinner::new();
    pinner.pin(&forever);
    std::mem::forget(pinner);
    let report = scope.finish();
    // A leak report prints like LeakSanitizer; each leaked pin is also a
    // `LeakedPin` violation, in Go's words.
    println!("{report}\n");
    tour.expect_printed(
        "a leaked Pinner",
        &[ViolationKind::LeakedPin],
        &report.violations(),
    );
    // The memory stays pinned for good now, so it is never dropped either:
    // dropping it would be a P3 report.
    std::mem::forget(forever);
}

// ---- C1 ------------------------------------------------------------------

fn c1_free_once_with_the_right_deallocator(tour: &mut Tour) {
    tour.rule(
        "C1",
        "C memory is freed exactly once, by its own deallocator; managed memory never by C",
    );

    tour.ok(
        "fx_greet's malloc'd string, adopted with CBox::from_raw, freed once on drop",
        || {
            // CBox::from_str builds a C string (malloc'd, NUL-terminated) for
            // C to read; the CBox frees it on drop.
            let name = CBox::from_str("tour");
            // SAFETY: name is a live C string; fx_greet returns a malloc'd
            // string the caller owns.
            let raw = unsafe { call!(fx_greet(&name)) };
            // SAFETY: raw came from the malloc family and nobody else owns it.
            let greeting = unsafe { CBox::from_raw_cstr(raw) }.expect("fx_greet failed");
            assert_eq!(greeting.to_bytes(), b"hello, tour");
        },
    );
    tour.ok(
        "fx_alloc'd memory adopted with CBox::from_raw_with(.., fx_dealloc)",
        || {
            let name = CBox::from_str("private");
            // SAFETY: name is a live C string.
            let raw = unsafe { call!(fx_alloc_string(&name)) };
            // from_raw_with records the library's own deallocator: the drop
            // calls fx_dealloc, and any other free of this memory is reported.
            // SAFETY: raw came from fx_alloc and nobody else owns it.
            let copy =
                unsafe { CBox::from_raw_cstr_with(raw, FX_DEALLOC) }.expect("fx_alloc failed");
            assert_eq!(copy.to_bytes(), b"private");
        },
    );

    tour.mistake(
        "C frees the same block twice",
        &[ViolationKind::DoubleFree],
        || {
            let p = c_malloc(16);
            // SAFETY: p is live malloc'd memory; the second free inside is
            // the mistake, and the checker does not carry it out.
            unsafe { call!(fx_free_twice(p)) };
        },
    );

    tour.mistake(
        "C frees Rust's memory (a Managed<[u8]> lent for the call)",
        &[ViolationKind::InvalidFree],
        || {
            let mut buf = Managed::from_vec(vec![0u8; 32]);
            // SAFETY: the free inside is reported and not carried out.
            unsafe { call!(fx_free_it(&mut buf)) };
        },
    );

    tour.mistake(
        "fx_alloc'd memory freed with libc free",
        &[ViolationKind::MismatchedFree],
        || {
            let name = CBox::from_str("private");
            // SAFETY: name is a live C string.
            let raw = unsafe { call!(fx_alloc_string(&name)) };
            // SAFETY: raw came from fx_alloc and nobody else owns it.
            let copy =
                unsafe { CBox::from_raw_cstr_with(raw, FX_DEALLOC) }.expect("fx_alloc failed");
            let raw = copy.into_raw();
            // SAFETY: the wrong deallocator: reported and not carried out
            // (libc free would corrupt the heap: the block starts 16 bytes
            // before the pointer).
            unsafe { c_free(raw.cast()) };
            // SAFETY: the right one.
            unsafe { c_free_with(raw.cast(), &FX_DEALLOC) };
        },
    );
}

// ---- C2 ------------------------------------------------------------------

fn c2_no_use_after_free(tour: &mut Tour) {
    tour.rule(
        "C2",
        "no pointer into freed memory is passed to C, returned from C, or freed again",
    );

    tour.ok(
        "a C string bound to a variable that outlives the call",
        || {
            let name = CBox::from_str("still here");
            // SAFETY: fx_keep_silently only stores the pointer;
            // fx_forget_silently drops it before `name` goes.
            unsafe {
                call!(fx_keep_silently(name.as_ptr().cast::<c_void>()));
                call!(fx_forget_silently());
            }
        },
    );

    tour.mistake(
        "a pointer into a temporary C string that is already freed",
        &[ViolationKind::UseAfterFree],
        || {
            // The temporary CBox is dropped at the end of this statement: the
            // classic dangling pointer (the `dangling_pointers_from_temporaries`
            // lint catches the CString version of it).
            let dangling = CBox::from_str("gone").as_ptr();
            // SAFETY: fx_keep_silently stores the pointer without reading it.
            unsafe {
                call!(fx_keep_silently(dangling.cast::<c_void>()));
                call!(fx_forget_silently());
            }
        },
    );

    tour.mistake(
        "reading a string that C has already freed",
        &[ViolationKind::UseAfterFree],
        || {
            let name = CBox::from_str("brief");
            // SAFETY: name is a live C string.
            let raw = unsafe { call!(fx_greet(&name)) };
            // SAFETY: C frees its own string (the library bug).
            unsafe { call!(fx_free_it(raw.cast::<c_void>())) };
            // The check sees the region is freed and does not read it.
            // SAFETY: raw pointed to a NUL-terminated string.
            unsafe { str_from_c(raw) }.len()
        },
    );
}

// ---- C3 ------------------------------------------------------------------

fn c3_no_leaks(tour: &mut Tour) {
    tour.rule(
        "C3",
        "C memory that Rust owns is freed before the program (or a LeakCheck scope) ends",
    );

    tour.ok("C memory owned by CBoxes, freed on drop", || {
        let scope = LeakCheck::start();
        {
            let _buf = CBox::from_elem(0u8, 256);
            // SAFETY: fx_leak returns malloc'd memory the caller owns.
            let p = unsafe { call!(fx_leak(64)) };
            // SAFETY: p is live malloc'd memory nobody else owns.
            let _adopted = unsafe { CBox::from_raw_parts(p.cast::<u8>(), 64) };
        }
        let report = scope.finish();
        assert!(report.is_empty(), "{report}");
    });

    tour.ok(
        "a table meant to live forever, marked as an intended leak",
        || {
            let scope = LeakCheck::start();
            let table = CBox::from_elem(0u64, 8);
            let _: &'static mut [u64] = table.leak_intended("lookup table C keeps until exit");
            let report = scope.finish();
            assert!(
                report.is_empty() && report.intended_leaks() == 1,
                "{report}"
            );
        },
    );

    println!("\nmistake: C memory from fx_leak and from CBox::into_raw is never freed\n");
    let scope = LeakCheck::start();
    // SAFETY: fx_leak returns malloc'd memory the caller owns.
    let from_c = unsafe { call!(fx_leak(100)) };
    let from_rust = CBox::from_elem(0u8, 24).into_raw();
    let report = scope.finish();
    println!("{report}\n");
    tour.expect_printed(
        "two leaks, one allocated in C, one in Rust",
        &[ViolationKind::Leak],
        &report.violations(),
    );
    // Free them now so nothing is left over at exit.
    // SAFETY: both are live malloc'd blocks owned here.
    unsafe {
        c_free(from_c);
        c_free(from_rust.cast());
    }
}

// ---- C4 (mode 2) ------------------------------------------------------------

/// Runs `f` in mode 2 (`FFI_CHECK=2`), then goes back to the mode before.
fn in_mode_2<R>(f: impl FnOnce() -> R) -> R {
    let before = ffi_check::mode();
    ffi_check::set_mode(Mode::Full);
    let r = f();
    ffi_check::set_mode(before);
    r
}

fn c4_guarded_loans(tour: &mut Tour) {
    tour.rule(
        "C4",
        "C writes only inside the C memory it is given (mode 2 guards every CBox)",
    );

    in_mode_2(|| {
        // In mode 2 a CBox's malloc block has guard bytes on both sides,
        // checked around every call and at the free, as HotSpot's
        // -Xcheck:jni does for JNI buffers.
        let mut buf = CBox::from_elem(0u8, 16);
        tour.ok("C fills exactly the 16 bytes it was lent", || {
            // SAFETY: 16 writable bytes.
            unsafe { call!(fx_fill(&mut buf, 16, 1)) };
        });
        tour.mistake(
            "C is told the buffer holds 20 bytes: it writes 4 past the end",
            &[ViolationKind::GuardOverrun],
            || {
                // SAFETY: the mistake under test; the guard bytes after the
                // block take the 4 extra bytes.
                unsafe { call!(fx_fill(&mut buf, 20, 2)) };
            },
        );
    });
}

// ---- mode 2: what C keeps, found by scanning ---------------------------------

fn mode_2_scans(tour: &mut Tour) {
    tour.rule(
        "P2/P5, mode 2",
        "pointers C keeps in its own memory are found without C saying so",
    );

    in_mode_2(|| {
        // SAFETY: fx_table_new has no preconditions.
        let table = unsafe { call!(fx_table_new(2)) };
        let pinned = Pinned::new(1 as c_int);
        tour.ok("C keeps a pointer to pinned memory in its table", || {
            // SAFETY: slot 0 is inside the table; cleared below.
            unsafe { call!(fx_table_put(table, 0, &pinned)) };
        });
        let lent = Managed::new(2 as c_int);
        tour.mistake(
            "C keeps a pointer it was only lent in a malloc'd table, and says nothing",
            &[ViolationKind::Retained],
            || {
                // SAFETY: slot 1 is inside the table; cleared below.
                unsafe { call!(fx_table_put(table, 1, &lent)) };
            },
        );
        // SAFETY: empties the slots and frees the table.
        unsafe {
            call!(fx_table_put(table, 0, std::ptr::null::<c_void>()));
            call!(fx_table_put(table, 1, std::ptr::null::<c_void>()));
            call!(fx_table_free(table));
        }
    });
}

// ---- X1 ------------------------------------------------------------------

fn x1_numbers(tour: &mut Tour) {
    tour.rule(
        "X1",
        "numbers cross the boundary only through explicit, lossless conversions",
    );

    // `call!` passes a number only as the exact type C takes: a `usize`
    // where C wants an `int` does not compile. `to_c` converts and checks.
    let items = [5usize, 6, 7];
    tour.ok("to_c(len) into a c_int for fx_counter_new", || {
        let start: c_int = to_c(items.len());
        // SAFETY: fx_counter_new has no preconditions.
        let counter = Counter(unsafe { call!(fx_counter_new(start)) });
        assert_eq!(counter.incr(), 4);
    });
    tour.ok("try_to_c returns an error instead of reporting", || {
        assert!(try_to_c::<usize, c_int>(usize::MAX).is_err());
    });

    tour.mistake(
        "to_c of 3_000_000_000usize into a c_int",
        &[ViolationKind::LossyConversion],
        || {
            let big: usize = 3_000_000_000;
            let start: c_int = to_c(big);
            start
        },
    );
}

/// An opaque C object owned by Rust, freed by the library's destroy
/// function: the usual shape of a safe wrapper over a create/destroy pair.
struct Counter(*mut FxCounter);

impl Counter {
    fn incr(&self) -> c_int {
        // SAFETY: self.0 is a live counter from fx_counter_new.
        unsafe { call!(fx_counter_incr(self.0)) }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        // SAFETY: self.0 came from fx_counter_new and is freed once, here.
        unsafe { call!(fx_counter_free(self.0)) }
    }
}

// ---- X2 ------------------------------------------------------------------

fn x2_strings(tour: &mut Tour) {
    tour.rule(
        "X2",
        "strings cross only through explicit conversions (no interior NUL to C; \
         non-null, terminated, UTF-8 from C)",
    );

    tour.ok("CBox::from_str to C, string_from_c back", || {
        let name = CBox::from_str("Ada");
        // SAFETY: name is a live C string; fx_greet returns an owned one.
        let raw = unsafe { call!(fx_greet(&name)) };
        // SAFETY: raw is a live, NUL-terminated C string.
        let greeting = unsafe { string_from_c(raw) };
        assert_eq!(greeting, "hello, Ada");
        // SAFETY: raw came from malloc and is freed once.
        unsafe { c_free(raw.cast()) };
        // SAFETY: fx_version returns a static string.
        let version = unsafe { str_from_c(call!(fx_version())) };
        assert_eq!(version, "fixtures 1.0");
    });
    tour.ok("bytes with their length: slice_from_c(ptr, len)", || {
        let mut len = 0usize;
        // An out-parameter: `Some(&mut len)` is C's (nullable) `size_t *`.
        // SAFETY: fx_unterminated writes the length and returns owned memory.
        let raw = unsafe { call!(fx_unterminated(Some(&mut len))) };
        // SAFETY: raw points to `len` initialised bytes.
        let bytes: &[u8] = unsafe { slice_from_c(raw.cast(), len) };
        assert_eq!(bytes, b"abcd");
        // SAFETY: raw came from malloc and is freed once.
        unsafe { c_free(raw.cast()) };
    });

    tour.mistake(
        "a Rust string with a NUL inside, going to C",
        &[ViolationKind::InteriorNul],
        || CBox::from_str("nul\0inside").to_bytes().len(),
    );
    tour.mistake(
        "reading a C string from a NULL pointer",
        &[ViolationKind::NullPointer],
        // SAFETY: the check stops at NULL.
        || unsafe { str_from_c(std::ptr::null()) }.len(),
    );
    tour.mistake(
        "reading fx_unterminated's 4 bytes as a C string",
        &[ViolationKind::UnterminatedString],
        || {
            let mut len = 0usize;
            // SAFETY: fx_unterminated writes the length and returns owned memory.
            let raw = unsafe { call!(fx_unterminated(Some(&mut len))) };
            // The tracked region bounds the search for the NUL, so nothing
            // past the 4 bytes is read.
            // SAFETY: raw points into a live tracked region.
            let n = unsafe { str_from_c(raw) }.len();
            // SAFETY: raw came from malloc and is freed once.
            unsafe { c_free(raw.cast()) };
            n
        },
    );
    tour.mistake(
        "reading fx_bad_utf8's bytes as a &str",
        &[ViolationKind::InvalidUtf8],
        || {
            // SAFETY: fx_bad_utf8 returns an owned, NUL-terminated string.
            let raw = unsafe { call!(fx_bad_utf8()) };
            // SAFETY: raw is a live C string.
            let n = unsafe { str_from_c(raw) }.len();
            // SAFETY: raw came from malloc and is freed once.
            unsafe { c_free(raw.cast()) };
            n
        },
    );
}

// ---- X3 ------------------------------------------------------------------

fn x3_no_implicit_pointers(tour: &mut Tour) {
    tour.rule(
        "X3",
        "wrappers never turn into raw pointers implicitly (checked at compile time)",
    );
    // `Managed`, `Pinned` and `CBox` deref to the value they hold, never to a
    // pointer, and there is no `From<Wrapper> for *const T`: a raw pointer
    // comes from a named method (`as_ptr`, `as_mut_ptr`, `into_raw`) or from
    // `call!`, which checks it on the way. Code that tries
    // `let p: *const u8 = &buf;` does not compile, so there is nothing to
    // report at run time.
    let buf = Managed::from_vec(vec![1u8, 2, 3]);
    tour.ok(
        "a raw pointer only from a named method: buf.as_ptr()",
        || {
            let p: *const u8 = buf.as_ptr();
            // SAFETY: p points to 3 bytes of `buf`, alive for the call.
            let sum = unsafe { call!(fx_checksum(p, buf.len())) };
            assert_eq!(sum, 6);
        },
    );
}

// ---- bookkeeping -----------------------------------------------------------

/// Counts what the tour showed and checks each mistake was reported as the
/// kind it expected.
#[derive(Default)]
struct Tour {
    rules: usize,
    reported: usize,
    seen: BTreeSet<ViolationKind>,
    problems: Vec<String>,
}

impl Tour {
    fn rule(&mut self, id: &str, statement: &str) {
        self.rules += 1;
        println!("\n==== {id}: {statement}\n");
    }

    /// Runs a correct pattern: it must not be reported.
    fn ok<R>(&mut self, what: &str, f: impl FnOnce() -> R) -> R {
        let (r, violations) = capture(f);
        if violations.is_empty() {
            println!("ok: {what}");
        } else {
            println!("NOT OK: {what} was reported:");
            for v in &violations {
                println!("{v}\n");
            }
            self.problems.push(format!(
                "correct pattern reported: {what} ({})",
                kinds(&violations)
            ));
        }
        r
    }

    /// Makes a mistake inside `capture` and prints its reports.
    fn mistake<R>(&mut self, what: &str, expected: &[ViolationKind], f: impl FnOnce() -> R) -> R {
        println!("\nmistake: {what}\n");
        let (r, violations) = capture(f);
        self.expect_printed(what, expected, &violations);
        r
    }

    /// Prints each report, then checks them as [`Tour::expect`] does.
    fn expect_printed(&mut self, what: &str, expected: &[ViolationKind], violations: &[Violation]) {
        for v in violations {
            println!("{v}\n");
        }
        self.expect(what, expected, violations);
    }

    /// Checks that `violations` are exactly of the `expected` kinds, each
    /// seen at least once.
    fn expect(&mut self, what: &str, expected: &[ViolationKind], violations: &[Violation]) {
        self.reported += violations.len();
        for v in violations {
            self.seen.insert(v.kind());
            if !expected.contains(&v.kind()) {
                self.problems
                    .push(format!("{what}: unexpected {} report", v.kind()));
            }
        }
        for kind in expected {
            if !violations.iter().any(|v| v.kind() == *kind) {
                self.problems
                    .push(format!("{what}: expected {kind} was not reported"));
            }
        }
    }

    /// Prints the summary; returns the exit code.
    fn finish(mut self) -> i32 {
        for kind in ViolationKind::ALL {
            if !self.seen.contains(&kind) {
                self.problems
                    .push(format!("the tour never showed a {kind} report"));
            }
        }
        println!();
        if self.problems.is_empty() {
            println!(
                "tour: {} rules shown, {} violations reported, all as expected",
                self.rules, self.reported
            );
            0
        } else {
            for p in &self.problems {
                eprintln!("tour: FAILED: {p}");
            }
            eprintln!(
                "tour: {} rules shown, {} violations reported, {} problem(s)",
                self.rules,
                self.reported,
                self.problems.len()
            );
            1
        }
    }
}

fn kinds(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| v.kind().name())
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- C4 and P2: lengths and roots the checker can refuse ---------------------

fn c4_p2_bounds_and_roots(tour: &mut Tour) {
    tour.rule(
        "C4, P2",
        "a buffer is read only inside its memory, and a root must be memory",
    );

    let mut len = 0usize;
    // SAFETY: fx_unterminated writes the length; the block is freed below.
    let p = unsafe { call!(fx_unterminated(&mut len as *mut usize)) };
    tour.ok("the 4 bytes C says it returned are read", || {
        // SAFETY: C returned `len` bytes at p.
        let bytes = unsafe { slice_from_c(p.cast::<u8>(), len) };
        assert_eq!(bytes, b"abcd");
    });
    tour.mistake(
        "C's length is trusted past the block it lies in (40 bytes of a 4-byte block)",
        &[ViolationKind::OutOfBounds],
        || {
            // SAFETY: the mistake under test; the slice is cut to the block.
            let bytes = unsafe { slice_from_c(p.cast::<u8>(), 40) };
            assert_eq!(bytes.len(), 4);
        },
    );
    // SAFETY: p came from the fixture's tracked malloc; freed once.
    unsafe { c_free(p.cast()) };

    // SAFETY: fx_root_table_addr has no preconditions.
    let table = unsafe { call!(fx_root_table_addr()) };
    tour.mistake(
        "C's static table is registered as a root with a length of 1 TiB",
        &[ViolationKind::InvalidRoot],
        || {
            // SAFETY: refused: the range is not memory for its length.
            let registered = unsafe { ffi_check::add_root(table, 1 << 40) };
            assert!(!registered);
        },
    );
}
