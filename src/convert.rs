//! Explicit, lossless conversions at the boundary: numbers (rule X1) and
//! strings and buffers (rule X2).
//!
//! C's integer types are narrower or differently signed than the Rust types
//! values come from (`usize` lengths into `c_int`), and C strings carry no
//! length. Every crossing goes through a named function here that either
//! returns the exact value or reports what would have been lost.

use std::ffi::CStr;
use std::fmt::Display;
use std::os::raw::c_char;

use crate::mode::checks_on;
use crate::registry::{self, RegionState};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::site::Site;

/// A number that converts to `U` exactly when it fits (X1).
///
/// Implemented between every pair of Rust integer types (which covers every
/// C integer alias: `c_int`, `c_long`, `size_t` = `usize`, …) and between
/// `f32` and `f64`.
pub trait ToC<U>: Copy + Display {
    /// The exact value as `U`, or `None` when it does not fit.
    fn exact(self) -> Option<U>;
    /// The value as an `as` cast would give it (what C would have seen).
    fn truncated(self) -> U;
    /// What [`to_c`] returns once it has reported that the value does not
    /// fit and the report did not panic (inside [`capture`](crate::capture),
    /// or with [`Action::Log`](crate::Action::Log)): the least harmful value.
    /// For integers that is zero, so a length or count that did not fit
    /// makes C do nothing rather than read or write past a buffer (the `as`
    /// value of `-1` as a `c_uint` length is four billion); for floats it is
    /// the nearest value. By default, the `as` value.
    fn on_loss(self) -> U {
        self.truncated()
    }
}

macro_rules! int_to_c {
    ($($from:ty),*) => { $( int_to_c!(@one $from; u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize); )* };
    (@one $from:ty; $($to:ty),*) => { $(
        impl ToC<$to> for $from {
            #[inline]
            fn exact(self) -> Option<$to> { <$to>::try_from(self).ok() }
            #[inline]
            fn truncated(self) -> $to { self as $to }
            #[inline]
            fn on_loss(self) -> $to { 0 }
        }
    )* };
}
int_to_c!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

impl ToC<f32> for f64 {
    fn exact(self) -> Option<f32> {
        let f = self as f32;
        (f64::from(f) == self || self.is_nan()).then_some(f)
    }
    fn truncated(self) -> f32 {
        self as f32
    }
}
impl ToC<f64> for f32 {
    fn exact(self) -> Option<f64> {
        Some(f64::from(self))
    }
    fn truncated(self) -> f64 {
        f64::from(self)
    }
}
impl ToC<f64> for f64 {
    fn exact(self) -> Option<f64> {
        Some(self)
    }
    fn truncated(self) -> f64 {
        self
    }
}
impl ToC<f32> for f32 {
    fn exact(self) -> Option<f32> {
        Some(self)
    }
    fn truncated(self) -> f32 {
        self
    }
}

#[cold]
fn lossy<T: Display, U>(value: T, site: Site) -> Violation {
    Violation::new(
        ViolationKind::LossyConversion,
        format!(
            "value {value} of type `{}` {} `{}`",
            short_type::<T>(),
            msg::LOSSY,
            short_type::<U>()
        ),
    )
    .with_site(Some(site))
}

fn short_type<T>() -> &'static str {
    let t = std::any::type_name::<T>();
    t.rsplit("::").next().unwrap_or(t)
}

/// Converts a Rust number into the C type the context asks for, reporting
/// `LossyConversion` (X1) when the value does not fit. When the violation
/// does not panic (`capture`, `Action::Log`), the least harmful value is
/// returned ([`ToC::on_loss`]): zero for integers, the nearest value for
/// floats. With the checks off or compiled out, it is the `as` cast.
///
/// ```
/// use std::os::raw::{c_int, c_uint};
/// let len: usize = 42;
/// let n: c_int = ffi_check::to_c(len);
/// assert_eq!(n, 42);
///
/// let (_, v) = ffi_check::capture(|| { let _: c_uint = ffi_check::to_c(-1i32); });
/// # if ffi_check::COMPILED_IN {
/// assert_eq!(v[0].kind(), ffi_check::ViolationKind::LossyConversion);
/// # }
/// ```
#[track_caller]
#[inline]
pub fn to_c<T: ToC<U>, U>(value: T) -> U {
    match value.exact() {
        Some(v) => v,
        None => {
            if checks_on() {
                emit(lossy::<T, U>(value, Site::caller()));
                return value.on_loss();
            }
            value.truncated()
        }
    }
}

/// Like [`to_c`], returning the violation instead of reporting it.
///
/// ```
/// use std::os::raw::c_short;
/// let r: Result<c_short, _> = ffi_check::try_to_c(70_000u32);
/// assert!(r.is_err());
/// ```
#[track_caller]
pub fn try_to_c<T: ToC<U>, U>(value: T) -> Result<U, Violation> {
    value
        .exact()
        .ok_or_else(|| lossy::<T, U>(value, Site::caller()))
}

/// The length of the C string at `ptr`, bounded by its tracked region when
/// it has one. `None` (after a report) when there is no NUL within the
/// region or the region is freed.
///
/// # Safety
/// `ptr` is non-null and, when not inside a tracked region, points to a
/// NUL-terminated string.
#[track_caller]
pub(crate) unsafe fn c_strlen(ptr: *const c_char, site: Option<Site>) -> Option<usize> {
    let region = if checks_on() {
        registry::lookup(ptr as usize)
    } else {
        None
    };
    match region {
        Some(r) if r.state == RegionState::Freed => {
            emit(
                Violation::new(
                    ViolationKind::UseAfterFree,
                    format!("C string {}", msg::USE_AFTER_FREE_ARG),
                )
                .with_site(site)
                .region_at("freed region", r.start),
            );
            None
        }
        Some(r) => {
            let avail = r.start.saturating_add(r.size) - ptr as usize;
            // SAFETY: the tracked region is live and `avail` bytes long from ptr.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), avail) };
            match bytes.iter().position(|b| *b == 0) {
                Some(n) => Some(n),
                None => {
                    emit(
                        Violation::new(
                            ViolationKind::UnterminatedString,
                            msg::UNTERMINATED.to_owned(),
                        )
                        .note(format!(
                            "no NUL in the {avail} bytes from the pointer to the region's end"
                        ))
                        .with_site(site)
                        .region_at("C string region", r.start),
                    );
                    None
                }
            }
        }
        // SAFETY: the caller promises a NUL-terminated string.
        None => Some(unsafe { CStr::from_ptr(ptr) }.to_bytes().len()),
    }
}

#[cold]
#[track_caller]
fn null_string(site: Site) {
    emit(
        Violation::new(ViolationKind::NullPointer, msg::NULL_STRING.to_owned())
            .with_site(Some(site)),
    );
}

/// The bytes of the C string at `ptr` (without its NUL), checked: NULL is
/// `NullPointer`, no NUL within the tracked region is `UnterminatedString`,
/// a pointer into freed memory is `UseAfterFree`. After a reported
/// violation that does not panic, the result is empty.
///
/// # Safety
/// `ptr` is null or points to a NUL-terminated string (or into a tracked
/// region) that outlives `'a`.
#[track_caller]
pub unsafe fn bytes_from_c<'a>(ptr: *const c_char) -> &'a [u8] {
    let site = Site::caller();
    if ptr.is_null() {
        if checks_on() {
            null_string(site);
        }
        return &[];
    }
    // SAFETY: forwarded contract.
    match unsafe { c_strlen(ptr, Some(site)) } {
        // SAFETY: `len` bytes before the NUL are readable for 'a.
        Some(len) => unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) },
        None => &[],
    }
}

/// Reads a C string as `&str`, checked as [`bytes_from_c`] and for UTF-8
/// (`InvalidUtf8`). After a reported violation that does not panic, the
/// result is the longest valid prefix.
///
/// # Safety
/// As [`bytes_from_c`].
///
/// ```
/// let s = ffi_check::CBox::from_str("hi");
/// // SAFETY: s is a live, NUL-terminated C string.
/// assert_eq!(unsafe { ffi_check::str_from_c(s.as_ptr()) }, "hi");
/// ```
#[track_caller]
pub unsafe fn str_from_c<'a>(ptr: *const c_char) -> &'a str {
    let site = Site::caller();
    // SAFETY: forwarded contract.
    let bytes = unsafe { bytes_from_c(ptr) };
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            if checks_on() {
                invalid_utf8(ptr, e.valid_up_to(), site);
            }
            std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default()
        }
    }
}

#[cold]
#[track_caller]
fn invalid_utf8(ptr: *const c_char, at: usize, site: Site) {
    let mut v = Violation::new(ViolationKind::InvalidUtf8, msg::INVALID_UTF8.to_owned())
        .note(format!("invalid byte at offset {at}"))
        .with_site(Some(site));
    if let Some(r) = registry::lookup(ptr as usize) {
        v = v.region_at("C string region", r.start);
    }
    emit(v);
}

/// Copies a C string into a `String`, checked as [`str_from_c`]. After an
/// `InvalidUtf8` that does not panic, invalid bytes become U+FFFD.
///
/// # Safety
/// As [`bytes_from_c`].
///
/// ```
/// let s = ffi_check::CBox::from_str("owned");
/// // SAFETY: s is a live, NUL-terminated C string.
/// assert_eq!(unsafe { ffi_check::string_from_c(s.as_ptr()) }, "owned");
/// ```
#[track_caller]
pub unsafe fn string_from_c(ptr: *const c_char) -> String {
    let site = Site::caller();
    // SAFETY: forwarded contract.
    let bytes = unsafe { bytes_from_c(ptr) };
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) => {
            if checks_on() {
                invalid_utf8(ptr, e.valid_up_to(), site);
            }
            String::from_utf8_lossy(bytes).into_owned()
        }
    }
}

/// Turns a `(pointer, length)` pair from C into a slice: `(NULL, 0)` is the
/// empty slice (C's usual way to say "nothing"); `(NULL, n > 0)` is
/// `NullPointer`, and gives the empty slice when it does not panic.
///
/// A length that reaches past the tracked C region the pointer lies in is
/// `OutOfBounds`, and the slice is cut to the elements inside the region; a
/// length no slice can have (more than `isize::MAX` bytes) is `OutOfBounds`
/// too, and gives the empty slice. Memory the checker has no record of is
/// taken at its word (see the crate's limits).
///
/// # Safety
/// When `ptr` is non-null it points to `len` initialised `T` that outlive
/// `'a` and are not written meanwhile.
///
/// ```
/// // SAFETY: (NULL, 0) is always valid.
/// let empty: &[u8] = unsafe { ffi_check::slice_from_c(std::ptr::null(), 0) };
/// assert!(empty.is_empty());
/// ```
#[track_caller]
pub unsafe fn slice_from_c<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() {
        if len > 0 && checks_on() {
            emit(
                Violation::new(ViolationKind::NullPointer, msg::NULL_SLICE.to_owned())
                    .note(format!("length {len}"))
                    .with_site(Some(Site::caller())),
            );
        }
        return &[];
    }
    let elem = std::mem::size_of::<T>();
    let Some(bytes) = len.checked_mul(elem).filter(|b| *b <= isize::MAX as usize) else {
        // No slice can be this long: `from_raw_parts` would abort.
        if checks_on() {
            emit(
                Violation::new(ViolationKind::OutOfBounds, msg::SLICE_TOO_LONG.to_owned())
                    .note(format!(
                        "length {len} of `{}` ({elem} bytes each) is more than `isize::MAX` bytes",
                        std::any::type_name::<T>()
                    ))
                    .note("the empty slice is returned".into())
                    .with_site(Some(Site::caller())),
            );
        }
        return &[];
    };
    let mut len = len;
    if checks_on() {
        if let Some(r) = registry::lookup(ptr as usize) {
            if r.state == RegionState::Freed {
                emit(
                    Violation::new(
                        ViolationKind::UseAfterFree,
                        format!("buffer from C {}", msg::USE_AFTER_FREE_ARG),
                    )
                    .with_site(Some(Site::caller()))
                    .region_at("freed region", r.start),
                );
                return &[];
            }
            let room = r.start + r.size - ptr as usize;
            if bytes > room && elem > 0 {
                len = room / elem;
                emit(
                    Violation::new(ViolationKind::OutOfBounds, msg::SLICE_PAST_REGION.to_owned())
                        .note(format!(
                            "{bytes} bytes asked for at offset {} of a {}-byte region; {} element(s) fit",
                            ptr as usize - r.start,
                            r.size,
                            len
                        ))
                        .note(format!("the slice is cut to the {len} element(s) inside the region"))
                        .with_site(Some(Site::caller()))
                        .region_at("region", r.start),
                );
            }
        }
    }
    // SAFETY: forwarded contract; `len` elements are no more bytes than
    // `isize::MAX` (checked above) and, for a tracked region, lie inside it.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}
