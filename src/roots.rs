//! Mode 2: catching C keeping what it was lent, by scanning C memory.
//!
//! Rules P2, P3 and P5 (SPEC §2). Go's `cgocheck=2` catches a Go pointer
//! written into C memory with a write barrier, at the write. Rust has no
//! barrier, and C keeping a pointer it was only lent is otherwise invisible
//! until the memory is freed and C reads it anyway. So mode 2 looks after the
//! fact: it reads every aligned word of the C memory it can see — the live C
//! regions it tracks, plus the *roots*: C storage registered with
//! `ffi_check_add_root` ([`add_root`]) or found in the writable segments of a
//! shared library ([`watch_library`]) — and reports a word that points into
//! live, unpinned managed memory.
//!
//! When, and what a finding means:
//! - before an outermost [`call!`](crate::call!) starts: a new finding was
//!   written since the last scan, outside any checked call, so by Rust:
//!   `StoredUnpinned` (P5);
//! - after it returns: a new finding was written during the call, by C:
//!   `Retained` (P2), naming the call;
//! - when a `Pinner` unpins, or a `Managed` is dropped: C memory that still
//!   points into that region is `FreedWhileRetained` (P3), and a dropped
//!   region is then kept (leaked) so C's pointer stays valid.
//!
//! Each finding (the word's address and value) is reported once: the scan
//! remembers what it found last time. Regions C declared with
//! `ffi_check_retain` are judged by mode 1 and skipped here. Nested calls
//! (a `call!` inside a callback) do not scan: the outer call's loans are
//! still legitimately in C's hands. While another thread is inside a checked
//! call, a scan is skipped (its C may hold its own loans for the moment);
//! the next scan catches up.
//!
//! Nothing tells the checker which C words were written since the last scan,
//! so every scan is a full scan. It is made fast instead: each word is first
//! compared with the bounds of the unpinned managed regions (a test the
//! compiler vectorises over blocks of 64 words), so pointer-free C memory
//! streams past at memory speed; a word inside the bounds is next tested
//! against a bitmap of where the targets lie, and only a word that passes
//! both costs a binary search in a snapshot taken at the start of the scan.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::mode::{checks_on, COMPILED_IN};
use crate::registry::{self, RegionKind, RegionState};
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::segments;
use crate::site::Site;

// ---- roots -----------------------------------------------------------------

/// Where a root came from, for reports.
#[derive(Clone, Debug)]
enum RootOrigin {
    /// `ffi_check_add_root` (from C, with its site) or [`add_root`].
    Registered(Option<Site>),
    /// A writable segment of a loaded shared library.
    Library(String),
}

/// A range of C storage the scan reads (it is not a tracked region).
#[derive(Clone, Debug)]
struct Root {
    start: usize,
    len: usize,
    origin: RootOrigin,
}

impl Root {
    fn describe(&self) -> String {
        let what = match &self.origin {
            RootOrigin::Registered(Some(site)) => format!("registered at {site}"),
            RootOrigin::Registered(None) => "registered".to_owned(),
            RootOrigin::Library(path) => format!("writable data (.data/.bss) of `{path}`"),
        };
        format!("root {:#x} ({} bytes, {what})", self.start, self.len)
    }
}

static ROOTS: Mutex<Vec<Root>> = Mutex::new(Vec::new());

fn roots() -> MutexGuard<'static, Vec<Root>> {
    // Every change is completed before anything that could panic.
    ROOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `[start, start + len)` as a root (replacing a root that starts
/// at the same address).
pub(crate) fn add_root_at(start: usize, len: usize, site: Option<Site>) -> bool {
    if !COMPILED_IN || start == 0 || len == 0 {
        return false;
    }
    // A root is read at every scan: one that is not memory would crash the
    // scan, and one whose end overflows would never be read at all.
    if let Some(why) = crate::probe::unreadable_range(start, len) {
        emit(
            Violation::new(ViolationKind::InvalidRoot, msg::BAD_ROOT.to_owned())
                .note(format!("the root is {start:#x}, {len} bytes: {why}"))
                .note("the root is not registered".into())
                .with_site(site),
        );
        return false;
    }
    let mut roots = roots();
    roots.retain(|r| r.start != start);
    roots.push(Root {
        start,
        len,
        origin: RootOrigin::Registered(site),
    });
    true
}

/// Unregisters the root starting at `start`; false when there is none.
pub(crate) fn remove_root_at(start: usize) -> bool {
    let mut roots = roots();
    let before = roots.len();
    roots.retain(|r| r.start != start);
    roots.len() != before
}

/// Registers C storage that mode 2 scans: a global table, a static slot, a
/// structure C allocated without ffi-check. After each outermost
/// [`call!`](crate::call!) a pointer to unpinned managed memory found there is
/// reported as C keeping it (`Retained`). What `ffi_check_add_root` does
/// from C. Registering the same start again replaces the root.
///
/// Returns whether the root was registered. A range that is not mapped and
/// readable for its whole length, or whose end overflows the address space,
/// is refused with an `InvalidRoot` report (it would crash the scan, or never
/// be scanned); a null pointer, a zero length, or a build with the checks
/// compiled out registers nothing and returns false.
///
/// # Safety
/// `[ptr, ptr + len)` stays readable until [`remove_root`] is called with
/// `ptr` (or for the rest of the program).
///
/// ```
/// use ffi_check::{add_root, remove_root};
/// static mut TABLE: [usize; 8] = [0; 8];
/// // SAFETY: a static is readable for the whole program.
/// unsafe { add_root(std::ptr::addr_of!(TABLE), std::mem::size_of::<[usize; 8]>()) };
/// assert!(remove_root(std::ptr::addr_of!(TABLE)) || !ffi_check::COMPILED_IN);
/// ```
#[track_caller]
pub unsafe fn add_root<T: ?Sized>(ptr: *const T, len: usize) -> bool {
    add_root_at(ptr.cast::<u8>() as usize, len, Some(Site::caller()))
}

/// Unregisters a root registered by [`add_root`] (or `ffi_check_add_root`)
/// at `ptr`. Returns false when no root starts there.
pub fn remove_root<T: ?Sized>(ptr: *const T) -> bool {
    remove_root_at(ptr.cast::<u8>() as usize)
}

/// Adds the writable segments (`.data`, `.bss`) of every loaded shared
/// library whose path contains `name` as roots, so a library's globals that
/// keep a lent pointer are seen without changing its source. Returns how
/// many libraries matched (0 when none is loaded; an empty `name` matches
/// nothing). The libraries are kept loaded from then on.
///
/// ```
/// // libc's globals: nothing of ours is in there.
/// let n = ffi_check::watch_library("libc.so");
/// assert!(n <= 1);
/// assert_eq!(ffi_check::watch_library(""), 0);
/// ```
pub fn watch_library(name: &str) -> usize {
    if !COMPILED_IN || name.is_empty() {
        return 0;
    }
    let found = loaded_writable_segments(name);
    let mut libraries: Vec<&str> = found.iter().map(|(path, _, _)| path.as_str()).collect();
    libraries.dedup();
    let count = libraries.len();
    for path in libraries {
        // Keep it loaded: the roots below point into it. RTLD_NOLOAD only
        // takes a reference to a library that is loaded already.
        if let Ok(c) = std::ffi::CString::new(path) {
            // SAFETY: `c` is a NUL-terminated path; the handle is kept
            // (never closed) on purpose.
            unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
        }
    }
    let mut roots = roots();
    for (path, start, len) in found {
        roots.retain(|r| r.start != start);
        roots.push(Root {
            start,
            len,
            origin: RootOrigin::Library(path),
        });
    }
    count
}

/// The writable `PT_LOAD` segments of the loaded objects whose path
/// contains `name`: (path, start, length).
fn loaded_writable_segments(name: &str) -> Vec<(String, usize, usize)> {
    let _g = crate::bookkeeping::bookkeeping();
    segments::writable()
        .into_iter()
        .filter(|s| !s.main && s.object.contains(name))
        .map(|s| (s.object, s.start, s.len))
        .collect()
}

// ---- what a scan reads -----------------------------------------------------

/// One range the scan reads: a live tracked C region, or a root.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    len: usize,
    /// Index into the roots snapshot; `None` for a tracked C region.
    root: Option<usize>,
}

/// What the scan reads and what it looks for, taken at its start.
struct Snapshot {
    spans: Vec<Span>,
    roots: Vec<Root>,
    /// Live, unpinned managed regions C has not declared it retains:
    /// `(start, end)`, sorted.
    targets: Vec<(usize, usize)>,
}

impl Snapshot {
    /// Takes the snapshot; `targets` only when the scan looks for unpinned
    /// memory (a scan for one region does not need them).
    fn take(with_targets: bool) -> Snapshot {
        let roots = roots().clone();
        let mut spans: Vec<Span> = roots
            .iter()
            .enumerate()
            .map(|(i, r)| Span {
                start: r.start,
                len: r.len,
                root: Some(i),
            })
            .collect();
        let mut targets = Vec::new();
        // Plain heap blocks the registry knows are targets only under strict
        // rules: otherwise C holding one is judged when it is freed.
        let strict = with_targets && crate::mode::strict();
        registry::for_each(|start, r| {
            if r.state != RegionState::Live {
                return;
            }
            match r.kind {
                RegionKind::C => spans.push(Span {
                    start,
                    len: r.size,
                    root: None,
                }),
                RegionKind::Managed
                    if with_targets
                        && r.pins == 0
                        && r.retains == 0
                        && (strict || r.family == crate::family::FAMILY_RUST) =>
                {
                    targets.push((start, start.saturating_add(r.size.max(1))));
                }
                RegionKind::Managed => {}
            }
        });
        targets.sort_unstable();
        Snapshot {
            spans,
            roots,
            targets,
        }
    }

    fn holder(&self, span: &Span) -> Holder {
        match span.root {
            Some(i) => Holder::Root(self.roots[i].describe()),
            None => Holder::Region(span.start),
        }
    }
}

/// What holds a pointer that was found.
#[derive(Clone, Debug)]
enum Holder {
    /// The tracked C region starting here.
    Region(usize),
    /// A root, described.
    Root(String),
}

/// A word of C memory that points into managed memory.
#[derive(Clone, Debug)]
struct Finding {
    holder: Holder,
    /// Where the holder starts and where in it the word is.
    holder_start: usize,
    offset: usize,
    value: usize,
    /// The start of the managed region it points into.
    target: usize,
}

impl Finding {
    fn key(&self) -> (usize, usize) {
        (self.holder_start + self.offset, self.value)
    }
}

/// Calls `hit(offset, word)` for every aligned word of `[start, start + len)`
/// that lies in `[lo, hi)`.
///
/// # Safety
/// The range is readable.
#[inline]
unsafe fn scan_words(
    start: usize,
    len: usize,
    lo: usize,
    hi: usize,
    mut hit: impl FnMut(usize, usize),
) {
    const WORD: usize = std::mem::size_of::<usize>();
    // SAFETY: the caller vouches for the range.
    let Some((skip, words)) = (unsafe { crate::scan::aligned_words(start, len) }) else {
        return;
    };
    crate::scan::find_in_bounds(words, lo, hi, |i, w| {
        hit(skip + i * WORD, w);
        None::<()>
    });
}

/// A coarse map of where the targets are: one bit per granule of
/// `[lo, hi)`, set when a target touches the granule. The granule is the
/// smallest power of two that keeps the map within `MAX_BITS`, so a word
/// inside the bounds but between targets (a pointer to pinned memory, or to
/// C memory in the same heap) is usually settled by one bit, not a search.
struct Granules {
    lo: usize,
    shift: u32,
    bits: Vec<u64>,
}

impl Granules {
    const MAX_BITS: usize = 1 << 18;

    fn new(targets: &[(usize, usize)], lo: usize, hi: usize) -> Granules {
        let mut shift = 0;
        while (hi - lo) >> shift >= Self::MAX_BITS {
            shift += 1;
        }
        let mut bits = vec![0u64; (((hi - lo) >> shift) >> 6) + 1];
        for &(start, end) in targets {
            for g in (start - lo) >> shift..=(end - 1 - lo) >> shift {
                bits[g >> 6] |= 1 << (g & 63);
            }
        }
        Granules { lo, shift, bits }
    }

    /// False when no target can contain `w` (which lies in `[lo, hi)`).
    #[inline(always)]
    fn may_hold(&self, w: usize) -> bool {
        let g = (w - self.lo) >> self.shift;
        self.bits[g >> 6] & (1 << (g & 63)) != 0
    }
}

/// Every word of the snapshot's spans that points into one of `targets`
/// (sorted, non-overlapping `(start, end)` ranges).
fn find(snapshot: &Snapshot, targets: &[(usize, usize)]) -> Vec<Finding> {
    let (Some(first), Some(last)) = (targets.first(), targets.last()) else {
        return Vec::new();
    };
    let (lo, hi) = (first.0, last.1);
    let granules = Granules::new(targets, lo, hi);
    let mut found = Vec::new();
    // The last target hit: runs of pointers into one region are common.
    let mut last_hit = (0usize, 0usize);
    for span in &snapshot.spans {
        let mut hits = Vec::new();
        // SAFETY: a live tracked C region is readable while it is live (it
        // is freed through the checker, which quarantines it); a root is
        // readable by the promise of whoever registered it.
        unsafe {
            scan_words(span.start, span.len, lo, hi, |offset, w| {
                if !granules.may_hold(w) {
                    return;
                }
                let target = if last_hit.0 <= w && w < last_hit.1 {
                    Some(last_hit)
                } else {
                    let i = targets.partition_point(|t| t.0 <= w);
                    (i > 0 && w < targets[i - 1].1).then(|| targets[i - 1])
                };
                if let Some(t) = target {
                    last_hit = t;
                    hits.push((offset, w, t.0));
                }
            })
        };
        if hits.is_empty() {
            continue;
        }
        let holder = snapshot.holder(span);
        found.extend(hits.into_iter().map(|(offset, value, target)| Finding {
            holder: holder.clone(),
            holder_start: span.start,
            offset,
            value,
            target,
        }));
    }
    found
}

// ---- the scans -------------------------------------------------------------

/// What the last full scan found, by (word address, value): each finding is
/// reported once. Its lock also serialises the scans.
static SEEN: Mutex<Option<HashSet<(usize, usize)>>> = Mutex::new(None);

fn seen() -> MutexGuard<'static, Option<HashSet<(usize, usize)>>> {
    SEEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Outermost checked calls in progress that scan (mode 2), on all threads.
static IN_CALLS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's part of `IN_CALLS`: what is left of it in the child of
    /// a `fork`, where the other threads' calls will never return.
    static OWN_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// The scans' lock, then the roots', held across `fork` (see `crate::fork`):
/// a scan takes the roots' inside its own.
pub(crate) struct ForkLocks {
    _seen: MutexGuard<'static, Option<HashSet<(usize, usize)>>>,
    _roots: MutexGuard<'static, Vec<Root>>,
}

/// Takes the scans' and the roots' locks for `fork`'s prepare handler;
/// dropping the value releases them.
pub(crate) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _seen: seen(),
        _roots: roots(),
    }
}

/// In the child of a `fork` (one thread, the forking one): only this
/// thread's calls are still in progress, so the scans are not skipped
/// forever for calls that were under way on threads the child lacks.
pub(crate) fn after_fork_in_child() {
    let own = OWN_CALLS.try_with(Cell::get).unwrap_or(0);
    IN_CALLS.store(own, Ordering::SeqCst);
}

/// Why a full scan runs.
#[derive(Clone, Copy)]
enum Moment {
    /// Before the call: what is new was written by Rust.
    BeforeCall(&'static str, Site),
    /// After the call: what is new was written by C during it.
    AfterCall(&'static str, Site),
    /// Asked for by [`scan_c_memory`].
    Now(Site),
}

/// Mode 2, before an outermost `call!` makes its call.
#[cold]
#[inline(never)]
pub(crate) fn before_call(callee: &'static str, site: Site) {
    IN_CALLS.fetch_add(1, Ordering::SeqCst);
    let _ = OWN_CALLS.try_with(|n| n.set(n.get() + 1));
    full_scan(Moment::BeforeCall(callee, site), 1);
}

/// Mode 2, after an outermost `call!` returned.
#[cold]
#[inline(never)]
pub(crate) fn after_call(callee: &'static str, site: Site) {
    IN_CALLS.fetch_sub(1, Ordering::SeqCst);
    let _ = OWN_CALLS.try_with(|n| n.set(n.get().saturating_sub(1)));
    if std::thread::panicking() {
        return;
    }
    full_scan(Moment::AfterCall(callee, site), 0);
}

/// Runs the mode-2 scan now: reads all tracked live C memory and every root,
/// and reports each pointer to unpinned managed memory found there that the
/// last scan did not see, as `StoredUnpinned` (rule P5). Mode 2 runs it
/// before and after every outermost [`call!`](crate::call!) by itself; this
/// is for a check at a moment of your choosing (after C code ran outside a
/// `call!`, say), in any mode with checks on.
///
/// ```
/// use ffi_check::{capture, scan_c_memory, CBox, Managed, ViolationKind};
/// let value = Managed::new(7u64);
/// let mut slot = CBox::new([std::ptr::null::<u64>(); 2]);
/// slot[1] = value.as_ptr();                    // a raw store, bypassing `set`
/// let ((), v) = capture(scan_c_memory);
/// # if ffi_check::COMPILED_IN {
/// assert_eq!(v[0].kind(), ViolationKind::StoredUnpinned);
/// # }
/// slot[1] = std::ptr::null();
/// ```
#[track_caller]
pub fn scan_c_memory() {
    full_scan(Moment::Now(Site::caller()), 0);
}

/// The scan for pointers into unpinned managed memory; `others` is how many
/// calls in progress are this thread's own.
fn full_scan(moment: Moment, own_calls: usize) {
    if !checks_on() {
        return;
    }
    let mut held_blocks = Vec::new();
    let (new, overruns) = {
        let mut seen = seen();
        // Another thread's C may hold its call's loans right now.
        if IN_CALLS.load(Ordering::SeqCst) > own_calls {
            return;
        }
        let overruns = crate::guard::check_all();
        let snapshot = Snapshot::take(true);
        let found = find(&snapshot, &snapshot.targets);
        if matches!(moment, Moment::AfterCall(..)) {
            held_blocks = find_held_heap_blocks(&snapshot);
        }
        let previous = seen.take().unwrap_or_default();
        let new: Vec<Finding> = found
            .iter()
            .filter(|f| !previous.contains(&f.key()))
            .cloned()
            .collect();
        *seen = Some(found.iter().map(Finding::key).collect());
        (new, overruns)
    };
    // Reported with no lock held: a report may panic.
    let call = match moment {
        Moment::BeforeCall(callee, site) | Moment::AfterCall(callee, site) => {
            Some((crate::frame::callee_name(callee), site))
        }
        Moment::Now(_) => None,
    };
    for o in &overruns {
        let when = match moment {
            Moment::BeforeCall(..) => "found before the call (written since the last crossing)",
            Moment::AfterCall(..) => "found when the call returned",
            Moment::Now(_) => "found by `scan_c_memory`",
        };
        let call = match moment {
            Moment::AfterCall(..) => call,
            _ => None,
        };
        let site = match moment {
            Moment::Now(site) | Moment::BeforeCall(_, site) => Some(site),
            Moment::AfterCall(..) => None,
        };
        crate::guard::report(o, call, site, when);
    }
    for f in &new {
        report_finding(f, moment);
    }
    if let Moment::AfterCall(_, site) = moment {
        remember_held(&held_blocks, site);
    }
}

/// The plain heap blocks of the tracking allocator (not yet known to the
/// registry) that a word of the snapshot's C memory points to, by start.
///
/// Rust heap memory never moves, so C keeping such a pointer is no
/// violation by itself: the block is remembered instead (made known to the
/// registry), and its free while C memory still points into it is
/// `FreedWhileRetained`, found by the scan at the free.
fn find_held_heap_blocks(snapshot: &Snapshot) -> Vec<usize> {
    let (lo, hi) = crate::heap::heap_bounds();
    if lo >= hi {
        return Vec::new();
    }
    let mut held = Vec::new();
    for span in &snapshot.spans {
        // SAFETY: as in `find`: live tracked C memory and registered roots
        // are readable while the scan runs.
        unsafe {
            scan_words(span.start, span.len, lo, hi, |_, w| {
                if crate::heap::block_at(w).is_some_and(|b| !b.freed && !b.promoted) {
                    held.push(w);
                }
            })
        };
    }
    held.sort_unstable();
    held.dedup();
    held
}

/// Makes each held heap block known to the registry, naming the call during
/// which C was found holding it, so that its free is checked against the C
/// memory that still points into it.
#[cold]
fn remember_held(blocks: &[usize], site: Site) {
    for &start in blocks {
        if !registry::promote_heap_block(start, None) {
            continue;
        }
        registry::update(start, |r| {
            let e = r.extra_mut();
            // Where C was found holding it, not where it was allocated (the
            // registry's backtrace of this moment would read as the latter).
            e.retain_site = Some(site);
            e.alloc_trace = None;
        });
    }
}

#[cold]
fn report_finding(f: &Finding, moment: Moment) {
    let v = match moment {
        Moment::AfterCall(callee, site) => {
            let callee = crate::frame::callee_name(callee);
            Violation::new(
                ViolationKind::Retained,
                format!("{} (`{callee}`)", msg::RETAINED),
            )
            .note(format!(
                "found by the mode-2 scan when the call to `{callee}` returned"
            ))
            .with_callee(Some(callee))
            .with_site(Some(site))
        }
        Moment::BeforeCall(callee, site) => {
            let callee = crate::frame::callee_name(callee);
            Violation::new(ViolationKind::StoredUnpinned, msg::STORED_UNPINNED.to_owned())
                .note(format!(
                    "found by the mode-2 scan before the call to `{callee}`: written since the last scan, outside any checked call"
                ))
                .with_site(Some(site))
        }
        Moment::Now(site) => Violation::new(
            ViolationKind::StoredUnpinned,
            msg::STORED_UNPINNED.to_owned(),
        )
        .note("found by `scan_c_memory`: written since the last scan".to_owned())
        .with_site(Some(site)),
    };
    let v = v.note(held_by(f));
    // The regions in the order each kind's mode-1 reports use.
    let v = match moment {
        Moment::AfterCall(..) => {
            with_holder(v.region_at("retained region", f.target), f, "held in")
        }
        _ => with_holder(v, f, "C region written").region_at("points to", f.target),
    };
    emit(v);
}

/// The note naming what holds the pointer, and where.
fn held_by(f: &Finding) -> String {
    match &f.holder {
        Holder::Region(start) => format!(
            "held by: the C memory at {start:#x}, at offset {} (the pointer {:#x})",
            f.offset, f.value
        ),
        Holder::Root(root) => {
            let at = f.holder_start.wrapping_add(f.offset);
            let static_ = match segments::describe(at) {
                Some(name) => format!("; {name}"),
                None => String::new(),
            };
            format!(
                "held by: {root}, at offset {}{static_} (the pointer {:#x})",
                f.offset, f.value
            )
        }
    }
}

fn with_holder(v: Violation, f: &Finding, role: &'static str) -> Violation {
    match f.holder {
        Holder::Region(start) => v.region_at(role, start),
        Holder::Root(_) => v,
    }
}

/// Rule P3 in mode 2, for the managed region `[start, start + size)` that is
/// being dropped (`unpinned` false) or has just been unpinned: reports every
/// word of C memory that still points into it, as `FreedWhileRetained`.
/// Returns whether one was found (a dropped region is then kept).
pub(crate) fn check_release(start: usize, size: usize, unpinned: bool) -> bool {
    if !checks_on() {
        return false;
    }
    let found = {
        let mut seen = seen();
        let snapshot = Snapshot::take(false);
        let found = find(&snapshot, &[(start, start.saturating_add(size.max(1)))]);
        if unpinned {
            // Reported here as P3: the next full scan must not report the
            // same words again as P2.
            seen.get_or_insert_with(HashSet::new)
                .extend(found.iter().map(Finding::key));
        }
        found
    };
    let Some(first) = found.first() else {
        return false;
    };
    let message = if unpinned {
        msg::UNPINNED_WHILE_RETAINED
    } else {
        msg::FREED_WHILE_RETAINED
    };
    let mut v =
        Violation::new(ViolationKind::FreedWhileRetained, message.to_owned()).note(format!(
            "found by the mode-2 scan: {} word(s) of C memory point into it",
            found.len()
        ));
    if !unpinned {
        v = v.note("the memory is kept (leaked) so that C's pointer stays valid".into());
    }
    let v = v.note(held_by(first)).region_at("retained region", start);
    emit(with_holder(v, first, "held in"));
    true
}
