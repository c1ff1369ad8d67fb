//! Pointer maps: a type's own statement of where its pointers are, so that
//! lending it to C (rule P1) reads only those words.
//!
//! Go's typed check reads a type's pointer bitmap, which the compiler
//! writes; Rust has none at run time, so without a declaration ffi-check
//! reads every aligned word of what is lent (the conservative scan of
//! [`scan`](crate::scan)). A type that implements [`PointerMap`] says which
//! words may hold a pointer: `call!` then asks the registry about those
//! words alone, and a type whose map is empty (a struct of integers) is not
//! read at all. The map is a constant of the type, so for a type with no
//! pointers the check vanishes at compile time.
//!
//! The derive, `#[derive(PointerMap)]` in the `ffi-check-derive` crate,
//! writes the map from the fields' maps and their offsets, and refuses a
//! field whose type has none. Types without a map keep the conservative
//! scan: an undeclared map is never a reason to check less.
//!
//! The floor below `scan`: this module only describes layouts (the maps,
//! and [`PointerFree`], the declaration of a type without pointers); the
//! scan that reads the words lives in `scan`, which uses it.

use std::mem::size_of;

const WORD: usize = size_of::<usize>();

/// The most pointer words a map lists one by one; beyond that it keeps the
/// span from the first to the last of them, every word of which is scanned.
const LISTED: usize = 8;

/// Declares that a type holds no pointers, so lending it to C never scans
/// it (Go's typed check gets this from the type's pointer bitmap).
///
/// Types with alignment below a pointer's (`[u8]`, `[u16]`, `[u32]`, `str`)
/// are never scanned anyway; this trait is for 8-byte-aligned plain data
/// such as `[u64]` or `[f64]`, through
/// [`Managed::pointer_free`](crate::Managed::pointer_free).
///
/// # Safety
/// No value of the type holds an address that C could use to reach managed
/// memory. (An integer that happens to equal an address is harmless: the
/// promise is about meaning, and only affects what is checked.)
///
/// ```
/// use ffi_check::{Managed, PointerFree};
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Sample { t: f64, v: f64 }
/// // SAFETY: two floats, no pointers.
/// unsafe impl PointerFree for Sample {}
/// let samples = Managed::from_vec(vec![Sample { t: 0.0, v: 1.0 }; 1024]).pointer_free();
/// assert_eq!(samples.len(), 1024);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not declared pointer-free (`ffi_check::PointerFree`)",
    label = "may hold a pointer",
    note = "derive `PointerFree` (crate `ffi-check-derive`) for a type of numbers, or `PointerMap` for one with pointers"
)]
pub unsafe trait PointerFree {}

/// The numbers, `bool`, `char` and `()`: pointer-free, and with an empty
/// map that is used only as a field's (see [`PointerMap::LENT_BY_MAP`]).
macro_rules! pointer_free {
    ($($t:ty),*) => { $(
        // SAFETY: a number, a bool or a char holds no address C could follow.
        unsafe impl PointerFree for $t {}
        // SAFETY: as above.
        unsafe impl PointerMap for $t {
            const POINTERS: PointerWords = PointerWords::NONE;
            const LENT_BY_MAP: bool = false;
        }
    )* };
}
pointer_free!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    bool,
    char,
    ()
);
// SAFETY: text holds no addresses.
unsafe impl PointerFree for str {}
// SAFETY: a sequence of pointer-free elements holds no addresses.
unsafe impl<T: PointerFree> PointerFree for [T] {}
// SAFETY: as for slices.
unsafe impl<T: PointerFree, const N: usize> PointerFree for [T; N] {}

/// Where the pointers of a value are: the byte offsets of the words that
/// may hold one, or, for a type with many, a span of words that covers them
/// all. Built at compile time by [`PointerMap`] implementations.
///
/// ```
/// use ffi_check::PointerWords;
/// let map = PointerWords::NONE.field(8, PointerWords::WORD).field(24, PointerWords::WORD);
/// assert_eq!(map.offsets(), Some(&[8, 24][..]));
/// assert!(PointerWords::NONE.is_empty());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointerWords {
    /// Byte offsets of the listed words (the first `listed` entries).
    offsets: [u32; LISTED],
    listed: u8,
    /// When the words did not fit in the list: `[from, to)` in bytes, every
    /// word of which may hold a pointer (`to == 0`: no span).
    from: u32,
    to: u32,
}

impl PointerWords {
    /// No pointers: a value of the type is never read when lent.
    pub const NONE: PointerWords = PointerWords {
        offsets: [0; LISTED],
        listed: 0,
        from: 0,
        to: 0,
    };

    /// One pointer, the word at offset 0 (a raw pointer, a reference).
    pub const WORD: PointerWords = PointerWords::NONE.with_word(0);

    /// Every word of the first `size` bytes may hold a pointer: what the
    /// conservative scan assumes of a type it knows nothing about.
    pub const fn everywhere(size: usize) -> PointerWords {
        let words = size / WORD;
        if words == 0 {
            return PointerWords::NONE;
        }
        PointerWords::NONE.with_span(0, (words * WORD) as u32)
    }

    /// True when the type holds no pointers.
    pub const fn is_empty(&self) -> bool {
        self.listed == 0 && self.to == 0
    }

    /// The listed offsets, or `None` when the map is a span.
    pub fn offsets(&self) -> Option<&[u32]> {
        if self.to != 0 {
            return None;
        }
        Some(&self.offsets[..self.listed as usize])
    }

    /// The span `[from, to)` in bytes every word of which is scanned, when
    /// the map has more words than it lists.
    pub fn span(&self) -> Option<(usize, usize)> {
        (self.to != 0).then_some((self.from as usize, self.to as usize))
    }

    /// This map with the map of a field at byte `offset` added (what the
    /// derive writes, one call per field).
    pub const fn field(self, offset: usize, inner: PointerWords) -> PointerWords {
        let mut out = self;
        if inner.to != 0 {
            return out.with_span(offset as u32 + inner.from, offset as u32 + inner.to);
        }
        let mut i = 0;
        while i < inner.listed as usize {
            out = out.with_word(offset as u32 + inner.offsets[i]);
            i += 1;
        }
        out
    }

    /// The map of `count` values of a type with map `inner`, `stride` bytes
    /// apart (an array).
    pub const fn repeat(inner: PointerWords, stride: usize, count: usize) -> PointerWords {
        let mut out = PointerWords::NONE;
        if inner.is_empty() || count == 0 {
            return out;
        }
        let words = if inner.to != 0 {
            LISTED + 1
        } else {
            inner.listed as usize * count
        };
        if words > LISTED {
            // The span from the first word of the first value to the end of
            // the last word of the last one.
            let (lo, hi) = inner.bounds();
            return out.with_span(lo, ((count - 1) * stride) as u32 + hi);
        }
        let mut k = 0;
        while k < count {
            out = out.field(k * stride, inner);
            k += 1;
        }
        out
    }

    /// The first byte of the first word and the end of the last one.
    const fn bounds(&self) -> (u32, u32) {
        if self.to != 0 {
            return (self.from, self.to);
        }
        let mut lo = u32::MAX;
        let mut hi = 0;
        let mut i = 0;
        while i < self.listed as usize {
            let at = self.offsets[i];
            if at < lo {
                lo = at;
            }
            if at + WORD as u32 > hi {
                hi = at + WORD as u32;
            }
            i += 1;
        }
        (lo, hi)
    }

    const fn with_word(self, at: u32) -> PointerWords {
        let mut out = self;
        if out.to != 0 {
            return out.with_span(at, at + WORD as u32);
        }
        if (out.listed as usize) < LISTED {
            out.offsets[out.listed as usize] = at;
            out.listed += 1;
            return out;
        }
        out.with_span(at, at + WORD as u32)
    }

    /// This map turned into (or widened as) a span that also covers
    /// `[from, to)`.
    const fn with_span(self, from: u32, to: u32) -> PointerWords {
        let (mut lo, mut hi) = (from, to);
        if !self.is_empty() {
            let (a, b) = self.bounds();
            if a < lo {
                lo = a;
            }
            if b > hi {
                hi = b;
            }
        }
        PointerWords {
            offsets: [0; LISTED],
            listed: 0,
            from: lo,
            to: hi,
        }
    }
}

/// Declares where a type's pointers are, so that lending it to C reads only
/// those words (rule P1), as Go reads a type's pointer bitmap. A type whose
/// map is [`PointerWords::NONE`] is never read when lent.
///
/// Derive it with `#[derive(PointerMap)]` from the `ffi-check-derive`
/// crate, which builds the map from the fields (each field's type must
/// implement `PointerMap`). Implemented here for numbers, `bool`, `char`,
/// raw pointers, references, `NonNull`, function pointers, arrays and tuples
/// of such types, and the `libc` structures FFI code lends (`iovec`,
/// `timespec`, `timeval`, `pollfd`, `tm`, `msghdr`, `sockaddr*`, `stat`).
/// A type without a map keeps the conservative scan of every word.
///
/// `call!` uses the map when it lends a `&T`, a `&mut T`, a
/// [`Managed<T>`](crate::Managed) or a [`Pinned<T>`](crate::Pinned) (and
/// `Managed<[T]>`, element by element).
///
/// # Safety
/// Every word of a value of the type that can hold an address C could use
/// to reach managed memory is covered by the map. Listing a word that holds
/// none only costs a look-up.
///
/// ```
/// use ffi_check::{PointerMap, PointerWords};
/// #[repr(C)]
/// struct View { data: *const u8, len: usize }
/// // SAFETY: `data` is the one pointer; `len` is a number.
/// unsafe impl PointerMap for View {
///     const POINTERS: PointerWords =
///         PointerWords::NONE.field(std::mem::offset_of!(View, data), <*const u8 as PointerMap>::POINTERS);
/// }
/// assert_eq!(View::POINTERS.offsets(), Some(&[0][..]));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not declare where its pointers are (`ffi_check::PointerMap`)",
    label = "no pointer map",
    note = "derive `PointerMap` (crate `ffi-check-derive`) for it, or implement `ffi_check::PointerMap` by hand; a field that must stay undeclared cannot be in a type with a pointer map"
)]
pub unsafe trait PointerMap: Sized {
    /// Where a value's pointers are.
    const POINTERS: PointerWords;
    /// Whether lending a value of this type *on its own* (not as a field of
    /// a declared type) uses the map. True for declared types; false for
    /// numbers and arrays of them, whose words may hold an address stored
    /// as a number (`ptr as usize`): lent bare, they keep the conservative
    /// scan unless declared ([`Managed::pointer_free`](crate::Managed::pointer_free)).
    /// As the field of a derived type, the field's declared type is the
    /// promise, and it is not read.
    const LENT_BY_MAP: bool = true;
}

// SAFETY: marks a type; holds nothing.
unsafe impl<T: ?Sized> PointerMap for std::marker::PhantomData<T> {
    const POINTERS: PointerWords = PointerWords::NONE;
}

/// A pointer to `T`: its first word is the address (a wide pointer's other
/// word, a length or a vtable, is scanned too: its layout is not promised).
const fn pointer<P>() -> PointerWords {
    if size_of::<P>() == WORD {
        PointerWords::WORD
    } else {
        PointerWords::everywhere(size_of::<P>())
    }
}

macro_rules! one_pointer {
    ($($t:ty),*) => { $(
        // SAFETY: the value is an address (a wide one is covered whole).
        unsafe impl<T: ?Sized> PointerMap for $t {
            const POINTERS: PointerWords = pointer::<$t>();
        }
    )* };
}
one_pointer!(
    *const T,
    *mut T,
    std::ptr::NonNull<T>,
    Option<std::ptr::NonNull<T>>
);
// SAFETY: a reference is an address (a wide one is covered whole).
unsafe impl<T: ?Sized> PointerMap for &T {
    const POINTERS: PointerWords = pointer::<&T>();
}
// SAFETY: as for `&T`.
unsafe impl<T: ?Sized> PointerMap for &mut T {
    const POINTERS: PointerWords = pointer::<&mut T>();
}
// SAFETY: `None` is the null address, `Some` a reference.
unsafe impl<T: ?Sized> PointerMap for Option<&T> {
    const POINTERS: PointerWords = pointer::<Option<&T>>();
}
// SAFETY: as for `Option<&T>`.
unsafe impl<T: ?Sized> PointerMap for Option<&mut T> {
    const POINTERS: PointerWords = pointer::<Option<&mut T>>();
}

macro_rules! fn_pointers {
    ($($a:ident),*) => {
        // SAFETY: a function's address is code, never managed memory.
        unsafe impl<Ret, $($a),*> PointerMap for extern "C" fn($($a),*) -> Ret {
            const POINTERS: PointerWords = PointerWords::NONE;
        }
        // SAFETY: as above.
        unsafe impl<Ret, $($a),*> PointerMap for unsafe extern "C" fn($($a),*) -> Ret {
            const POINTERS: PointerWords = PointerWords::NONE;
        }
        // SAFETY: null, or a function's address.
        unsafe impl<Ret, $($a),*> PointerMap for Option<extern "C" fn($($a),*) -> Ret> {
            const POINTERS: PointerWords = PointerWords::NONE;
        }
        // SAFETY: as above.
        unsafe impl<Ret, $($a),*> PointerMap for Option<unsafe extern "C" fn($($a),*) -> Ret> {
            const POINTERS: PointerWords = PointerWords::NONE;
        }
    };
}
fn_pointers!();
fn_pointers!(A);
fn_pointers!(A, B);
fn_pointers!(A, B, C);
fn_pointers!(A, B, C, D);
fn_pointers!(A, B, C, D, E);
fn_pointers!(A, B, C, D, E, F);

// SAFETY: `count` values of `T`, each covered by its own map.
unsafe impl<T: PointerMap, const N: usize> PointerMap for [T; N] {
    const POINTERS: PointerWords = PointerWords::repeat(T::POINTERS, size_of::<T>(), N);
    const LENT_BY_MAP: bool = T::LENT_BY_MAP;
}
// SAFETY: the value itself, whose map is `T`'s.
unsafe impl<T: PointerMap> PointerMap for std::mem::ManuallyDrop<T> {
    const POINTERS: PointerWords = T::POINTERS;
    const LENT_BY_MAP: bool = T::LENT_BY_MAP;
}
// SAFETY: as `T`: an uninitialised word is read as an integer, harmlessly.
unsafe impl<T: PointerMap> PointerMap for std::mem::MaybeUninit<T> {
    const POINTERS: PointerWords = T::POINTERS;
    const LENT_BY_MAP: bool = T::LENT_BY_MAP;
}

macro_rules! tuples {
    ($(($($t:ident . $i:tt),+))*) => { $(
        // SAFETY: each element covered by its own map at its own offset.
        unsafe impl<$($t: PointerMap),+> PointerMap for ($($t,)+) {
            const POINTERS: PointerWords = PointerWords::NONE
                $(.field(std::mem::offset_of!(Self, $i), $t::POINTERS))+;
            // A tuple of numbers lent bare is numbers.
            const LENT_BY_MAP: bool = true $(&& $t::LENT_BY_MAP)+;
        }
    )* };
}
tuples! {
    (A.0)
    (A.0, B.1)
    (A.0, B.1, C.2)
    (A.0, B.1, C.2, D.3)
    (A.0, B.1, C.2, D.3, E.4)
    (A.0, B.1, C.2, D.3, E.4, F.5)
    (A.0, B.1, C.2, D.3, E.4, F.5, G.6)
    (A.0, B.1, C.2, D.3, E.4, F.5, G.6, H.7)
}

/// The maps of `libc` structures: each lists its pointer fields by name.
macro_rules! libc_maps {
    ($($t:ident { $($p:ident),* })*) => { $(
        // SAFETY: the listed fields are the structure's only pointers.
        unsafe impl PointerMap for libc::$t {
            const POINTERS: PointerWords = PointerWords::NONE
                $(.field(std::mem::offset_of!(libc::$t, $p), PointerWords::WORD))*;
        }
    )* };
}
#[cfg(unix)]
libc_maps! {
    iovec { iov_base }
    timespec {}
    timeval {}
    pollfd {}
    sockaddr {}
    sockaddr_in {}
    sockaddr_in6 {}
    sockaddr_un {}
    sockaddr_storage {}
    stat {}
    msghdr { msg_name, msg_iov, msg_control }
}
#[cfg(any(target_os = "linux", target_os = "macos"))]
libc_maps! {
    tm { tm_zone }
}

/// What `call!` learns of an argument's pointers from its type: the map of
/// one value and, for a slice, the stride of its elements (0: one value).
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct LentMap {
    /// The map of one value (one element of a slice).
    pub map: &'static PointerWords,
    /// The elements' stride for a slice, or 0 for one value.
    pub stride: usize,
}

// ---- choosing the map at the `call!` site ----------------------------------------
//
// `call!` asks `(&&&Probe::of(&arg)).lent_map()`. Method resolution tries the
// receiver `&&&Probe` first, then one dereference at a time, so the traits
// implemented for `&&Probe<A>` (a map the type declares) win over those for
// `&Probe<A>` (a `PointerFree` declaration: an empty map), which win over
// the fallback for any `Probe<A>` (no map: the conservative scan). The
// choice is made at compile time, for the concrete argument type.

/// The type of one `call!` argument, for the choice of its map.
#[doc(hidden)]
pub struct Probe<A>(std::marker::PhantomData<fn() -> A>);

impl<A> Probe<A> {
    /// The probe of `arg`'s type.
    #[inline(always)]
    pub fn of(_arg: &A) -> Probe<A> {
        Probe(std::marker::PhantomData)
    }
}

/// The map of a `T`, as a static.
struct MapOf<T>(std::marker::PhantomData<T>);
impl<T: PointerMap> MapOf<T> {
    const MAP: &'static PointerWords = &T::POINTERS;
}

/// The map `call!` uses for a `T` lent on its own.
const fn own<T: PointerMap>() -> Option<LentMap> {
    if T::LENT_BY_MAP {
        Some(LentMap {
            map: MapOf::<T>::MAP,
            stride: 0,
        })
    } else {
        None
    }
}

/// The empty map, for the `PointerFree` tier.
static EMPTY: PointerWords = PointerWords::NONE;

/// The wrappers `call!` lends the contents of.
#[doc(hidden)]
pub trait Wrapper {
    /// What it holds.
    type Inner: ?Sized;
}

/// The map `call!` uses for a value of the type (`None`: the conservative
/// scan), as a static, so that the choice costs a call one word.
#[doc(hidden)]
pub trait Lent {
    /// The map by value.
    const VALUE: Option<LentMap>;
    /// The same, in static memory.
    const LENT: Option<&'static LentMap> = match &Self::VALUE {
        Some(lent) => Some(lent),
        None => None,
    };
}

/// The map of a `T` lent on its own.
#[doc(hidden)]
pub struct Own<T>(std::marker::PhantomData<T>);
impl<T: PointerMap> Lent for Own<T> {
    const VALUE: Option<LentMap> = own::<T>();
}

/// The map of what a wrapper holds: a declared `T`, or a slice of them.
#[doc(hidden)]
pub trait ContentsMap {
    /// The map, and the stride for a slice (`None`: numbers lent bare).
    const VALUE: Option<LentMap>;
}
impl<T: PointerMap> ContentsMap for T {
    const VALUE: Option<LentMap> = own::<T>();
}
impl<T: PointerMap> ContentsMap for [T] {
    const VALUE: Option<LentMap> = match own::<T>() {
        Some(lent) => Some(LentMap {
            map: lent.map,
            stride: size_of::<T>(),
        }),
        None => None,
    };
}

/// The contents map of a wrapper.
#[doc(hidden)]
pub struct Contents<T: ?Sized>(std::marker::PhantomData<T>);
impl<T: ?Sized + ContentsMap> Lent for Contents<T> {
    const VALUE: Option<LentMap> = T::VALUE;
}

/// An empty map (a `PointerFree` declaration).
#[doc(hidden)]
pub struct Free;
impl Lent for Free {
    const VALUE: Option<LentMap> = Some(LentMap {
        map: &EMPTY,
        stride: 0,
    });
}

macro_rules! probe_tier {
    ($tr:ident, $lent:ty, for $for:ty where $($bound:tt)*) => {
        #[doc(hidden)]
        pub trait $tr {
            /// The argument's map.
            fn lent_map(&self) -> Option<&'static LentMap>;
        }
        impl<'a, T: ?Sized> $tr for $for where $($bound)* {
            #[inline(always)]
            fn lent_map(&self) -> Option<&'static LentMap> {
                <$lent as Lent>::LENT
            }
        }
    };
}

// The first tier: a declared map of a `&T`, a `&mut T`, or of the contents
// of a `&Managed<T>`, `&Pinned<T>` (`T` or `[T]`).
probe_tier!(MapRef, Own<T>, for &&Probe<&'a T> where T: PointerMap);
probe_tier!(MapMut, Own<T>, for &&Probe<&'a mut T> where T: PointerMap);
probe_tier!(MapWrapped, Contents<T::Inner>,
    for &&Probe<&'a T> where T: Wrapper, T::Inner: ContentsMap);
probe_tier!(MapWrappedMut, Contents<T::Inner>,
    for &&Probe<&'a mut T> where T: Wrapper, T::Inner: ContentsMap);
// The second: a `PointerFree` declaration, an empty map.
probe_tier!(FreeRef, Free, for &Probe<&'a T> where T: PointerFree);
probe_tier!(FreeMut, Free, for &Probe<&'a mut T> where T: PointerFree);
probe_tier!(FreeWrapped, Free,
    for &Probe<&'a T> where T: Wrapper, T::Inner: PointerFree);
probe_tier!(FreeWrappedMut, Free,
    for &Probe<&'a mut T> where T: Wrapper, T::Inner: PointerFree);

/// The fallback: no map, the conservative scan.
#[doc(hidden)]
pub trait NoMap {
    /// No map.
    fn lent_map(&self) -> Option<&'static LentMap>;
}
impl<A> NoMap for Probe<A> {
    #[inline(always)]
    fn lent_map(&self) -> Option<&'static LentMap> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct Mixed {
        n: u64,
        p: *const u8,
        f: f64,
        q: [*const u8; 2],
    }
    // SAFETY: p and q are the pointers.
    unsafe impl PointerMap for Mixed {
        const POINTERS: PointerWords = PointerWords::NONE
            .field(std::mem::offset_of!(Mixed, n), u64::POINTERS)
            .field(std::mem::offset_of!(Mixed, p), <*const u8>::POINTERS)
            .field(std::mem::offset_of!(Mixed, f), f64::POINTERS)
            .field(std::mem::offset_of!(Mixed, q), <[*const u8; 2]>::POINTERS);
    }

    #[test]
    fn maps_list_the_pointer_words() {
        assert_eq!(Mixed::POINTERS.offsets(), Some(&[8, 24, 32][..]));
        assert!(<[u64; 100]>::POINTERS.is_empty());
        assert!(<(u8, u32, f64)>::POINTERS.is_empty());
        assert_eq!(<(u64, &u8)>::POINTERS.offsets(), Some(&[8][..]));
        assert_eq!(<*const [u8]>::POINTERS.span(), Some((0, 16)));
        // A long array of pointers becomes a span over them all.
        assert_eq!(<[*const u8; 100]>::POINTERS.span(), Some((0, 800)));
        assert_eq!(<[Mixed; 3]>::POINTERS.span(), Some((8, 2 * 40 + 40)));
        assert_eq!(libc::iovec::POINTERS.offsets(), Some(&[0][..]));
        assert!(libc::timespec::POINTERS.is_empty());
    }
}
