//! Rules X1, X2 and X3: values cross the boundary only through explicit,
//! lossless conversions.
//!
//! X1 (`LossyConversion`): a number goes to C through `to_c`, which reports
//! a value the C type cannot hold. X2 (`InteriorNul`, `NullPointer`,
//! `UnterminatedString`, `InvalidUtf8`): strings go to C without interior
//! NULs, and come back from a non-null pointer, NUL-terminated within their
//! tracked region, as UTF-8 where a `str` is asked for. X3: the wrappers
//! never turn into raw pointers by themselves.

// Without the checks compiled in there is nothing to observe.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_long, c_uint};

use common::fixtures;
use common::{assert_report, only};
use ffi_check::{
    assert_clean, c_free, call, capture, slice_from_c, str_from_c, string_from_c, to_c, try_to_c,
    CBox, Managed, Pinned, ViolationKind,
};

// ---- X1: LossyConversion -----------------------------------------------------

#[test]
fn usize_too_big_for_c_int_is_lossy() {
    let len = c_int::MAX as usize + 1;
    let (n, v): (c_int, _) = capture(|| to_c(len));
    let v = only(&v);
    assert_report(v, ViolationKind::LossyConversion, "does not fit in");
    assert_eq!(v.rule(), "X1");
    let first = v.first_line();
    assert!(first.contains("2147483648"), "{first}");
    assert!(first.contains("`usize`"), "{first}");
    assert!(first.contains("`i32`"), "{first}");
    // Not panicking, it gives the least harmful value: zero, so a length
    // that did not fit makes C do nothing (the `as` value would be negative).
    assert_eq!(n, 0);
}

#[test]
fn negative_i32_into_c_uint_is_lossy() {
    let (n, v): (c_uint, _) = capture(|| to_c(-1i32));
    let v = only(&v);
    assert_report(v, ViolationKind::LossyConversion, "does not fit in");
    let first = v.first_line();
    assert!(
        first.contains("value -1 of type `i32` does not fit in `u32`"),
        "{first}"
    );
    // Zero, not the `as` value (`u32::MAX`, a four-billion length).
    assert_eq!(n, 0);
}

#[test]
fn f64_that_is_not_an_f32_is_lossy() {
    let (x, v): (f32, _) = capture(|| to_c(0.1f64));
    let v = only(&v);
    assert_report(v, ViolationKind::LossyConversion, "does not fit in");
    let first = v.first_line();
    assert!(first.contains("0.1"), "{first}");
    assert!(
        first.contains("`f64`") && first.contains("`f32`"),
        "{first}"
    );
    assert_eq!(x, 0.1f32);
}

#[test]
fn try_to_c_returns_the_violation_without_reporting_it() {
    let (r, v) = capture(|| try_to_c::<usize, c_int>(usize::MAX));
    assert!(v.is_empty(), "try_to_c reported: {v:?}");
    let e = r.expect_err("usize::MAX does not fit in c_int");
    assert_report(&e, ViolationKind::LossyConversion, "does not fit in");
    assert!(e.first_line().contains(&usize::MAX.to_string()));

    let (r, v) = capture(|| try_to_c::<i64, c_uint>(-5));
    assert!(v.is_empty());
    assert_eq!(r.map_err(|e| e.kind()), Err(ViolationKind::LossyConversion));
}

#[test]
fn values_that_fit_pass_silently() {
    assert_clean(|| {
        let max: c_int = to_c(c_int::MAX as usize);
        assert_eq!(max, c_int::MAX);
        let min: c_int = to_c(i64::from(c_int::MIN));
        assert_eq!(min, c_int::MIN);
        let zero: c_uint = to_c(0i32);
        assert_eq!(zero, 0);
        let top: c_uint = to_c(u32::MAX as u64);
        assert_eq!(top, u32::MAX);
        let long: c_long = to_c(-7i8);
        assert_eq!(long, -7);
        let half: f32 = to_c(0.5f64);
        assert_eq!(half, 0.5);
        let wide: f64 = to_c(0.1f32);
        assert_eq!(wide, f64::from(0.1f32));
        assert!(to_c::<f64, f32>(f64::NAN).is_nan());
    });
}

#[test]
fn the_boundary_is_exact() {
    assert_eq!(
        try_to_c::<usize, c_int>(c_int::MAX as usize).ok(),
        Some(c_int::MAX)
    );
    assert!(try_to_c::<usize, c_int>(c_int::MAX as usize + 1).is_err());
    assert!(try_to_c::<i64, c_int>(i64::from(c_int::MIN)).is_ok());
    assert!(try_to_c::<i64, c_int>(i64::from(c_int::MIN) - 1).is_err());
    assert!(try_to_c::<i32, c_uint>(0).is_ok());
    assert!(try_to_c::<i32, c_uint>(-1).is_err());
}

// ---- X2: InteriorNul --------------------------------------------------------

#[test]
fn interior_nul_going_to_c_is_reported_and_cut() {
    let (s, v) = capture(|| CBox::from_str("a\0b"));
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::InteriorNul,
        "string for C has an interior NUL byte",
    );
    assert_eq!(v.rule(), "X2");
    assert!(v.to_string().contains("NUL at byte 1 of 3"), "{v}");
    // What C would read: the string ends at the NUL.
    assert_eq!(s.to_bytes(), b"a");
}

#[test]
fn try_from_str_returns_the_violation_without_reporting_it() {
    let (r, v) = capture(|| CBox::try_from_str("a\0b"));
    assert!(v.is_empty(), "try_from_str reported: {v:?}");
    let e = r.expect_err("an interior NUL");
    assert_report(
        &e,
        ViolationKind::InteriorNul,
        "string for C has an interior NUL byte",
    );
}

// ---- X2: NullPointer --------------------------------------------------------

#[test]
fn str_from_c_of_null_is_reported() {
    // SAFETY: null is checked before any read.
    let (s, v) = capture(|| unsafe { str_from_c(std::ptr::null()) });
    assert_eq!(s, "");
    assert_report(
        only(&v),
        ViolationKind::NullPointer,
        "NULL pointer where a C string was expected",
    );
}

#[test]
fn string_from_c_of_null_is_reported() {
    // SAFETY: null is checked before any read.
    let (s, v) = capture(|| unsafe { string_from_c(std::ptr::null()) });
    assert_eq!(s, "");
    assert_report(
        only(&v),
        ViolationKind::NullPointer,
        "NULL pointer where a C string was expected",
    );
}

#[test]
fn slice_from_c_of_null_with_a_length_is_reported() {
    // SAFETY: null is checked before any read.
    let (s, v) = capture(|| unsafe { slice_from_c::<u32>(std::ptr::null(), 3) });
    assert!(s.is_empty());
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::NullPointer,
        "NULL pointer with a non-zero length",
    );
    assert!(v.to_string().contains("length 3"), "{v}");
}

#[test]
fn slice_from_c_of_null_and_zero_is_the_empty_slice() {
    assert_clean(|| {
        // SAFETY: (NULL, 0) is C's empty buffer.
        let s: &[u8] = unsafe { slice_from_c(std::ptr::null(), 0) };
        assert!(s.is_empty());
    });
}

// ---- X2: UnterminatedString -------------------------------------------------

/// `fx_unterminated`'s 4 bytes "abcd" with no NUL, tracked as C memory.
fn unterminated() -> *mut c_char {
    let mut len = 0usize;
    // SAFETY: len is a valid out-pointer.
    let p = unsafe { call!(fixtures::fx_unterminated(&mut len as *mut usize)) };
    assert_eq!(len, 4);
    assert!(!p.is_null());
    p
}

#[test]
fn reading_an_unterminated_string_is_reported() {
    let p = unterminated();
    // SAFETY: the region is tracked; the read stops at its end.
    let (s, v) = capture(|| unsafe { str_from_c(p) });
    assert_eq!(s, "");
    let v = only(&v);
    assert_report(
        v,
        ViolationKind::UnterminatedString,
        "C string has no NUL terminator within its region",
    );
    let r = &v.regions()[0];
    assert_eq!(r.addr(), p as usize);
    assert_eq!(r.size(), 4);
    assert!(r.alloc_site().is_some_and(|s| s.is_c()), "{v}");
    // SAFETY: p came from ffi_check_malloc and is freed once.
    unsafe { c_free(p.cast()) };
}

#[test]
fn adopting_an_unterminated_string_is_reported_and_refused() {
    let p = unterminated();
    // SAFETY: the region is tracked; the length search stops at its end.
    let (b, v) = capture(|| unsafe { CBox::from_raw_cstr(p) });
    assert!(b.is_none());
    assert_report(
        only(&v),
        ViolationKind::UnterminatedString,
        "C string has no NUL terminator within its region",
    );
    // SAFETY: not adopted, so still ours to free, once.
    unsafe { c_free(p.cast()) };
}

// ---- X2: InvalidUtf8 --------------------------------------------------------

#[test]
fn str_from_c_of_invalid_utf8_gives_the_valid_prefix() {
    // SAFETY: fx_bad_utf8 returns a fresh NUL-terminated string.
    let p = unsafe { call!(fixtures::fx_bad_utf8()) };
    // SAFETY: p is a live NUL-terminated string.
    let (s, v) = capture(|| unsafe { str_from_c(p) });
    assert_eq!(s, "f");
    let v = only(&v);
    assert_report(v, ViolationKind::InvalidUtf8, "C string is not valid UTF-8");
    assert!(v.to_string().contains("invalid byte at offset 1"), "{v}");
    // SAFETY: p came from ffi_check_malloc and is freed once.
    unsafe { c_free(p.cast()) };
}

#[test]
fn string_from_c_of_invalid_utf8_is_lossy() {
    // SAFETY: fx_bad_utf8 returns a fresh NUL-terminated string.
    let p = unsafe { call!(fixtures::fx_bad_utf8()) };
    // SAFETY: p is a live NUL-terminated string.
    let (s, v) = capture(|| unsafe { string_from_c(p) });
    assert_eq!(s, "f\u{FFFD}\u{FFFD}");
    assert_report(
        only(&v),
        ViolationKind::InvalidUtf8,
        "C string is not valid UTF-8",
    );
    // SAFETY: p came from ffi_check_malloc and is freed once.
    unsafe { c_free(p.cast()) };
}

// ---- X2: correct patterns -----------------------------------------------------

#[test]
fn static_and_owned_c_strings_read_fine() {
    assert_clean(|| {
        // SAFETY: fx_version returns a static NUL-terminated string.
        let version = unsafe { str_from_c(call!(fixtures::fx_version())) };
        assert_eq!(version, "fixtures 1.0");

        // SAFETY: fx_greet returns a fresh malloc'd string the caller owns.
        let greeting =
            unsafe { CBox::from_raw_cstr(call!(fixtures::fx_greet(c"world"))).expect("non-null") };
        // SAFETY: the string lives as long as `greeting`.
        assert_eq!(unsafe { str_from_c(greeting.as_ptr()) }, "hello, world");
        // SAFETY: as above.
        assert_eq!(unsafe { string_from_c(greeting.as_ptr()) }, "hello, world");
    });
}

#[test]
fn strings_built_for_c_have_the_right_length() {
    assert_clean(|| {
        let owned = CString::new("twelve bytes").expect("no NUL");
        // SAFETY: fx_strlen reads a NUL-terminated string.
        assert_eq!(unsafe { call!(fixtures::fx_strlen(&owned)) }, 12);
        let boxed = CBox::from_str("héllo");
        // SAFETY: as above; "é" is two bytes.
        assert_eq!(unsafe { call!(fixtures::fx_strlen(&boxed)) }, 6);
        // SAFETY: as above.
        assert_eq!(unsafe { call!(fixtures::fx_strlen(c"")) }, 0);
    });
}

// ---- X3: no implicit raw pointers ---------------------------------------------

/// Answers "does `T` implement the bound?" at compile time: the inherent
/// constant exists only when the bound holds, and wins over the trait's.
struct Probe<T: ?Sized>(std::marker::PhantomData<T>);
trait Fallback {
    const INTO_CONST_PTR: bool = false;
    const INTO_MUT_PTR: bool = false;
}
impl<T: ?Sized> Fallback for Probe<T> {}
impl<T: Into<*const u8>> Probe<T> {
    const INTO_CONST_PTR: bool = true;
}
impl<T: Into<*mut u8>> Probe<T> {
    const INTO_MUT_PTR: bool = true;
}

/// A type that does convert into raw pointers, to show the probe sees it.
struct Leaky;
impl From<Leaky> for *const u8 {
    fn from(_: Leaky) -> *const u8 {
        std::ptr::null()
    }
}
impl From<Leaky> for *mut u8 {
    fn from(_: Leaky) -> *mut u8 {
        std::ptr::null_mut()
    }
}

#[test]
fn x3_wrappers_only_give_pointers_through_named_methods() {
    // X3 is a compile-time rule: `let p: *const u8 = managed;` does not
    // compile, because no wrapper converts into a raw pointer (`From`/`Into`)
    // and none derefs to one (`Deref` gives the value). The probe proves the
    // first at compile time; the second is in the types (`*managed` below is
    // a `u8`).
    const { assert!(!Probe::<Managed<u8>>::INTO_CONST_PTR) };
    const { assert!(!Probe::<Managed<u8>>::INTO_MUT_PTR) };
    const { assert!(!Probe::<Pinned<u8>>::INTO_CONST_PTR) };
    const { assert!(!Probe::<Pinned<u8>>::INTO_MUT_PTR) };
    const { assert!(!Probe::<CBox<u8>>::INTO_CONST_PTR) };
    const { assert!(!Probe::<CBox<u8>>::INTO_MUT_PTR) };
    // The probe does see a conversion that exists.
    const { assert!(Probe::<Leaky>::INTO_CONST_PTR && Probe::<Leaky>::INTO_MUT_PTR) };
    let _: *const u8 = Leaky.into();

    assert_clean(|| {
        // The named ways: `as_ptr`, `as_mut_ptr`, `into_raw`.
        let mut managed = Managed::new(7u8);
        let value: u8 = *managed;
        assert_eq!(value, 7);
        assert_eq!(managed.as_ptr() as usize, managed.addr());
        assert_eq!(managed.as_mut_ptr() as usize, managed.addr());

        let boxed = CBox::new(9u8);
        assert_eq!(boxed.as_ptr() as usize, boxed.addr());
        let raw: *mut u8 = boxed.into_raw();
        // SAFETY: raw is the malloc'd block the box gave up; read and freed
        // once.
        unsafe {
            assert_eq!(*raw, 9);
            c_free(raw.cast());
        }

        // And the `call!` argument conversion, which lends by reference.
        let buf = Managed::from_vec(vec![1u8, 2, 3]);
        // SAFETY: fx_checksum reads the 3 lent bytes.
        let sum = unsafe { call!(fixtures::fx_checksum(&buf, buf.len())) };
        assert_eq!(sum, 6);
    });
}
