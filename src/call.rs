//! The boundary: the state of one [`call!`](crate::call!), the [`CArg`]
//! conversion each argument goes through, and the callback side
//! ([`callback!`](crate::callback!), [`CReturn`]).
//!
//! Rule P1 (Go's first rule): Rust may lend C a pointer to managed memory for
//! the duration of a call only if that memory holds no pointer to unpinned
//! managed memory, because C may follow that nested pointer after Rust has
//! moved or freed what it points to. A pointer into an array lends the whole
//! allocation. Rule C2: no pointer into freed tracked memory crosses.
//! Rule P4: a callback may not hand C a pointer to unpinned managed memory.
//!
//! The fast path of every argument is inline and ends after one branch on a
//! flag read once per call; the checks themselves are out of line.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr::NonNull;

use crate::cbox::CBox;
use crate::frame::{self, callee_name, Frame};
use crate::managed::Managed;
use crate::mode::{checking_mode as mode_byte, checks_on, COMPILED_IN};
use crate::pin::Pinned;
use crate::pointer_map::LentMap;
use crate::registry::{self, flags, RegionKind, RegionState};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::scan::{find_unpinned, find_unpinned_mapped, may_hold_pointers};
use crate::site::Site;
use crate::stderr::write_stderr;
use std::mem::{align_of, size_of};

/// The mode `call!` runs its call in: 0 (unchecked), 1 or 2, from one
/// relaxed load. The checked path keeps it ([`Call::enter`]).
#[doc(hidden)]
#[inline(always)]
pub fn checking_mode() -> u8 {
    mode_byte()
}

/// The tag of [`Call::prev`] for a mode-2 outermost call (frames are
/// word-aligned: bit 0 of their address is free).
const SCANS: usize = 1;

/// One checked Rust→C call in progress: made by [`call!`](crate::call!),
/// not by hand. It names the call's [`Frame`] (the callee's name and the
/// call site, which the thread-local publishes during the call) and keeps
/// the argument counter for reports. The frame lives beside it, so that the
/// `Call` itself never has its address taken on the fast path and its
/// words stay in registers.
#[doc(hidden)]
pub struct Call<'f> {
    frame: &'f Frame,
    arg: u32,
    /// The frame this call hides (the thread's current call before it), as
    /// an address, with [`SCANS`] set for a mode-2 outermost call (C memory
    /// is scanned before and after it). One word, so that entering and
    /// leaving a call costs a load and a store each.
    prev: usize,
    /// The pointer map of the argument being lowered, when its type
    /// declares one (set by `call!` before each argument).
    map: Option<&'static LentMap>,
}

/// What the slow paths of one argument need: the call's frame and the
/// argument's number, by value (so the `Call` is not lent to them).
#[derive(Clone, Copy)]
struct At<'f> {
    frame: &'f Frame,
    arg: u32,
}

impl<'f> Call<'f> {
    /// Starts a call whose frame (callee, call site) is `frame`.
    #[inline(always)]
    pub fn new(frame: &'f Frame) -> Call<'f> {
        Call {
            frame,
            arg: 0,
            prev: 0,
            map: None,
        }
    }

    #[inline(always)]
    fn at(&self) -> At<'f> {
        At {
            frame: self.frame,
            arg: self.arg,
        }
    }

    /// Sets the pointer map of the next argument, whose type declares one
    /// (an argument without one leaves it unset, and lending it keeps the
    /// conservative scan). Every argument that gets a map is lent
    /// ([`lend`](Call::lend)), which consumes it.
    #[inline(always)]
    pub fn map_next(&mut self, map: &'static LentMap) {
        self.map = Some(map);
    }

    /// Makes this the thread's current call, until it drops. Called once the
    /// `Call` is in its final place, with the mode
    /// [`checking_mode`] gave.
    #[inline(always)]
    pub fn enter(&mut self, mode: u8) {
        let me: *const Frame = self.frame;
        // The thread's locals are never gone for this one (a constant
        // without a destructor): `None` is folded away. Were they gone,
        // `leave` would do nothing either.
        if let Some(prev) = frame::enter(me) {
            self.prev = prev as usize;
            // Mode 2 scans around the outermost call only: during it, C may
            // hold what the outer call lent it. (`call!` has read the mode:
            // it is initialised.)
            if prev.is_null() && mode == crate::mode::Mode::Full as u8 {
                self.prev |= SCANS;
                enter_scanned(self.frame);
            }
        }
    }

    /// Counts an argument that needs no check.
    #[inline(always)]
    #[track_caller]
    pub fn plain(&mut self) {
        self.arg += 1;
    }

    /// Lends `[addr, addr + size)` of managed memory: P1 scans it when its
    /// type can hold pointers.
    #[inline(always)]
    #[track_caller]
    pub fn lend(&mut self, addr: usize, size: usize, scan: bool) {
        self.arg += 1;
        match self.map.take() {
            // The type says where its pointers are: only those words are
            // read, and a type with none is not read at all (known at
            // compile time, so the branch vanishes).
            Some(lent) => {
                if !lent.map.is_empty() {
                    self.at().scan_mapped(addr, size, lent);
                }
            }
            None => {
                if scan {
                    self.at().scan_lent(addr, size);
                }
            }
        }
    }

    /// Passes a raw pointer: C2 when it points into freed memory, P1 on the
    /// whole allocation when it points into managed memory.
    #[inline(always)]
    #[track_caller]
    pub fn raw(&mut self, addr: usize) {
        self.arg += 1;
        if addr != 0 {
            self.at().check_raw_typed(addr, false, 0);
        }
    }

    /// Passes a raw `*mut` pointer: as [`raw`](Call::raw), and with the
    /// tracking allocator a heap block passed this way is remembered as
    /// possibly handed over to C (`Box::into_raw`), for the leak report.
    #[inline(always)]
    #[track_caller]
    pub fn raw_mut(&mut self, addr: usize) {
        self.arg += 1;
        if addr != 0 {
            self.at().check_raw_typed(addr, true, 0);
        }
    }

    /// As [`raw`](Call::raw), for a pointer to a `T` that can hold pointers
    /// (`pointee` is its size): a pointer into this thread's live stack (a
    /// struct passed as `&cfg as *const _`) or into a static of a loaded
    /// object is looked through by that type.
    #[inline(always)]
    #[track_caller]
    pub fn raw_typed(&mut self, addr: usize, mutable: bool, pointee: usize) {
        self.arg += 1;
        if addr != 0 {
            self.at().check_raw_typed(addr, mutable, pointee);
        }
    }
}

#[cold]
#[inline(never)]
fn enter_scanned(frame: &Frame) {
    crate::roots::before_call(frame.callee, frame.site);
}

impl At<'_> {
    #[inline(never)]
    #[track_caller]
    fn scan_lent(self, addr: usize, size: usize) {
        // SAFETY: the caller lends memory it owns and borrows for the call.
        if let Some((offset, target)) = unsafe { find_unpinned(addr, size) } {
            self.report_nested(addr, offset, target);
        }
    }

    #[inline(never)]
    #[track_caller]
    fn scan_mapped(self, addr: usize, size: usize, lent: &LentMap) {
        // SAFETY: the caller lends memory it owns and borrows for the call;
        // the map is its type's.
        let found = unsafe { find_unpinned_mapped(addr, size, lent.map, lent.stride) };
        if let Some((offset, target)) = found {
            self.report_nested(addr, offset, target);
        }
    }

    #[inline(never)]
    #[track_caller]
    fn check_raw_typed(self, addr: usize, mutable: bool, pointee: usize) {
        let Some(r) = registry::lookup(addr) else {
            if let Some(block) = crate::heap::block_at(addr) {
                if crate::mode::full() {
                    // Mode 2: a static found holding this block when the
                    // outermost call returns is C's keeping (`roots`).
                    frame::note_lent(block.start);
                }
                self.check_heap_block(block, mutable);
            } else if let Some(start) = freed_c_block(addr) {
                self.report_freed(addr, start);
            } else if pointee > 0 && crate::probe::on_live_stack(addr, pointee) {
                // SAFETY: the bytes lie between this frame and the top of
                // the thread's stack, in the frames of the callers: mapped,
                // and lent for the call by the caller that owns them.
                if let Some((offset, target)) = unsafe { find_unpinned(addr, pointee) } {
                    self.report_nested(addr, offset, target);
                }
            } else if pointee > 0 && crate::segments::contains(addr, pointee) {
                // SAFETY: the bytes lie inside one loaded segment of a
                // loaded object (a static of the program or of a library):
                // mapped for as long as the object is loaded, which the
                // caller's pointer into it presumes for the call.
                if let Some((offset, target)) = unsafe { find_unpinned(addr, pointee) } {
                    self.report_nested(addr, offset, target);
                }
            }
            return;
        };
        match (r.state, r.kind) {
            (RegionState::Freed, _) => self.report_freed(addr, r.start),
            (RegionState::Live, RegionKind::Managed) if r.flags & flags::HOLDS_POINTERS != 0 => {
                // SAFETY: the region is live managed memory, registered by
                // its owner, who lends it for the call.
                if let Some((offset, target)) = unsafe { find_unpinned(r.start, r.size) } {
                    self.report_nested(r.start, offset, target);
                }
            }
            _ => {}
        }
    }

    /// A block of the tracking allocator that the registry does not know.
    #[track_caller]
    fn check_heap_block(self, block: crate::heap::Block, mutable: bool) {
        if block.freed {
            return self.report_freed(block.start, block.start);
        }
        if crate::scan::may_hold_pointers(block.align, block.size) {
            // SAFETY: a live heap block, lent for the call by its owner.
            if let Some((offset, target)) = unsafe { find_unpinned(block.start, block.size) } {
                self.report_nested(block.start, offset, target);
            }
        }
        if mutable {
            // The callee's path as `call!` wrote it: the leak report
            // shortens it to the function's name, a call need not.
            crate::heap::note_lent_mut(block.start, self.frame.callee, self.frame.site);
        }
    }

    #[cold]
    #[track_caller]
    fn report_nested(self, lent: usize, offset: usize, target: usize) {
        emit(
            Violation::new(
                ViolationKind::UnpinnedNested,
                format!(
                    "argument {} of `{}` {}",
                    self.arg,
                    callee_name(self.frame.callee),
                    msg::UNPINNED_NESTED
                ),
            )
            .note(format!(
                "the nested pointer is at offset {offset} of the lent memory"
            ))
            .with_callee(Some(callee_name(self.frame.callee)))
            .with_site(Some(self.frame.site))
            .region_at_any("lent", lent)
            .region_at_any("points to", target),
        );
    }

    #[cold]
    #[track_caller]
    fn report_freed(self, addr: usize, start: usize) {
        emit(
            Violation::new(
                ViolationKind::UseAfterFree,
                format!(
                    "argument {} of `{}` {}",
                    self.arg,
                    callee_name(self.frame.callee),
                    msg::USE_AFTER_FREE_ARG
                ),
            )
            .note(format!(
                "the pointer is {} bytes into the freed region",
                addr - start
            ))
            .with_callee(Some(callee_name(self.frame.callee)))
            .with_site(Some(self.frame.site))
            .region_at_any("freed region", start),
        );
    }
}

impl Drop for Call<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        let prev = self.prev;
        frame::leave((prev & !SCANS) as *const Frame);
        if prev & SCANS != 0 {
            crate::roots::after_call(self.frame.callee, self.frame.site);
        }
    }
}

/// Converts a `call!` argument into the C type the callee takes, checking it
/// on the way. `R` is inferred from the callee's parameter.
///
/// Implemented for integers, floats and `bool` (to themselves only: a
/// different width needs [`to_c`](crate::to_c), rule X1), raw pointers,
/// references to [`Managed`], [`Pinned`] and [`CBox`] (to pointers of any
/// element type, for C's `void *`), a `CBox` by value (handed to C, as
/// `into_raw` does), `Option<&T>`, `&CStr`, `&CString`, `Option` of a
/// function pointer, `extern "C"` function pointers, and [`Unchecked`].
/// Besides `CArg`, `call!` takes a plain `&T` or `&mut T` for a `*const T` /
/// `*mut T` parameter (an out-parameter `&mut len`, a struct `&cfg`): lent
/// for the call and scanned by its type for pointers to unpinned managed
/// memory.
///
/// ```
/// use ffi_check::{call, Managed};
/// extern "C" fn total(p: *const u8, n: usize) -> usize {
///     // SAFETY: the caller passes n readable bytes.
///     unsafe { std::slice::from_raw_parts(p, n) }.iter().map(|b| *b as usize).sum()
/// }
/// let buf = Managed::from_vec(vec![1u8, 2, 3]);
/// let n = call!(total(&buf, buf.len()));
/// assert_eq!(n, 6);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be passed to C as `{R}` by `call!`",
    note = "numbers cross only through an explicit conversion (`ffi_check::to_c`), pointers through a wrapper reference or a named method (`as_ptr`)"
)]
pub trait CArg<R> {
    /// Converts and checks. A violation's panic names the caller's line
    /// (the `call!`), not this crate's.
    #[track_caller]
    fn lower(self, call: &mut Call) -> R;
    /// Converts without a check (checks off at run time, or compiled out).
    fn pass(self) -> R;
}

macro_rules! plain_arg {
    ($($t:ty),*) => { $(
        impl CArg<$t> for $t {
            #[inline(always)]
            fn lower(self, call: &mut Call) -> $t { call.plain(); self }
            #[inline(always)]
            fn pass(self) -> $t { self }
        }
    )* };
}
plain_arg!(
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
    ()
);

/// The size of a `T` worth looking through, or 0 for a type that cannot hold
/// a pointer (known at compile time: the check vanishes for byte pointers).
#[inline(always)]
const fn pointee_size<T>() -> usize {
    if may_hold_pointers(align_of::<T>(), size_of::<T>()) {
        size_of::<T>()
    } else {
        0
    }
}

impl<T> CArg<*const T> for *const T {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *const T {
        call.raw_typed(self as usize, false, pointee_size::<T>());
        self
    }
    #[inline(always)]
    fn pass(self) -> *const T {
        self
    }
}
impl<T> CArg<*mut T> for *mut T {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *mut T {
        call.raw_typed(self as usize, true, pointee_size::<T>());
        self
    }
    #[inline(always)]
    fn pass(self) -> *mut T {
        self
    }
}
impl<T> CArg<*const T> for *mut T {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *const T {
        call.raw_typed(self as usize, true, pointee_size::<T>());
        self
    }
    #[inline(always)]
    fn pass(self) -> *const T {
        self
    }
}

macro_rules! lend_managed {
    ($owner:ident, $get:ident) => {
        impl<'a, T: ?Sized, U> CArg<*const U> for &'a $owner<T> {
            #[inline(always)]
            fn lower(self, call: &mut Call) -> *const U {
                let (addr, size, scan) = $get(self);
                call.lend(addr, size, scan);
                addr as *const U
            }
            #[inline(always)]
            fn pass(self) -> *const U {
                self.addr() as *const U
            }
        }
        impl<'a, T: ?Sized, U> CArg<*const U> for &'a mut $owner<T> {
            #[inline(always)]
            fn lower(self, call: &mut Call) -> *const U {
                let (addr, size, scan) = $get(&*self);
                call.lend(addr, size, scan);
                addr as *const U
            }
            #[inline(always)]
            fn pass(self) -> *const U {
                self.addr() as *const U
            }
        }
        impl<'a, T: ?Sized, U> CArg<*mut U> for &'a mut $owner<T> {
            #[inline(always)]
            fn lower(self, call: &mut Call) -> *mut U {
                let (addr, size, scan) = $get(&*self);
                call.lend(addr, size, scan);
                addr as *mut U
            }
            #[inline(always)]
            fn pass(self) -> *mut U {
                self.addr() as *mut U
            }
        }
    };
}

#[inline(always)]
fn managed_parts<T: ?Sized>(m: &Managed<T>) -> (usize, usize, bool) {
    (m.addr(), m.size(), m.is_scanned())
}
#[inline(always)]
fn pinned_parts<T: ?Sized>(m: &Pinned<T>) -> (usize, usize, bool) {
    managed_parts(m.managed())
}
#[inline(always)]
fn cbox_parts<T: ?Sized>(b: &CBox<T>) -> (usize, usize, bool) {
    // C memory is C's: lending it checks nothing (storing into it is P5).
    (b.addr(), 0, false)
}
lend_managed!(Managed, managed_parts);
lend_managed!(Pinned, pinned_parts);
lend_managed!(CBox, cbox_parts);

/// A `CBox` passed by value is handed to C, as [`CBox::into_raw`] does: C
/// owns the memory from then on and must free it with the box's deallocator.
impl<T: ?Sized, U> CArg<*mut U> for CBox<T> {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *mut U {
        call.plain();
        self.into_raw_addr() as *mut U
    }
    #[inline(always)]
    fn pass(self) -> *mut U {
        self.into_raw_addr() as *mut U
    }
}
impl<T: ?Sized, U> CArg<*const U> for CBox<T> {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *const U {
        call.plain();
        self.into_raw_addr() as *const U
    }
    #[inline(always)]
    fn pass(self) -> *const U {
        self.into_raw_addr() as *const U
    }
}

impl<T, U> CArg<*const U> for Option<&T> {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *const U {
        let p = CArg::<*const U>::pass(self);
        call.raw(p as usize);
        p
    }
    #[inline(always)]
    fn pass(self) -> *const U {
        self.map_or(std::ptr::null(), |r| r as *const T).cast::<U>()
    }
}
impl<T, U> CArg<*mut U> for Option<&mut T> {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *mut U {
        let p = CArg::<*mut U>::pass(self);
        call.raw(p as usize);
        p
    }
    #[inline(always)]
    fn pass(self) -> *mut U {
        self.map_or(std::ptr::null_mut(), |r| r as *mut T)
            .cast::<U>()
    }
}
impl CArg<*const c_char> for &CStr {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *const c_char {
        call.raw(self.as_ptr() as usize);
        self.as_ptr()
    }
    #[inline(always)]
    fn pass(self) -> *const c_char {
        self.as_ptr()
    }
}
impl CArg<*const c_char> for &CString {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> *const c_char {
        call.raw(self.as_ptr() as usize);
        self.as_ptr()
    }
    #[inline(always)]
    fn pass(self) -> *const c_char {
        self.as_ptr()
    }
}
/// Nullable function pointers (callbacks), and any other `Option` C takes
/// as it is.
impl<F: Copy> CArg<Option<F>> for Option<F> {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> Option<F> {
        call.plain();
        self
    }
    #[inline(always)]
    fn pass(self) -> Option<F> {
        self
    }
}

macro_rules! fn_ptr_arg {
    ($($a:ident),*) => {
        impl<Ret, $($a),*> CArg<extern "C" fn($($a),*) -> Ret> for extern "C" fn($($a),*) -> Ret {
            #[inline(always)]
            fn lower(self, call: &mut Call) -> Self { call.plain(); self }
            #[inline(always)]
            fn pass(self) -> Self { self }
        }
        impl<Ret, $($a),*> CArg<unsafe extern "C" fn($($a),*) -> Ret> for unsafe extern "C" fn($($a),*) -> Ret {
            #[inline(always)]
            fn lower(self, call: &mut Call) -> Self { call.plain(); self }
            #[inline(always)]
            fn pass(self) -> Self { self }
        }
    };
}
fn_ptr_arg!();
fn_ptr_arg!(A);
fn_ptr_arg!(A, B);
fn_ptr_arg!(A, B, C);
fn_ptr_arg!(A, B, C, D);
fn_ptr_arg!(A, B, C, D, E);
fn_ptr_arg!(A, B, C, D, E, F);

// ---- plain references ------------------------------------------------------------
//
// `call!` hands each argument to `ArgWrap(arg).lower_arg(call)`. Method
// resolution tries the receiver by value, then by `&`, then by `&mut`, and
// takes the first that some trait in scope has an impl for:
//
// 1. `ViaCArg` on `ArgWrap<A>`, whenever the argument implements `CArg`;
// 2. `ViaRef` on `&ArgWrap<&T>` / `&ArgWrap<&mut T>`: a plain `&T` or
//    `&mut T` with no `CArg` of its own (an out-parameter `&mut len`, a
//    config struct `&cfg`). Wrapper references (`&Managed<T>`, `&CBox<T>`)
//    keep their own `CArg` impls, which a blanket `CArg for &T` would
//    overlap;
// 3. `ViaFnItem` on `&mut ArgWrap<F>`: a function item (`my_callback`),
//    which has a type of its own and no size; it is passed as it is and
//    the callee's parameter type turns it into the function pointer.
/// A `call!` argument on its way to [`CArg`] or to the plain-reference path.
#[doc(hidden)]
pub struct ArgWrap<A>(pub A);

/// The path of every argument that implements [`CArg`].
#[doc(hidden)]
pub trait ViaCArg<R> {
    /// Converts and checks.
    #[track_caller]
    fn lower_arg(self, call: &mut Call) -> R;
    /// Converts without a check.
    fn pass_arg(self) -> R;
}

impl<A: CArg<R>, R> ViaCArg<R> for ArgWrap<A> {
    #[inline(always)]
    fn lower_arg(self, call: &mut Call) -> R {
        self.0.lower(call)
    }
    #[inline(always)]
    fn pass_arg(self) -> R {
        self.0.pass()
    }
}

/// The path of a plain `&T` / `&mut T`: lent for the call, the value's
/// bytes looked through by its type (a type that can hold pointers is
/// scanned for pointers to unpinned managed memory, rule P1), wherever it
/// lives (stack, static, heap).
#[doc(hidden)]
pub trait ViaRef<R> {
    /// Converts and checks.
    #[track_caller]
    fn lower_arg(self, call: &mut Call) -> R;
    /// Converts without a check.
    fn pass_arg(self) -> R;
}

/// Lends the `T` at `p` for the call, scanned when its type can hold
/// pointers (known at compile time).
#[inline(always)]
#[track_caller]
fn lend_value<T>(call: &mut Call, p: *const T) {
    call.lend(p as usize, size_of::<T>(), pointee_size::<T>() > 0);
}

impl<T> ViaRef<*const T> for &ArgWrap<&T> {
    #[inline(always)]
    fn lower_arg(self, call: &mut Call) -> *const T {
        let p: *const T = self.0;
        lend_value(call, p);
        p
    }
    #[inline(always)]
    fn pass_arg(self) -> *const T {
        self.0
    }
}

/// The `&mut T` inside a shared `ArgWrap`, as the write-capable pointer it
/// was made from.
#[inline(always)]
fn unique<T>(wrap: &ArgWrap<&mut T>) -> *mut T {
    // SAFETY: copies the unique reference out of the wrapper, a temporary
    // of the `call!` expansion that is never used again (`&mut T` has no
    // destructor): the copy is the only use of the reference from here on.
    let r: &mut T = unsafe { std::ptr::read(&wrap.0) };
    r
}

impl<T> ViaRef<*mut T> for &ArgWrap<&mut T> {
    #[inline(always)]
    fn lower_arg(self, call: &mut Call) -> *mut T {
        let p = unique(self);
        lend_value(call, p);
        p
    }
    #[inline(always)]
    fn pass_arg(self) -> *mut T {
        unique(self)
    }
}

impl<T> ViaRef<*const T> for &ArgWrap<&mut T> {
    #[inline(always)]
    fn lower_arg(self, call: &mut Call) -> *const T {
        let p = unique(self).cast_const();
        lend_value(call, p);
        p
    }
    #[inline(always)]
    fn pass_arg(self) -> *const T {
        unique(self).cast_const()
    }
}

/// The path of a function item passed where C takes a function pointer
/// (`call!(set_handler(on_event))`): it has no size and no `CArg` (no
/// trait names "an `unsafe extern "C"` function item"), so it is passed as
/// it is, and the callee's parameter type makes the function pointer. Any
/// other value that reaches this path has no conversion: a compile error.
#[doc(hidden)]
pub trait ViaFnItem {
    /// The value as it is.
    type Out;
    /// Passes the function item (nothing to check: code, not data).
    fn lower_arg(self, call: &mut Call) -> Self::Out;
    /// Passes the function item.
    fn pass_arg(self) -> Self::Out;
}

impl<F: Copy> ViaFnItem for &mut ArgWrap<F> {
    type Out = F;
    #[inline(always)]
    fn lower_arg(self, call: &mut Call) -> F {
        const {
            assert!(
                size_of::<F>() == 0,
                "this `call!` argument has no `CArg` conversion to the parameter's type: \
                 pass a struct by value through `ffi_check::unchecked(..)`, a pointer as a raw \
                 pointer or reference, or implement `CArg` for the type"
            )
        };
        call.plain();
        self.0
    }
    #[inline(always)]
    fn pass_arg(self) -> F {
        self.0
    }
}

/// A `call!` argument passed as it is, without a check: structs by value,
/// or anything `CArg` does not cover. Made by [`unchecked`].
#[derive(Clone, Copy, Debug)]
pub struct Unchecked<T>(pub T);

/// Passes `value` through `call!` unchecked.
///
/// ```
/// #[repr(C)] #[derive(Clone, Copy)] struct Point { x: i32, y: i32 }
/// extern "C" fn norm1(p: Point) -> i32 { p.x.abs() + p.y.abs() }
/// assert_eq!(ffi_check::call!(norm1(ffi_check::unchecked(Point { x: 3, y: -4 }))), 7);
/// ```
pub fn unchecked<T>(value: T) -> Unchecked<T> {
    Unchecked(value)
}

impl<T> CArg<T> for Unchecked<T> {
    #[inline(always)]
    fn lower(self, call: &mut Call) -> T {
        call.plain();
        self.0
    }
    #[inline(always)]
    fn pass(self) -> T {
        self.0
    }
}

/// Checks what a callback returns to C (rule P4). Implemented for numbers,
/// `bool`, `()`, raw pointers and `NonNull`.
pub trait CReturn: Sized {
    /// Checks `self` as the result of callback `callback`.
    fn check_return(self, callback: &'static str, site: Site) -> Self;
}

macro_rules! plain_return {
    ($($t:ty),*) => { $(
        impl CReturn for $t {
            #[inline(always)]
            fn check_return(self, _: &'static str, _: Site) -> $t { self }
        }
    )* };
}
plain_return!(
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
    ()
);

impl<T> CReturn for *const T {
    fn check_return(self, callback: &'static str, site: Site) -> Self {
        check_returned_pointer(self as usize, callback, site);
        self
    }
}
impl<T> CReturn for *mut T {
    fn check_return(self, callback: &'static str, site: Site) -> Self {
        check_returned_pointer(self as usize, callback, site);
        self
    }
}
impl<T> CReturn for NonNull<T> {
    fn check_return(self, callback: &'static str, site: Site) -> Self {
        check_returned_pointer(self.as_ptr() as usize, callback, site);
        self
    }
}
impl<T> CReturn for Option<NonNull<T>> {
    fn check_return(self, callback: &'static str, site: Site) -> Self {
        check_returned_pointer(self.map_or(0, |p| p.as_ptr() as usize), callback, site);
        self
    }
}

fn check_returned_pointer(addr: usize, callback: &'static str, site: Site) {
    if addr == 0 || !checks_on() {
        return;
    }
    let Some(r) = registry::lookup(addr) else {
        if let Some(block) = crate::heap::block_at(addr) {
            // A live plain heap block handed to C (a boxed value C will give
            // back to a destructor) is Rust's rule: reported only strict.
            if block.freed || crate::mode::strict() {
                report_returned_heap_block(block, callback, site);
            }
        }
        return;
    };
    if r.state == RegionState::Freed {
        emit(
            Violation::new(
                ViolationKind::UseAfterFree,
                format!(
                    "result of callback `{callback}` {}",
                    msg::USE_AFTER_FREE_ARG
                ),
            )
            .with_callback(callback)
            .with_site(Some(site))
            .region_at("freed region", r.start),
        );
        return;
    }
    if r.kind != RegionKind::Managed {
        return;
    }
    let nested = if r.pins == 0 {
        if r.family != crate::family::FAMILY_RUST && !crate::mode::strict() {
            return;
        }
        None
    } else if r.flags & flags::HOLDS_POINTERS != 0 {
        // SAFETY: live managed memory whose owner hands it to C.
        match unsafe { find_unpinned(r.start, r.size) } {
            Some(hit) => Some(hit),
            None => return,
        }
    } else {
        return;
    };
    let mut v = Violation::new(
        ViolationKind::CallbackReturnedUnpinned,
        format!(
            "result of callback `{callback}` {}",
            match nested {
                None => msg::CALLBACK_UNPINNED,
                Some(_) => msg::CALLBACK_POINTS_TO_UNPINNED,
            }
        ),
    )
    .with_callback(callback)
    .with_site(Some(site))
    .region_at("returned", r.start);
    if let Some((_, target)) = nested {
        v = v.region_at("points to", target);
    }
    emit(v);
}

/// The start of the freed C block of the interposed allocator (feature
/// `interpose`) that `addr` points into (its start or inside it): an
/// object handle, or a handle to one of its fields, used after C destroyed
/// the object.
#[inline]
fn freed_c_block(addr: usize) -> Option<usize> {
    #[cfg(feature = "interpose")]
    {
        crate::heap::c_freed_block_containing(addr).map(|b| b.start)
    }
    #[cfg(not(feature = "interpose"))]
    {
        let _ = addr;
        None
    }
}

/// A callback returned a heap block of the tracking allocator that the
/// registry does not know: freed, or live and unpinned (a pinned one would
/// be in the registry).
#[cold]
fn report_returned_heap_block(block: crate::heap::Block, callback: &'static str, site: Site) {
    let (kind, what, role) = if block.freed {
        (
            ViolationKind::UseAfterFree,
            msg::USE_AFTER_FREE_ARG,
            "freed region",
        )
    } else {
        (
            ViolationKind::CallbackReturnedUnpinned,
            msg::CALLBACK_UNPINNED,
            "returned",
        )
    };
    emit(
        Violation::new(kind, format!("result of callback `{callback}` {what}"))
            .with_callback(callback)
            .with_site(Some(site))
            .region_at_any(role, block.start),
    );
}

/// The name of the function a `callback!` sits in, from the type name of a
/// marker function declared inside it.
#[doc(hidden)]
pub fn enclosing_fn(marker: &'static str) -> &'static str {
    let path = marker.strip_suffix("::__ffi_check_here").unwrap_or(marker);
    path.rsplit("::")
        .find(|seg| !seg.starts_with('{'))
        .unwrap_or(path)
}

/// Runs a callback body: violations inside it abort instead of unwinding
/// into C, a panic in it aborts with a clear message, and the result is
/// checked against rule P4.
#[doc(hidden)]
#[track_caller]
pub fn run_callback<R: CReturn>(name: &'static str, body: impl FnOnce() -> R) -> R {
    let site = Site::caller();
    if !COMPILED_IN {
        return abort_on_unwind(name, body);
    }
    let _guard = crate::report::enter_callback();
    abort_on_unwind(name, body).check_return(name, site)
}

fn abort_on_unwind<R>(name: &'static str, body: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string payload".to_owned());
            write_stderr(&format!(
                "ffi-check: callback `{name}` panicked ({what}); aborting: a panic may not unwind into C\n"
            ));
            std::process::abort();
        }
    }
}
