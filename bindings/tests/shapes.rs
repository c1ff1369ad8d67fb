//! The generator's output for the awkward shapes of
//! `bindings/output/src/shapes_raw.rs`, compiled and called: arguments that
//! `call!` takes and those that go through `unchecked` reach the function
//! intact, and a pointer into freed memory is reported at this file's line.

use std::os::raw::{c_int, c_void};

use ffi_check::{capture, ViolationKind};
use ffi_check_bindgen_output::generated::{SHAPES_SKIPPED, SHAPES_UNCHECKED, SHAPES_WRAPPED};
use ffi_check_bindgen_output::shapes::{self, ShapeColor, ShapePoint, ShapeWord};

#[global_allocator]
static ALLOC: ffi_check::TrackingAllocator = ffi_check::TrackingAllocator::new();

#[test]
fn the_report_lists_what_was_wrapped_skipped_and_unchecked() {
    assert_eq!(SHAPES_WRAPPED.len(), 16, "{SHAPES_WRAPPED:?}");
    assert_eq!(
        SHAPES_SKIPPED,
        [
            "`shape_counter`: a static, not a function",
            "`printf`: variadic (`call!` takes a fixed list of arguments)"
        ]
    );
    let unchecked: Vec<&str> = SHAPES_UNCHECKED
        .iter()
        .map(|u| u.split(':').next().unwrap())
        .collect();
    assert_eq!(
        unchecked,
        [
            "`shape_norm1(p)`",
            "`shape_word(w)`",
            "`shape_color(c)`",
            "`shape_apply7(f)`",
            "`shape_x(p)`"
        ]
    );
}

extern "C" fn double(x: c_int) -> c_int {
    2 * x
}

extern "C" fn add7(a: c_int, b: c_int, c: c_int, d: c_int, e: c_int, f: c_int, g: c_int) -> c_int {
    a + b + c + d + e + f + g
}

unsafe extern "C" fn count_until_three(user: *mut c_void, item: c_int) -> c_int {
    // SAFETY: the user data is the `Vec<c_int>` the test passed.
    unsafe { (*user.cast::<Vec<c_int>>()).push(item) };
    c_int::from(item == 3)
}

#[test]
fn every_shape_of_argument_arrives() {
    let items = [1, 2, 3, 4];
    let ((), violations) = capture(|| {
        // SAFETY: each call passes what its function reads, live for the
        // call.
        unsafe {
            assert_eq!(shapes::shape_sum(items.as_ptr(), items.len()), 10);
            assert_eq!(shapes::shape_total(items.as_ptr(), 2), 3);
            #[allow(deprecated)]
            let old = shapes::shape_old_sum(items.as_ptr(), 3);
            assert_eq!(old, 6);
            assert_eq!(shapes::shape_sub(5, 3), 2);
            assert_eq!(shapes::shape_norm1(ShapePoint { x: 3, y: -4 }), 7);
            assert_eq!(
                shapes::shape_word(ShapeWord {
                    bytes: 7u32.to_ne_bytes()
                }),
                7
            );
            assert_eq!(shapes::shape_color(ShapeColor::Green), 2);
            let mut seen: Vec<c_int> = Vec::new();
            let user = (&mut seen as *mut Vec<c_int>).cast::<c_void>();
            assert_eq!(
                shapes::shape_each(items.as_ptr(), 4, Some(count_until_three), user),
                3
            );
            assert_eq!(seen, [1, 2, 3]);
            assert_eq!(shapes::shape_each(items.as_ptr(), 4, None, user), 0);
            assert_eq!(shapes::shape_apply(double, 21), 42);
            assert_eq!(shapes::shape_apply7(add7), 28);
            assert_eq!(shapes::shape_scale(1.25, 2.0, false), 2.5);
            assert_eq!(shapes::shape_scale(1.25, 2.0, true), 3.0);
            assert_eq!(shapes::shape_x(&ShapePoint { x: 9, y: 0 }), 9);
            assert_eq!(shapes::shape_strlen(c"four".as_ptr()), 4);
            assert_eq!(shapes::shape_os(), c_int::from(cfg!(target_os = "linux")));
            shapes::shape_set(5);
            assert_eq!(
                std::ptr::read_volatile(std::ptr::addr_of!(shapes::shape_counter)),
                5
            );
        }
    });
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_pointer_into_freed_memory_is_reported_at_the_calling_line() {
    if !ffi_check::COMPILED_IN {
        return;
    }
    let items: Vec<c_int> = vec![1, 2, 3];
    let p = items.as_ptr();
    drop(items);
    let line = line!() + 4;
    let (_, v) = capture(|| {
        // SAFETY: none: `p` dangles (the block waits in the tracking
        // allocator's quarantine), which is the mistake under test.
        unsafe { shapes::shape_sum(p, 3) }
    });
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].kind(), ViolationKind::UseAfterFree);
    assert_eq!(v[0].callee(), Some("shape_sum"));
    assert_eq!(
        v[0].message(),
        "argument 1 of `shape_sum` is a pointer into freed memory"
    );
    let site = v[0].call_site().expect("a site");
    assert_eq!((site.file(), site.line()), (file!(), line));
}
