//! The functions `shapes_raw.rs` declares, defined in Rust as a C library
//! would define them (`#[no_mangle] extern "C"`).

use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::shapes_raw::{ShapePoint, ShapeVisit, ShapeWide, ShapeWord};

#[no_mangle]
unsafe extern "C" fn shape_sum(items: *const c_int, n: usize) -> i64 {
    // SAFETY: the caller passes n readable ints.
    unsafe { std::slice::from_raw_parts(items, n) }
        .iter()
        .map(|&i| i64::from(i))
        .sum()
}

#[no_mangle]
unsafe extern "C" fn shape_old_sum(items: *const c_int, n: usize) -> i64 {
    // SAFETY: as for shape_sum.
    unsafe { shape_sum(items, n) }
}

#[no_mangle]
extern "C" fn shape_sub(a: c_int, b: c_int) -> c_int {
    a - b
}

#[no_mangle]
extern "C" fn shape_norm1(p: ShapePoint) -> c_int {
    p.x.abs() + p.y.abs()
}

#[no_mangle]
extern "C" fn shape_word(w: ShapeWord) -> u32 {
    // SAFETY: every bit pattern of the union is a valid u32.
    unsafe { w.int }
}

/// Takes the colour as its number: C does not check an enum's value.
#[no_mangle]
extern "C" fn shape_color(c: c_int) -> c_int {
    c
}

#[no_mangle]
unsafe extern "C" fn shape_each(
    items: *const c_int,
    n: usize,
    cb: ShapeVisit,
    user: *mut c_void,
) -> c_int {
    let Some(cb) = cb else { return 0 };
    // SAFETY: the caller passes n readable ints.
    let items = unsafe { std::slice::from_raw_parts(items, n) };
    let mut calls = 0;
    for &item in items {
        calls += 1;
        // SAFETY: the callback takes back the user data it was given.
        if unsafe { cb(user, item) } != 0 {
            break;
        }
    }
    calls
}

#[no_mangle]
extern "C" fn shape_apply(f: extern "C" fn(c_int) -> c_int, x: c_int) -> c_int {
    f(x)
}

#[no_mangle]
extern "C" fn shape_apply7(f: ShapeWide) -> c_int {
    f(1, 2, 3, 4, 5, 6, 7)
}

#[no_mangle]
extern "C" fn shape_scale(x: f64, by: f32, round: bool) -> f64 {
    let v = x * f64::from(by);
    if round {
        v.round()
    } else {
        v
    }
}

#[no_mangle]
extern "C" fn shape_x(p: &ShapePoint) -> c_int {
    p.x
}

#[no_mangle]
unsafe extern "C" fn shape_strlen(s: *const c_char) -> usize {
    // SAFETY: the caller passes a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(s) }.to_bytes().len()
}

#[no_mangle]
extern "C" fn shape_os() -> c_int {
    c_int::from(cfg!(target_os = "linux"))
}

#[no_mangle]
static shape_counter: AtomicI32 = AtomicI32::new(0);

#[no_mangle]
extern "C" fn shape_set(v: c_int) {
    shape_counter.store(v, Ordering::Relaxed);
}
