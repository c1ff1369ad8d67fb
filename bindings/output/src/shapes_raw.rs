//! Hand-written declarations with the shapes a bindings file has, for the
//! generator: unnamed parameters, alias chains, callbacks, structs, unions
//! and enums by value, references, function pointers `call!` has no
//! conversion for, `cfg`, `deprecated`, `link_name`, a variadic function and
//! a static. The functions are defined in Rust (`shapes_c.rs`), standing in
//! for a C library.

use std::os::raw::{c_char, c_int, c_void};

/// A point, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapePoint {
    pub x: c_int,
    pub y: c_int,
}

/// Four bytes or a number, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub union ShapeWord {
    pub int: u32,
    pub bytes: [u8; 4],
}

/// A colour, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeColor {
    Red = 1,
    Green = 2,
}

/// `int (*)(void *user, int item)`, as bindgen writes a callback.
pub type ShapeVisit =
    ::std::option::Option<unsafe extern "C" fn(user: *mut c_void, item: c_int) -> c_int>;

/// A chain of aliases ending in `usize`.
pub type ShapeLen = usize;
pub type ShapeSize = ShapeLen;

/// A callback of seven parameters, not nullable: `call!` converts function
/// pointers of up to six.
pub type ShapeWide = extern "C" fn(c_int, c_int, c_int, c_int, c_int, c_int, c_int) -> c_int;

extern "C" {
    /// The sum of the `n` ints at `items`.
    pub fn shape_sum(items: *const c_int, n: ShapeSize) -> i64;
    /// `a - b`, declared without parameter names.
    pub fn shape_sub(_: c_int, _: c_int) -> c_int;
    /// `|x| + |y|`.
    pub fn shape_norm1(p: ShapePoint) -> c_int;
    /// The word as a number.
    pub fn shape_word(w: ShapeWord) -> u32;
    /// The colour's number.
    pub fn shape_color(c: ShapeColor) -> c_int;
    /// Calls `cb(user, items[i])` for each item, stopping when it returns
    /// nonzero; returns the number of calls.
    pub fn shape_each(items: *const c_int, n: usize, cb: ShapeVisit, user: *mut c_void) -> c_int;
    /// `f(x)`.
    pub fn shape_apply(f: extern "C" fn(c_int) -> c_int, x: c_int) -> c_int;
    /// `f(1, 2, 3, 4, 5, 6, 7)`.
    pub fn shape_apply7(f: ShapeWide) -> c_int;
    /// `x * by`, rounded when `round`.
    pub fn shape_scale(x: f64, by: f32, round: bool) -> f64;
    /// `p.x`, through a reference.
    pub fn shape_x(p: &ShapePoint) -> c_int;
    /// `strlen(s)`.
    pub fn shape_strlen(s: *const c_char) -> usize;
    /// The sum again, under another Rust name.
    #[link_name = "shape_sum"]
    pub fn shape_total(items: *const c_int, n: usize) -> i64;
    /// The old name of `shape_sum`.
    #[deprecated(note = "use shape_sum")]
    pub fn shape_old_sum(items: *const c_int, n: usize) -> i64;
    /// 1 on Linux.
    #[cfg(target_os = "linux")]
    pub fn shape_os() -> c_int;
    /// 0 elsewhere.
    #[cfg(not(target_os = "linux"))]
    pub fn shape_os() -> c_int;
    /// Sets the counter and returns nothing.
    pub fn shape_set(v: c_int);
    /// A static of the library.
    pub static shape_counter: c_int;
    /// Variadic: not wrapped.
    pub fn printf(format: *const c_char, ...) -> c_int;
}
