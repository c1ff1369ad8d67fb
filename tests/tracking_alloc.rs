//! The tracking allocator (SPEC §6): installed as this test binary's global
//! allocator, it makes every Rust heap block managed memory, so raw-pointer
//! FFI code is checked by `call!` without wrappers.

#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};

use common::fixtures::*;
use common::{assert_report, assert_rust_site, only};
use ffi_check::{
    assert_clean, c_free, c_malloc, call, capture, leak_report, Pinner, RegionKind, RegionState,
    TrackingAllocator, Violation, ViolationKind,
};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

// ---- use after free ----------------------------------------------------------

#[test]
#[allow(dangling_pointers_from_temporaries)]
fn dangling_cstring_temporary_is_use_after_free_with_the_line_that_freed_it() {
    ffi_check::set_event_backtraces(Some(true));
    let ((_, freed_at, call_at), v) = capture(|| {
        let p = CString::new("hello").unwrap().as_ptr();
        let freed_at = line!() - 1;
        // SAFETY: deliberately passes the dangling pointer; the checker
        // reports it (the quarantine keeps the memory mapped meanwhile).
        let n = unsafe { call!(fx_strlen(p)) };
        let call_at = line!() - 1;
        (n, freed_at, call_at)
    });
    ffi_check::set_event_backtraces(None);
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 1 of `fx_strlen` is a pointer into freed memory",
    );
    let text = v.to_string();
    let r = &v.regions()[0];
    assert_eq!(r.kind(), RegionKind::Managed);
    assert_eq!(r.state(), RegionState::Freed);
    assert_eq!(r.size(), 6);
    assert!(
        text.contains("Rust heap block (tracking allocator)"),
        "{text}"
    );
    assert!(
        text.contains("dangling_pointers_from_temporaries"),
        "{text}"
    );
    assert_rust_site(v.call_site(), file!(), call_at);
    // The free's backtrace names the `let` line that dropped the temporary
    // (where there is debug info to name lines with: not in an optimised
    // test build).
    let freed = text.split("first freed").nth(1).expect("a free backtrace");
    if cfg!(debug_assertions) {
        assert!(
            freed.contains(&format!("tests/tracking_alloc.rs:{freed_at}")),
            "{text}"
        );
    }
}

#[test]
fn a_temporary_inside_the_call_lives_through_it() {
    let n = assert_clean(|| {
        // SAFETY: the temporary CString lives until the end of the statement.
        unsafe { call!(fx_strlen(CString::new("four").unwrap().as_ptr())) }
    });
    assert_eq!(n, 4);
}

#[test]
fn a_pointer_kept_across_a_growing_push_is_use_after_free() {
    let (_, v) = capture(|| {
        let mut v = vec![1u8, 2, 3];
        v.shrink_to_fit();
        let stale = v.as_ptr();
        v.extend_from_slice(&[0; 4096]);
        // SAFETY: deliberately passes the pointer the reallocation left
        // behind; the quarantine keeps it mapped.
        unsafe { call!(fx_checksum(stale, 3)) }
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 1 of `fx_checksum` is a pointer into freed memory",
    );
}

#[test]
fn a_block_freed_inside_a_call_names_that_call_without_backtraces() {
    unsafe extern "C" fn free_it(user: *mut c_void) -> *const c_void {
        // SAFETY: `user` is the Box<u64> leaked below; it is taken back once.
        drop(unsafe { Box::from_raw(user.cast::<u64>()) });
        user
    }
    let (_, v) = capture(|| {
        let user = Box::into_raw(Box::new(7u64)).cast::<c_void>();
        // SAFETY: fx_call_producer calls free_it(user) and returns its result.
        let back = unsafe {
            call!(fx_call_producer(
                Some(free_it as unsafe extern "C" fn(*mut c_void) -> *const c_void),
                user
            ))
        };
        // SAFETY: deliberately passes the freed block back to C.
        unsafe { call!(fx_keep_silently(back)) };
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 1 of `fx_keep_silently`",
    );
    let r = &v.regions()[0];
    assert_eq!(r.state(), RegionState::Freed);
    // Freed inside the call to fx_call_producer: that call names the free.
    assert_eq!(r.free_site().map(|s| s.file()), Some(file!()));
    assert!(v.to_string().contains("first freed"), "{v}");
}

/// Frees a boxed `u64` inside a call (so the free has a site without
/// backtraces) and returns the dangling pointer.
fn box_freed_inside_a_call() -> *const c_void {
    unsafe extern "C" fn free_it(user: *mut c_void) -> *const c_void {
        // SAFETY: `user` is the Box<u64> leaked below; it is taken back once.
        drop(unsafe { Box::from_raw(user.cast::<u64>()) });
        user
    }
    let user = Box::into_raw(Box::new(7u64)).cast::<c_void>();
    // SAFETY: fx_call_producer calls free_it(user) and returns its result.
    unsafe {
        call!(fx_call_producer(
            Some(free_it as unsafe extern "C" fn(*mut c_void) -> *const c_void),
            user
        ))
    }
}

/// The one report of passing a block freed in this file back to C: a
/// use-after-free naming `fx_keep_silently` and this file as the free site.
fn assert_kept_block_was_freed_here(v: &Violation) {
    assert_report(
        v,
        ViolationKind::UseAfterFree,
        "argument 1 of `fx_keep_silently`",
    );
    assert_eq!(v.regions()[0].free_site().map(|s| s.file()), Some(file!()));
}

#[test]
fn a_block_stays_quarantined_while_blocks_of_its_layout_churn() {
    let (_, v) = capture(|| {
        let back = box_freed_inside_a_call();
        // A thousand blocks of the same layout made and freed meanwhile:
        // none of them may be handed the quarantined block's memory.
        let mut seen = Vec::with_capacity(1000);
        for i in 0..1000u64 {
            let b = std::hint::black_box(Box::new(i));
            seen.push(&*b as *const u64 as usize);
        }
        assert!(!seen.contains(&(back as usize)), "reused too early");
        // SAFETY: deliberately passes the freed block back to C.
        unsafe { call!(fx_keep_silently(back)) };
    });
    assert_kept_block_was_freed_here(only(&v));
}

#[test]
fn a_block_freed_on_another_thread_is_reported_with_that_free_site() {
    let back = std::thread::spawn(|| box_freed_inside_a_call() as usize)
        .join()
        .unwrap() as *const c_void;
    let (_, v) = capture(|| {
        // SAFETY: deliberately passes the freed block back to C.
        unsafe { call!(fx_keep_silently(back)) };
    });
    assert_kept_block_was_freed_here(only(&v));
}

#[test]
fn a_block_freed_on_another_thread_with_backtraces_is_reported_with_the_stack_of_its_free() {
    // With event backtraces on, the freeing thread's quarantine keeps the
    // stack of the free beside the block, and a report made on another
    // thread prints it. Alone in a child: the ended thread's ring goes to
    // the next thread that starts, and another test's allocations could
    // take the freed block back before it is passed to C.
    if !common::alone_in_child(
        "a_block_freed_on_another_thread_with_backtraces_is_reported_with_the_stack_of_its_free",
    ) {
        return;
    }
    ffi_check::set_event_backtraces(Some(true));
    let back = std::thread::spawn(|| box_freed_inside_a_call() as usize)
        .join()
        .unwrap() as *const c_void;
    ffi_check::set_event_backtraces(None);
    let (_, v) = capture(|| {
        // SAFETY: deliberately passes the freed block back to C.
        unsafe { call!(fx_keep_silently(back)) };
    });
    let v = only(&v);
    assert_kept_block_was_freed_here(v);
    let text = v.to_string();
    let freed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("first freed at"))
        .skip(1)
        .take_while(|l| l.starts_with("          "))
        .collect();
    assert!(!freed.is_empty(), "no stack for the free: {text}");
    if cfg!(debug_assertions) {
        assert!(
            freed.iter().any(|l| l.contains("box_freed_inside_a_call")),
            "{text}"
        );
    }
}

// ---- rules P1, P2, P4 on plain heap memory -------------------------------------
//
// Rust heap memory never moves, so C holding a pointer to a plain heap block
// is harmless until Rust frees it: by default the rules are Rust's, and only
// that free (or C's use afterwards) is reported. Go's discipline (pin before
// C can see it) holds for memory declared `Managed`, and for plain heap
// blocks too when the rules are strict (`ffi_check::strictly`).

/// Three boxed ints and a table of pointers to them (each int a heap block
/// of its own, as C's tables of objects are).
#[allow(clippy::vec_box)]
fn three_boxes() -> (Vec<Box<c_int>>, Vec<*const c_int>) {
    let items: Vec<Box<c_int>> = (1..=3).map(Box::new).collect();
    let ptrs = items.iter().map(|b| &**b as *const c_int).collect();
    (items, ptrs)
}

#[test]
fn an_array_of_pointers_to_plain_heap_blocks_lent_for_one_call_is_clean() {
    let (_items, ptrs) = three_boxes();
    let sum = assert_clean(|| {
        // SAFETY: ptrs holds 3 valid pointers.
        unsafe { call!(fx_sum_nested(ptrs.as_ptr(), ptrs.len())) }
    });
    assert_eq!(sum, 6);
}

#[test]
fn strict_an_array_of_pointers_to_unpinned_heap_blocks_is_unpinned_nested() {
    let (_items, ptrs) = three_boxes();
    let (sum, v) = ffi_check::strictly(true, || {
        capture(|| {
            // SAFETY: ptrs holds 3 valid pointers.
            unsafe { call!(fx_sum_nested(ptrs.as_ptr(), ptrs.len())) }
        })
    });
    assert_eq!(sum, 6);
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UnpinnedNested,
        "argument 1 of `fx_sum_nested` has managed pointer to unpinned managed pointer",
    );
    assert_eq!(v.regions()[0].size(), 24);
    assert_eq!(v.regions()[1].size(), 4);
}

#[test]
fn strict_the_same_array_after_pinning_is_clean() {
    let (items, ptrs) = three_boxes();
    let sum = ffi_check::strictly(true, || {
        assert_clean(|| {
            let mut pinner = Pinner::new();
            for b in &items {
                pinner.pin_ptr(&**b as *const c_int);
            }
            // SAFETY: ptrs holds 3 valid, pinned pointers.
            let sum = unsafe { call!(fx_sum_nested(ptrs.as_ptr(), ptrs.len())) };
            pinner.unpin();
            sum
        })
    });
    assert_eq!(sum, 6);
}

#[test]
fn argv_of_cstrings_is_clean_and_strict_needs_pins() {
    let args: Vec<CString> = ["a", "bb", "ccc"]
        .iter()
        .map(|s| CString::new(*s).unwrap())
        .collect();
    let argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    let lend = || {
        // SAFETY: argv holds valid pointers; fx_sum_nested only reads them.
        unsafe { call!(fx_sum_nested(argv.as_ptr().cast::<*const c_int>(), 0)) }
    };
    assert_clean(lend);
    let (_, v) = ffi_check::strictly(true, || capture(lend));
    assert_eq!(only(&v).kind(), ViolationKind::UnpinnedNested);
    ffi_check::strictly(true, || {
        assert_clean(|| {
            let mut pinner = Pinner::new();
            for a in &args {
                pinner.pin_ptr(a.as_ptr());
            }
            lend()
        })
    });
}

/// `writev` with plain `Vec` buffers, the `iovec`s on the heap and on the
/// stack: correct Rust, nothing to pin.
#[test]
fn writev_of_plain_vec_buffers_is_clean_from_the_heap_and_from_the_stack() {
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let head = b"head:".to_vec();
    let body = b"body".to_vec();
    let iov = |b: &Vec<u8>| libc::iovec {
        iov_base: b.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: b.len(),
    };
    #[allow(clippy::useless_vec)] // the point: the iovecs in a heap block
    let on_heap = vec![iov(&head), iov(&body)];
    let on_stack = [iov(&head), iov(&body)];
    let written = assert_clean(|| {
        // SAFETY: the iovecs name live bytes for the calls.
        unsafe {
            call!(libc::writev(fds[1], on_heap.as_ptr(), 2))
                + call!(libc::writev(fds[1], on_stack.as_ptr(), 2))
        }
    });
    assert_eq!(written, 18);
    let mut back = [0u8; 18];
    // SAFETY: reading what was written into a local buffer.
    let n = unsafe { libc::read(fds[0], back.as_mut_ptr().cast(), 18) };
    assert_eq!(n, 18);
    assert_eq!(&back, b"head:bodyhead:body");
    // SAFETY: both descriptors are ours.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

/// The destructor a C library calls with the user data it was given: here
/// C calls it through `fx_call_producer`, as a library's unregister would.
unsafe extern "C" fn destroy_closure(user: *mut c_void) -> *const c_void {
    ffi_check::callback!({
        // SAFETY: user is the Box::into_raw pointer handed over below; C
        // gives it back exactly once.
        drop(unsafe { Box::from_raw(user.cast::<Box<dyn Fn() -> usize>>()) });
        std::ptr::null()
    })
}

/// The idiomatic ownership hand-over: a boxed closure holding `Arc`s goes to
/// C with `Box::into_raw`, C keeps it in its own (tracked) memory, and later
/// gives it back to a destructor that frees it. Nothing is wrong.
#[test]
fn a_boxed_closure_handed_to_c_with_a_destructor_is_clean() {
    let shared = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(7));
    let also = std::sync::Arc::new(String::from("captured"));
    let closure: Box<dyn Fn() -> usize> = {
        let (shared, also) = (shared.clone(), also.clone());
        Box::new(move || shared.load(std::sync::atomic::Ordering::Relaxed) + also.len())
    };
    let user = Box::into_raw(Box::new(closure)).cast::<c_void>();
    assert_clean(|| {
        // SAFETY: a two-slot C table; slot 0 keeps the user data until the
        // destructor runs, then is cleared; the table is freed last.
        unsafe {
            let table = call!(fx_table_new(2));
            call!(fx_table_put(table, 0, user));
            // C calls the closure through its user data.
            let f = &*user.cast::<Box<dyn Fn() -> usize>>();
            assert_eq!(f(), 15);
            call!(fx_call_producer(
                Some(destroy_closure as unsafe extern "C" fn(*mut c_void) -> *const c_void),
                user
            ));
            call!(fx_table_put(table, 0, std::ptr::null::<c_void>()));
            call!(fx_table_free(table));
        }
    });
    assert_eq!(
        std::sync::Arc::strong_count(&shared),
        1,
        "the destructor ran"
    );
    assert_eq!(std::sync::Arc::strong_count(&also), 1);
}

#[test]
fn the_hand_overs_are_clean_in_mode_2_too() {
    const NAME: &str = "the_hand_overs_are_clean_in_mode_2_too";
    if !common::is_child(NAME) {
        common::child_passes(NAME, &[("FFI_CHECK", "2")]);
        return;
    }
    assert_eq!(ffi_check::mode(), ffi_check::Mode::Full);
    a_boxed_closure_handed_to_c_with_a_destructor_is_clean();
    writev_of_plain_vec_buffers_is_clean_from_the_heap_and_from_the_stack();
    an_array_of_pointers_to_plain_heap_blocks_lent_for_one_call_is_clean();
}

#[test]
fn dropping_a_pinned_heap_block_is_freed_while_pinned() {
    let (_, v) = capture(|| {
        let s = CString::new("pinned").unwrap();
        let mut pinner = Pinner::new();
        pinner.pin_ptr(s.as_ptr());
        drop(s);
        pinner.unpin();
    });
    assert_report(
        only(&v),
        ViolationKind::FreedWhilePinned,
        "managed memory dropped while a Pinner still pins it",
    );
}

#[test]
fn a_plain_heap_block_c_retains_is_reported_when_freed_while_retained() {
    let s = CString::new("kept").unwrap();
    let p = s.as_ptr();
    // C says it keeps the pointer: harmless while the block lives.
    let ((), v) = capture(|| ffi_check::retain(p));
    assert!(v.is_empty(), "{v:?}");
    // Freed while C still holds it: Rust's hazard.
    let ((), v) = capture(|| drop(s));
    assert_report(
        only(&v),
        ViolationKind::FreedWhileRetained,
        "managed memory freed while C still holds a pointer to it",
    );
    ffi_check::release(p);
    // Released before the drop: clean.
    let t = CString::new("kept and let go").unwrap();
    assert_clean(|| {
        ffi_check::retain(t.as_ptr());
        ffi_check::release(t.as_ptr());
        drop(t);
    });
}

#[test]
fn strict_retaining_an_unpinned_heap_block_is_retained_and_pinned_is_fine() {
    let s = CString::new("kept").unwrap();
    let (_, v) = ffi_check::strictly(true, || capture(|| ffi_check::retain(s.as_ptr())));
    assert_report(
        only(&v),
        ViolationKind::Retained,
        "C keeps a pointer to unpinned managed memory",
    );
    ffi_check::release(s.as_ptr());
    let t = CString::new("kept too").unwrap();
    ffi_check::strictly(true, || {
        assert_clean(|| {
            let mut pinner = Pinner::new();
            pinner.pin_ptr(t.as_ptr());
            ffi_check::retain(t.as_ptr());
            ffi_check::release(t.as_ptr());
            pinner.unpin();
        })
    });
}

unsafe extern "C" fn produce_boxed(_user: *mut c_void) -> *const c_void {
    ffi_check::callback!({ Box::into_raw(Box::new(5u32)).cast::<c_void>().cast_const() })
}

fn call_producer() -> *const c_void {
    // SAFETY: fx_call_producer calls produce_boxed and returns its result.
    unsafe {
        call!(fx_call_producer(
            Some(produce_boxed as unsafe extern "C" fn(*mut c_void) -> *const c_void),
            std::ptr::null_mut()
        ))
    }
}

#[test]
fn a_callback_handing_a_boxed_value_to_c_is_clean() {
    let p = assert_clean(call_producer);
    // SAFETY: p is the Box<u32> produce_boxed handed over.
    drop(unsafe { Box::from_raw(p.cast::<u32>().cast_mut()) });
}

#[test]
fn strict_a_callback_returning_an_unpinned_heap_block_is_reported() {
    let (p, v) = ffi_check::strictly(true, || capture(call_producer));
    assert_report(
        only(&v),
        ViolationKind::CallbackReturnedUnpinned,
        "result of callback `produce_boxed` is unpinned managed pointer",
    );
    // SAFETY: p is the Box<u32> produce_boxed leaked.
    drop(unsafe { Box::from_raw(p.cast::<u32>().cast_mut()) });
}

// ---- cross-domain frees --------------------------------------------------------

#[test]
fn c_free_of_a_cstring_into_raw_is_invalid_free_naming_both_sides() {
    let p = CString::new("rust").unwrap().into_raw();
    let (_, v) = capture(|| {
        // SAFETY: deliberately frees Rust memory with C's free; the checker
        // refuses and leaves it alone.
        unsafe { c_free(p.cast()) }
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InvalidFree,
        "C free of managed memory (`free`)",
    );
    let text = v.to_string();
    assert!(
        text.contains("allocated by Rust's allocator, freed with `free` (C)"),
        "{text}"
    );
    assert_eq!(v.regions()[0].kind(), RegionKind::Managed);
    // The block is intact: Rust takes it back and frees it.
    // SAFETY: p came from CString::into_raw and was not freed.
    let back = unsafe { CString::from_raw(p) };
    assert_eq!(back.to_str(), Ok("rust"));
}

#[test]
fn c_code_freeing_rust_memory_through_the_c_api_is_invalid_free() {
    let p = Box::into_raw(Box::new([7u8; 32]));
    let (_, v) = capture(|| {
        // SAFETY: fx_free_it calls ffi_check_free, which refuses Rust memory.
        unsafe { call!(fx_free_it(p.cast::<c_void>())) }
    });
    let v = only(&v);
    assert_report(v, ViolationKind::InvalidFree, "C free of managed memory");
    // SAFETY: p came from Box::into_raw and was not freed.
    drop(unsafe { Box::from_raw(p) });
}

#[test]
fn box_from_raw_of_malloc_memory_is_invalid_free_naming_both_sides() {
    let p = c_malloc(16).cast::<[u8; 16]>();
    let (_, v) = capture(|| {
        // SAFETY: deliberately hands malloc memory to Rust's allocator; the
        // checker refuses to free it.
        drop(unsafe { Box::from_raw(p) });
    });
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InvalidFree,
        "Rust's allocator asked to free memory it did not allocate",
    );
    let text = v.to_string();
    assert!(
        text.contains("allocated by C (`malloc`), freed by Rust's allocator"),
        "{text}"
    );
    assert_eq!(v.regions()[0].kind(), RegionKind::C);
    // SAFETY: the block is still C's: C frees it.
    unsafe { c_free(p.cast()) };
}

#[test]
fn cstring_from_raw_of_a_c_string_is_invalid_free() {
    let name = CString::new("c side").unwrap();
    // SAFETY: fx_greet returns a malloc'd string.
    let greeting = unsafe { call!(fx_greet(name.as_ptr())) };
    let (_, v) = capture(|| {
        // SAFETY: deliberately gives C memory to Rust's allocator.
        drop(unsafe { CString::from_raw(greeting) });
    });
    assert_report(
        only(&v),
        ViolationKind::InvalidFree,
        "Rust's allocator asked to free memory it did not allocate",
    );
    // SAFETY: the string is still C's.
    unsafe { c_free(greeting.cast()) };
}

#[test]
fn box_from_raw_twice_is_double_free() {
    let p = Box::into_raw(Box::new(11u64));
    let (_, v) = capture(|| {
        // SAFETY: the first take-back is right; the second is the mistake,
        // refused by the checker.
        unsafe {
            drop(Box::from_raw(p));
            drop(Box::from_raw(p));
        }
    });
    assert_report(
        only(&v),
        ViolationKind::DoubleFree,
        "double free of a Rust heap block",
    );
}

// ---- leaks -------------------------------------------------------------------

#[test]
fn a_block_handed_to_c_with_into_raw_shows_in_the_leak_report() {
    let _slot = common::slot();
    let p = CString::new("handed over").unwrap().into_raw();
    // SAFETY: C keeps the pointer; Rust never takes it back in this test.
    unsafe { call!(fx_keep_silently(p.cast::<c_void>())) };
    let line = line!() - 1;
    let report = leak_report();
    let h = report
        .handed_to_c()
        .iter()
        .find(|h| h.addr == p as usize)
        .expect("the handed-over block is listed");
    assert_eq!(h.size, 12);
    assert_eq!(h.callee, "fx_keep_silently");
    assert_rust_site(h.site, file!(), line);
    assert!(report.to_string().contains("passed to `fx_keep_silently`"));
    // SAFETY: C forgets it; Rust takes it back.
    unsafe {
        call!(fx_forget_silently());
        drop(CString::from_raw(p));
    }
    assert!(leak_report()
        .handed_to_c()
        .iter()
        .all(|h| h.addr != p as usize));
}

#[test]
fn a_block_lent_again_after_its_memory_came_back_is_listed_once() {
    let _slot = common::slot();
    // Lent to C as `*mut`, then taken back and freed.
    let first = Box::into_raw(Box::new([7u8; 40]));
    // SAFETY: C keeps the pointer until it forgets it below.
    unsafe { call!(fx_keep_silently(first.cast::<c_void>())) };
    // SAFETY: C forgets it; Rust takes it back and frees it.
    unsafe {
        call!(fx_forget_silently());
        drop(Box::from_raw(first));
    }
    // Blocks of its layout made and freed until one is handed its memory
    // (from the thread's quarantine once it has waited its turn).
    let again = (0..50_000)
        .find_map(|_| {
            let b = Box::new([0u8; 40]);
            std::ptr::eq(&*b, first).then(|| Box::into_raw(b))
        })
        .expect("the memory comes back to an allocation of its layout");
    // SAFETY: as above.
    unsafe { call!(fx_keep_silently(again.cast::<c_void>())) };
    let listed = leak_report()
        .handed_to_c()
        .iter()
        .filter(|h| h.addr == again as usize)
        .count();
    // SAFETY: as above.
    unsafe {
        call!(fx_forget_silently());
        drop(Box::from_raw(again));
    }
    if ffi_check::mode() != ffi_check::Mode::Off {
        assert_eq!(listed, 1, "the block is listed once, for its latest loan");
    }
}

/// Lends a fresh 24-byte heap block to C as `*mut` and hands it over
/// (`Box::into_raw`); returns its address.
fn lend_a_fresh_block() -> usize {
    let p = Box::into_raw(Box::new([0u8; 24]));
    // SAFETY: 24 writable bytes, lent for the call.
    unsafe { call!(fx_fill(p.cast::<u8>(), 24, 1)) };
    p as usize
}

#[test]
fn blocks_lent_on_other_threads_show_in_the_leak_report() {
    // A thread that is still alive with a few loans (not yet in the shared
    // list), and one that lent more than a thread keeps aside and ended.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let alive = std::thread::spawn(move || {
        let few: Vec<usize> = (0..3).map(|_| lend_a_fresh_block()).collect();
        ready_tx.send(few).unwrap();
        done_rx.recv().unwrap();
    });
    let ended = std::thread::spawn(|| (0..100).map(|_| lend_a_fresh_block()).collect::<Vec<_>>())
        .join()
        .unwrap();
    let few = ready_rx.recv().unwrap();
    let report = leak_report();
    let listed: HashMap<usize, &str> = report
        .handed_to_c()
        .iter()
        .map(|h| (h.addr, h.callee))
        .collect();
    done_tx.send(()).unwrap();
    alive.join().unwrap();
    if ffi_check::mode() != ffi_check::Mode::Off {
        for p in few.iter().chain(&ended) {
            assert_eq!(listed.get(p), Some(&"fx_fill"), "{p:#x} is listed");
        }
    }
    for p in few.into_iter().chain(ended) {
        // SAFETY: each came from `Box::into_raw` of a `[u8; 24]`; C kept
        // none of them.
        drop(unsafe { Box::from_raw(p as *mut [u8; 24]) });
    }
}

// ---- ordinary Rust code is silent -----------------------------------------------

#[test]
fn ordinary_rust_code_reports_nothing() {
    assert_clean(|| {
        let mut map = HashMap::new();
        let mut tree = BTreeMap::new();
        let mut text = String::new();
        for i in 0..5_000u32 {
            map.insert(format!("key {i}"), vec![i; (i % 17) as usize]);
            tree.insert(i, i.to_string());
            text.push_str(&format!("{i:x}"));
            if i % 3 == 0 {
                map.remove(&format!("key {}", i / 2));
            }
        }
        let handles: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut v: Vec<String> = Vec::new();
                    for i in 0..2_000 {
                        v.push(format!("{t}-{i}"));
                        if v.len() > 64 {
                            v.drain(..32);
                        }
                    }
                    v.len()
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap() > 0);
        }
        // CString round trips done right: lent for a call, handed over and
        // taken back.
        for i in 0..1_000 {
            let s = CString::new(format!("round trip {i}")).unwrap();
            // SAFETY: s lives through the call.
            let n = unsafe { call!(fx_strlen(s.as_ptr())) };
            assert_eq!(n, s.as_bytes().len());
            let raw = s.into_raw();
            // SAFETY: raw is a valid C string until it is taken back.
            let m = unsafe { call!(fx_strlen(raw)) };
            assert_eq!(m, n);
            // SAFETY: raw came from into_raw, taken back once.
            let back = unsafe { CString::from_raw(raw) };
            assert_eq!(back.as_bytes().len(), n);
        }
        let mut buf = vec![0u8; 4096];
        // SAFETY: buf is lent for the call.
        unsafe { call!(fx_fill(buf.as_mut_ptr(), buf.len(), 9)) };
        assert!(buf.iter().all(|b| *b == 9));
        let c: &CStr = c"static";
        // SAFETY: a static C string.
        assert_eq!(unsafe { call!(fx_strlen(c.as_ptr())) }, 6);
        assert!(map.len() > 1000 && tree.len() == 5000 && !text.is_empty());
    });
    // (A violation on a spawned thread would have panicked it, failing
    // its join.)
}

// ---- any thread, before main, during exit ---------------------------------------

/// Work done on a thread the Rust runtime knows nothing of.
extern "C" fn c_thread_body(arg: *mut c_void) -> *mut c_void {
    let mut total = 0usize;
    for i in 0..500 {
        let s = CString::new(format!("from a C thread {i}")).unwrap();
        // SAFETY: s lives through the call.
        total += unsafe { call!(fx_strlen(s.as_ptr())) };
        let v: Vec<u64> = (0..i).collect();
        total += v.len();
    }
    // SAFETY: arg is the &mut usize the creator passed, alive until join.
    unsafe { *arg.cast::<usize>() = total };
    std::ptr::null_mut()
}

#[test]
fn a_thread_created_by_c_allocates_and_calls_cleanly() {
    let mut total = 0usize;
    let mut tid: libc::pthread_t = 0;
    // SAFETY: the thread writes `total` and is joined before it goes away.
    let rc = unsafe {
        libc::pthread_create(
            &mut tid,
            std::ptr::null(),
            c_thread_body,
            (&mut total as *mut usize).cast(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: tid is the thread just created, joined once.
    assert_eq!(unsafe { libc::pthread_join(tid, std::ptr::null_mut()) }, 0);
    assert!(total > 500 * 17);
}

static BEFORE_MAIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Allocates and frees before `main`, and registers an exit handler that
/// does the same while the process ends.
#[used]
#[link_section = ".init_array"]
static ALLOCATE_BEFORE_MAIN: extern "C" fn() = {
    extern "C" fn before_main() {
        let v: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let s = CString::new(v.concat()).unwrap();
        BEFORE_MAIN.store(s.as_bytes().len(), std::sync::atomic::Ordering::Relaxed);
        extern "C" fn at_exit() {
            let v: Vec<Box<u64>> = (0..100).map(Box::new).collect();
            drop(v);
        }
        // SAFETY: registers a plain extern "C" fn.
        unsafe { libc::atexit(at_exit) };
    }
    before_main
};

#[test]
fn allocation_before_main_worked() {
    assert_eq!(BEFORE_MAIN.load(std::sync::atomic::Ordering::Relaxed), 190);
}

#[test]
fn threads_freeing_each_others_blocks_stay_clean() {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel::<Vec<CString>>();
    let consumer = std::thread::Builder::new()
        .name("consumer".into())
        .spawn(move || {
            assert_clean(|| {
                let mut n = 0usize;
                for batch in rx {
                    for s in &batch {
                        // SAFETY: s lives through the call.
                        n += unsafe { call!(fx_strlen(s.as_ptr())) };
                    }
                    // Blocks allocated by the producers, freed here.
                    drop(batch);
                }
                n
            })
        })
        .unwrap();
    let producers: Vec<_> = (0..3)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                assert_clean(|| {
                    for round in 0..200 {
                        let batch: Vec<CString> = (0..20)
                            .map(|i| CString::new(format!("{t}:{round}:{i}")).unwrap())
                            .collect();
                        tx.send(batch).unwrap();
                    }
                })
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    assert!(consumer.join().unwrap() > 3 * 200 * 20 * 5);
}

/// Mode 2: a plain `Vec` buffer that C keeps in its own memory after the
/// call is remembered, and dropping it while C still points to it is
/// `FreedWhileRetained`, naming the call; emptied first, the drop is clean.
#[test]
fn mode_2_a_buffer_c_keeps_and_rust_then_drops_is_freed_while_retained() {
    const NAME: &str = "mode_2_a_buffer_c_keeps_and_rust_then_drops_is_freed_while_retained";
    if !common::is_child(NAME) {
        common::child_passes(NAME, &[("FFI_CHECK", "2")]);
        return;
    }
    // SAFETY: a two-slot C table, emptied and freed below.
    let table = unsafe { call!(fx_table_new(2)) };
    let kept = vec![7u8; 32];
    let (_, v) = capture(|| {
        // SAFETY: slot 0 is inside the table.
        unsafe { call!(fx_table_put(table, 0, kept.as_ptr().cast::<c_void>())) };
    });
    assert!(
        v.is_empty(),
        "keeping a plain buffer is no violation: {v:?}"
    );
    let (_, v) = capture(|| drop(kept));
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::FreedWhileRetained,
        "managed memory freed while C still holds a pointer to it",
    );
    let text = v.to_string();
    eprintln!("{text}");
    assert!(text.contains("found by the mode-2 scan"), "{text}");
    assert!(text.contains(file!()), "the report names the call: {text}");
    // Emptied before the drop: clean.
    let let_go = vec![9u8; 32];
    assert_clean(|| {
        // SAFETY: slot 1 is inside the table; emptied before the drop.
        unsafe {
            call!(fx_table_put(table, 1, let_go.as_ptr().cast::<c_void>()));
            call!(fx_table_put(table, 1, std::ptr::null::<c_void>()));
        }
        drop(let_go);
    });
    // SAFETY: empties slot 0 (its buffer was kept, leaked) and frees the table.
    unsafe {
        call!(fx_table_put(table, 0, std::ptr::null::<c_void>()));
        call!(fx_table_free(table));
    }
}
