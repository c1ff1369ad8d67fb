//! Mode 2: catching C keeping what it was lent, by scanning C memory.
//!
//! Rules P2, P3 and P5 (SPEC §2). Go's `cgocheck=2` catches a Go pointer
//! written into C memory with a write barrier, at the write. Rust has no
//! barrier, and C keeping a pointer it was only lent is otherwise invisible
//! until the memory is freed and C reads it anyway. So mode 2 looks after the
//! fact: it reads every aligned word of the C memory it can see — the live C
//! regions it tracks, the *roots* (C storage registered with
//! `ffi_check_add_root`, [`add_root`], or a watched library's segments,
//! [`watch_library`]) and the writable segments of every loaded object,
//! the program's and the libraries' statics — and reports a word that
//! points into live, unpinned managed memory.
//!
//! When, and what a finding means:
//! - before an outermost [`call!`](crate::call!) starts: a new finding was
//!   written since the last scan, outside any checked call, so by Rust:
//!   `StoredUnpinned` (P5);
//! - after it returns: a new finding was written during the call, by C:
//!   `Retained` (P2), naming the call;
//! - in a static: only a finding that appeared during the call counts
//!   (`Retained`), since Rust's own statics hold pointers to its memory
//!   legitimately; one that appears outside a call is silently taken in;
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
//! The scan's input is a list of ranges ([`Ranges`]): nothing visits the
//! registry's records (the live C regions are listed apart), so its cost
//! follows the bytes read, not the records, live or freed. With the write
//! watch ([`crate::writewatch`]) only the pages written since the last scan
//! are read, and the findings elsewhere are kept as they were; without it
//! every scan reads everything. Each word is first compared with the bounds
//! of managed memory (a test the compiler vectorises over blocks of 64
//! words), so pointer-free memory streams past at memory speed; a word
//! inside them asks the registry's per-page unpinned counts before any
//! lookup.

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::mode::{checks_on, COMPILED_IN};
use crate::registry;
use crate::report::{emit, msg, Violation, ViolationKind};
use crate::segments;
use crate::site::Site;
use crate::writewatch::Unwatched;

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

// The state the scans change lives off the watched pages (see
// `writewatch::Unwatched`): a lock taken in a static would dirty the page
// the next scan then re-arms and reads.
static ROOTS: Unwatched<Mutex<Vec<Root>>> = Unwatched::new(|| Mutex::new(Vec::new()));

fn roots() -> MutexGuard<'static, Vec<Root>> {
    // Every change is completed before anything that could panic.
    ROOTS.get().lock().unwrap_or_else(|e| e.into_inner())
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

/// Where a range the scan reads comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A live tracked C region.
    CRegion,
    /// A root: its index in the scan's copy of the roots.
    Root(usize),
    /// A writable segment of a loaded object: the statics of the program
    /// and of every library, C's and Rust's alike.
    Segment,
}

/// One range the scan reads: all of its holder, or the part of it that
/// was written since the last scan.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    len: usize,
    source: Source,
    /// Where the holder (the C region, root or segment) starts.
    base: usize,
}

/// The scan's whole input: a list of ranges, and the roots they name.
///
/// Anything else C can write joins the list as further spans (the blocks of
/// an interposed `malloc`, say): the scan itself only reads ranges.
struct Ranges {
    spans: Vec<Span>,
    roots: Vec<Root>,
}

impl Ranges {
    /// The live tracked C regions, the roots and, with `segments`, the
    /// writable segments of every loaded object. Listing them visits no
    /// record: the registry keeps the live C regions apart.
    fn gather(segments: bool) -> Ranges {
        let _g = crate::bookkeeping::bookkeeping();
        let roots = roots().clone();
        let mut spans = Vec::new();
        registry::live_c_spans(|start, len| {
            spans.push(Span {
                start,
                len,
                source: Source::CRegion,
                base: start,
            })
        });
        spans.extend(roots.iter().enumerate().map(|(i, r)| Span {
            start: r.start,
            len: r.len,
            source: Source::Root(i),
            base: r.start,
        }));
        if segments {
            spans.extend(segment_spans());
        }
        interposed_spans(&mut spans);
        Ranges { spans, roots }
    }

    /// With the write watch: only the parts of the live C regions, the
    /// roots and the segments that lie in pages written since the last scan
    /// (which are re-armed), and those pages; `None` when the watch is off.
    /// The work follows the pages written and the ranges watched, not the
    /// number of live C regions (their pages' ranges are kept by the
    /// registry between changes).
    fn gather_written() -> Option<(Ranges, Vec<(usize, usize)>)> {
        if !crate::writewatch::on() {
            return None;
        }
        let _g = crate::bookkeeping::bookkeeping();
        let roots = roots().clone();
        let segments = segment_spans();
        let hulls = registry::live_c_hulls(crate::writewatch::page());
        let mut extra: Vec<(usize, usize)> = roots
            .iter()
            .map(|r| (r.start, r.start.saturating_add(r.len)))
            .collect();
        extra.extend(segments.iter().map(|s| (s.start, s.start + s.len)));
        extra.sort_unstable();
        // The live C regions' ranges come sorted (thousands of them, for a
        // million small blocks): merged with the few others, not sorted.
        let watched = merge_sorted(&hulls, &extra);
        let written = crate::writewatch::written(&watched)?;
        let mut spans = Vec::new();
        let clip = |spans: &mut Vec<Span>, span: Span, (ws, we): (usize, usize)| {
            let (s, e) = (
                ws.max(span.start),
                we.min(span.start.saturating_add(span.len)),
            );
            if s < e {
                spans.push(Span {
                    start: s,
                    len: e - s,
                    ..span
                });
            }
        };
        for &w in &written {
            registry::live_c_spans_in(w.0, w.1, |start, len| {
                let span = Span {
                    start,
                    len,
                    source: Source::CRegion,
                    base: start,
                };
                clip(&mut spans, span, w);
            });
            for (i, r) in roots.iter().enumerate() {
                let span = Span {
                    start: r.start,
                    len: r.len,
                    source: Source::Root(i),
                    base: r.start,
                };
                clip(&mut spans, span, w);
            }
            for &span in &segments {
                clip(&mut spans, span, w);
            }
        }
        // The interposed allocator's blocks are not watched: read whole.
        interposed_spans(&mut spans);
        Some((Ranges { spans, roots }, written))
    }

    /// True when `addr` lies in a root (a root inside a segment is reported
    /// as the root, once).
    fn in_root(&self, addr: usize) -> bool {
        self.roots
            .iter()
            .any(|r| r.start <= addr && addr - r.start < r.len)
    }
}

/// The ranges of two lists sorted by start, in one list sorted by start.
fn merge_sorted(a: &[(usize, usize)], b: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if j == b.len() || (i < a.len() && a[i] <= b[j]) {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out
}

/// With the C allocator interposed, every live C heap block is C memory
/// the scan reads (those the registry knows are listed already).
fn interposed_spans(spans: &mut Vec<Span>) {
    #[cfg(feature = "interpose")]
    crate::heap::for_each_live_c(|start, len| {
        spans.push(Span {
            start,
            len,
            source: Source::CRegion,
            base: start,
        })
    });
    #[cfg(not(feature = "interpose"))]
    let _ = spans;
}

/// Wipes the dead stack when dropped (see `heap::wipe_dead_stack`): what a
/// scan leaves there (addresses inside C blocks) must not keep a leaked
/// block reachable for a later leak scan.
#[cfg(feature = "interpose")]
struct WipeOnDrop;

#[cfg(feature = "interpose")]
impl Drop for WipeOnDrop {
    fn drop(&mut self) {
        crate::heap::wipe_dead_stack();
    }
}

/// The writable segments of the loaded objects as spans. (The checker's
/// own big tables, the page map's and the registry's roots, are mapped
/// apart, so the program's statics are one span, one question to the
/// write watch.)
fn segment_spans() -> Vec<Span> {
    writable_segments()
        .iter()
        .map(|&(start, len)| Span {
            start,
            len,
            source: Source::Segment,
            base: start,
        })
        .collect()
}

/// The writable segments of the loaded objects, `(start, len)`, read again
/// only when the loader's generation moves (reading them names every
/// object, a system call each).
///
/// The C library's and the dynamic loader's own statics are left out: their
/// allocator's state (bins, the top chunk) points into the heap, at chunks
/// next to live blocks, and changes with every `malloc` on any thread. A
/// program that wants them read anyway (`strtok`'s saved pointer, a
/// `setvbuf` buffer) can `watch_library("libc.so")`.
fn writable_segments() -> Vec<(usize, usize)> {
    // Taken only inside a scan, under `SEEN` (which `fork` holds): no
    // thread holds it across a fork.
    type Cached = ((u64, u64), Vec<(usize, usize)>);
    static CACHE: Unwatched<Mutex<Cached>> =
        Unwatched::new(|| Mutex::new(((u64::MAX, u64::MAX), Vec::new())));
    let _g = crate::bookkeeping::bookkeeping();
    let generation = segments::generation();
    let mut cache = CACHE.get().lock().unwrap_or_else(|e| e.into_inner());
    if cache.0 != generation {
        let fresh: Vec<(usize, usize)> = segments::writable()
            .iter()
            .filter(|s| s.len > 0 && !is_system_runtime(&s.object))
            .map(|s| (s.start, s.len))
            .collect();
        *cache = (generation, fresh);
    }
    cache.1.clone()
}

/// The C library and the dynamic loader, by path.
fn is_system_runtime(object: &str) -> bool {
    let file = object.rsplit('/').next().unwrap_or(object);
    ["libc.so", "libc-", "ld-linux", "ld-musl", "ld64.so"]
        .iter()
        .any(|p| file.starts_with(p))
}

/// What a found word points into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The live, unpinned managed region starting here.
    Managed(usize),
    /// The plain heap block of the tracking allocator starting here (not
    /// known to the registry).
    Heap(usize),
}

/// What holds a pointer that was found.
#[derive(Clone, Debug)]
enum Holder {
    /// The tracked C region starting here.
    Region(usize),
    /// A root, described.
    Root(String),
    /// A static (named when reported), and the call during which it was
    /// first found holding the pointer, when known.
    Static(Option<(&'static str, Site)>),
}

/// A word of C memory that points into managed memory.
#[derive(Clone, Debug)]
struct Finding {
    holder: Holder,
    /// Where the holder starts and where in it the word is.
    holder_start: usize,
    offset: usize,
    value: usize,
    target: Target,
}

impl Finding {
    fn word(&self) -> usize {
        self.holder_start + self.offset
    }

    fn key(&self) -> (usize, usize) {
        (self.word(), self.value)
    }

    fn target_start(&self) -> usize {
        match self.target {
            Target::Managed(s) | Target::Heap(s) => s,
        }
    }

    fn in_static(&self) -> bool {
        matches!(self.holder, Holder::Static(_))
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

/// The union of two `[lo, hi)` bounds, either of which may be empty.
fn union((alo, ahi): (usize, usize), (blo, bhi): (usize, usize)) -> (usize, usize) {
    match (alo < ahi, blo < bhi) {
        (true, true) => (alo.min(blo), ahi.max(bhi)),
        (true, false) => (alo, ahi),
        (false, true) => (blo, bhi),
        (false, false) => (usize::MAX, 0),
    }
}

fn holder_of(ranges: &Ranges, span: &Span) -> Holder {
    match span.source {
        Source::CRegion => Holder::Region(span.base),
        Source::Root(i) => Holder::Root(ranges.roots[i].describe()),
        Source::Segment => Holder::Static(None),
    }
}

/// Every word of the ranges that points into live, unpinned managed memory
/// that C has not declared it retains (plain heap blocks the registry knows
/// only under strict rules) and, with `heap`, to the start of a live heap
/// block of the tracking allocator that the registry does not know.
///
/// Each word is first compared with the bounds of all managed memory (a
/// test the compiler vectorises over blocks of 64 words), so pointer-free
/// memory streams past at memory speed; a word inside them asks the
/// registry's per-page unpinned counts before any lookup. Nothing here
/// visits the records: the cost follows the bytes read.
fn find(ranges: &Ranges, heap: bool) -> Vec<Finding> {
    let managed = registry::managed_bounds();
    let heap_bounds = if heap {
        crate::heap::heap_bounds()
    } else {
        (usize::MAX, 0)
    };
    let (lo, hi) = union(managed, heap_bounds);
    if lo >= hi {
        return Vec::new();
    }
    let _g = crate::bookkeeping::bookkeeping();
    let mut reader = registry::ScanReader::new();
    let mut hits: Vec<(usize, usize, usize, Target)> = Vec::new();
    with_seen_regions(|mut seen| {
        for (n, span) in ranges.spans.iter().enumerate() {
            // SAFETY: a live tracked C region is readable while it is live
            // (it is freed through the checker, which quarantines it); a
            // root is readable by the promise of whoever registered it; a
            // loaded object's segment while the object is loaded.
            unsafe {
                scan_words(span.start, span.len, lo, hi, |offset, w| {
                    let managed = match seen.as_deref_mut() {
                        Some(seen) => seen.unpinned_start(w, &mut reader),
                        None => reader
                            .managed_region(w)
                            .filter(|r| r.is_unpinned_managed())
                            .map(|r| r.start),
                    };
                    let target = if let Some(s) = managed {
                        Target::Managed(s)
                    } else if heap
                        && crate::heap::block_at(w).is_some_and(|b| !b.freed && !b.promoted)
                    {
                        Target::Heap(w)
                    } else {
                        return;
                    };
                    hits.push((n, offset, w, target));
                })
            };
        }
    });
    drop(reader);
    if hits.is_empty() {
        return Vec::new();
    }
    // Judged once a target: a region C declared it retains is mode 1's.
    let strict = crate::mode::strict();
    let mut judged: Vec<(usize, bool)> = Vec::new();
    let mut counts = |start: usize| -> bool {
        if let Some(&(_, yes)) = judged.iter().find(|(s, _)| *s == start) {
            return yes;
        }
        let yes = registry::update(start, |r| {
            r.retains == 0 && (strict || r.family == crate::family::FAMILY_RUST)
        })
        .unwrap_or(false);
        judged.push((start, yes));
        yes
    };
    let mut found = Vec::new();
    // The checker's own bounds are statics that hold region starts.
    let (rb, hb) = (registry::bound_words(), crate::heap::bound_words());
    for (n, offset, value, target) in hits {
        let span = &ranges.spans[n];
        let word = span.start + offset;
        if span.source == Source::Segment
            && (ranges.in_root(word) || rb.contains(&word) || hb.contains(&word))
        {
            continue;
        }
        let offset = span.start - span.base + offset;
        if let Target::Managed(s) = target {
            if !counts(s) {
                continue;
            }
        }
        found.push(Finding {
            holder: holder_of(ranges, span),
            holder_start: span.base,
            offset,
            value,
            target,
        });
    }
    found
}

/// The managed regions one scan found, by 64-byte granule of the word
/// (direct mapped): C memory dense with pointers into a few regions (pinned
/// ones, which the page filter cannot dismiss) asks the registry once a
/// region, not once a word. A slot counts only for the scan that filled it
/// (its number), so a scan starts without clearing the table: most scans
/// (the few pages written since the last one) meet no word in the bounds,
/// and one that does must not pay for zeroing a table of this size.
struct SeenRegions {
    scan: u32,
    /// `(start, end, unpinned, scan)`; made at the first word in bounds.
    slots: Vec<(usize, usize, bool, u32)>,
}

impl SeenRegions {
    const SLOTS: usize = 1 << 12;

    /// The start of the unpinned managed region `w` points into, if any:
    /// from the table when this scan saw its region, else asked of the
    /// registry and remembered.
    fn unpinned_start(&mut self, w: usize, reader: &mut registry::ScanReader) -> Option<usize> {
        if self.slots.is_empty() {
            self.slots = vec![(0, 0, false, 0); Self::SLOTS];
        }
        let slot = ((w >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) % Self::SLOTS;
        let (rs, re, unpinned, scan) = self.slots[slot];
        if scan == self.scan && rs <= w && w < re {
            return unpinned.then_some(rs);
        }
        let r = reader.managed_region(w)?;
        let unpinned = r.is_unpinned_managed();
        self.slots[slot] = (
            r.start,
            r.start.saturating_add(r.size.max(1)),
            unpinned,
            self.scan,
        );
        unpinned.then_some(r.start)
    }
}

thread_local! {
    static SEEN_REGIONS: std::cell::RefCell<SeenRegions> = const {
        std::cell::RefCell::new(SeenRegions { scan: 0, slots: Vec::new() })
    };
}

/// Runs `f` with this thread's [`SeenRegions`], numbered for a new scan,
/// or with none (every word asks the registry) where the table is in use
/// or gone (a scan inside a scan, a thread's exit).
fn with_seen_regions<R>(f: impl FnOnce(Option<&mut SeenRegions>) -> R) -> R {
    let mut f = Some(f);
    let done = SEEN_REGIONS.try_with(|c| {
        let Ok(mut seen) = c.try_borrow_mut() else {
            return None;
        };
        seen.scan = seen.scan.wrapping_add(1);
        if seen.scan == 0 {
            // The numbers wrapped: no slot may claim this scan.
            seen.slots.iter_mut().for_each(|s| s.3 = 0);
            seen.scan = 1;
        }
        f.take().map(|f| f(Some(&mut seen)))
    });
    match done {
        Ok(Some(r)) => r,
        _ => (f.take().expect("not called yet"))(None),
    }
}

/// Every word of the ranges that points into `[start, end)`.
fn find_into(ranges: &Ranges, start: usize, end: usize) -> Vec<Finding> {
    let mut found = Vec::new();
    for span in &ranges.spans {
        // SAFETY: as in `find`.
        unsafe {
            scan_words(span.start, span.len, start, end, |offset, value| {
                found.push(Finding {
                    holder: holder_of(ranges, span),
                    holder_start: span.base,
                    offset: span.start - span.base + offset,
                    value,
                    target: Target::Managed(start),
                })
            })
        };
    }
    found
}

// ---- statics found holding a pointer during a call ---------------------------

/// A static word found, when a call returned, holding a pointer that
/// appeared during the call: C's keeping, named by the call. Statics are not
/// read when memory is released (Rust's own hold pointers legitimately):
/// these words are, while they still hold what they held.
struct HeldWord {
    word: usize,
    value: usize,
    call: (&'static str, Site),
}

static HELD_WORDS: Unwatched<Mutex<Vec<HeldWord>>> = Unwatched::new(|| Mutex::new(Vec::new()));

fn held_words() -> MutexGuard<'static, Vec<HeldWord>> {
    // Every change is completed before anything that could panic.
    HELD_WORDS.get().lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a remembered static word, if its object is still loaded.
fn read_static(word: usize) -> Option<usize> {
    if !segments::contains(word, std::mem::size_of::<usize>()) {
        return None;
    }
    // SAFETY: the word is aligned (found by the aligned scan) and lies in a
    // loaded object's segment, which is mapped and readable.
    Some(unsafe { std::ptr::read_volatile(word as *const usize) })
}

/// Remembers static words found holding a pointer that appeared during
/// `call`; forgets the ones that no longer hold what they held.
fn remember_words(found: &[&Finding], call: (&'static str, Site)) {
    let _g = crate::bookkeeping::bookkeeping();
    let mut held = held_words();
    held.retain(|h| read_static(h.word) == Some(h.value));
    for f in found {
        held.retain(|h| h.word != f.word());
        held.push(HeldWord {
            word: f.word(),
            value: f.value,
            call,
        });
    }
}

/// The remembered static words that still point into `[start, end)`.
fn held_words_into(start: usize, end: usize) -> Vec<Finding> {
    let _g = crate::bookkeeping::bookkeeping();
    let mut held = held_words();
    held.retain(|h| read_static(h.word) == Some(h.value));
    held.iter()
        .filter(|h| start <= h.value && h.value < end)
        .map(|h| Finding {
            holder: Holder::Static(Some(h.call)),
            holder_start: h.word,
            offset: 0,
            value: h.value,
            target: Target::Managed(start),
        })
        .collect()
}

// ---- the scans -------------------------------------------------------------

/// What the last full scan found, by (word address, value): each finding is
/// reported once, and a static's finding counts only if it was not there
/// when the call began. Its lock also serialises the scans.
/// The findings of the last scan, by (word address, value).
type Seen = Option<HashSet<(usize, usize)>>;

static SEEN: Unwatched<Mutex<Seen>> = Unwatched::new(|| Mutex::new(None));

fn seen() -> MutexGuard<'static, Option<HashSet<(usize, usize)>>> {
    SEEN.get().lock().unwrap_or_else(|e| e.into_inner())
}

/// Outermost checked calls in progress that scan (mode 2), on all threads.
static IN_CALLS: Unwatched<AtomicUsize> = Unwatched::new(|| AtomicUsize::new(0));

thread_local! {
    /// This thread's part of `IN_CALLS`: what is left of it in the child of
    /// a `fork`, where the other threads' calls will never return.
    static OWN_CALLS: Cell<usize> = const { Cell::new(0) };
    /// Whether the scan before this thread's outermost call ran: only then
    /// does what is new in a static when it returns tell what the call
    /// wrote (otherwise it may be Rust's, from before).
    static BASELINE: Cell<bool> = const { Cell::new(false) };
}

/// The scans' lock, then the roots', held across `fork` (see `crate::fork`):
/// a scan takes the roots' inside its own.
pub(crate) struct ForkLocks {
    _seen: MutexGuard<'static, Option<HashSet<(usize, usize)>>>,
    _roots: MutexGuard<'static, Vec<Root>>,
    _held: MutexGuard<'static, Vec<HeldWord>>,
    _watch: crate::writewatch::ForkLock,
}

/// Takes the scans' and the roots' locks for `fork`'s prepare handler;
/// dropping the value releases them.
pub(crate) fn lock_for_fork() -> ForkLocks {
    ForkLocks {
        _seen: seen(),
        _roots: roots(),
        _held: held_words(),
        _watch: crate::writewatch::lock_for_fork(),
    }
}

/// In the child of a `fork` (one thread, the forking one): only this
/// thread's calls are still in progress, so the scans are not skipped
/// forever for calls that were under way on threads the child lacks.
pub(crate) fn after_fork_in_child() {
    let own = OWN_CALLS.try_with(Cell::get).unwrap_or(0);
    IN_CALLS.get().store(own, Ordering::SeqCst);
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
    IN_CALLS.get().fetch_add(1, Ordering::SeqCst);
    let _ = OWN_CALLS.try_with(|n| n.set(n.get() + 1));
    let ran = full_scan(Moment::BeforeCall(callee, site), 1);
    let _ = BASELINE.try_with(|b| b.set(ran));
}

/// Mode 2, after an outermost `call!` returned.
#[cold]
#[inline(never)]
pub(crate) fn after_call(callee: &'static str, site: Site) {
    IN_CALLS.get().fetch_sub(1, Ordering::SeqCst);
    let _ = OWN_CALLS.try_with(|n| n.set(n.get().saturating_sub(1)));
    if std::thread::panicking() {
        crate::frame::forget_lent();
        return;
    }
    full_scan(Moment::AfterCall(callee, site), 0);
    let _ = BASELINE.try_with(|b| b.set(false));
    crate::frame::forget_lent();
}

/// Runs the mode-2 scan now: reads all tracked live C memory, every root
/// and the writable segments of every loaded object, and reports each
/// pointer to unpinned managed memory found in C memory or a root that the
/// last scan did not see, as `StoredUnpinned` (rule P5). (A static's new
/// pointer is not reported here: outside a call it is Rust's.) Mode 2 runs
/// it before and after every outermost [`call!`](crate::call!) by itself;
/// this is for a check at a moment of your choosing (after C code ran
/// outside a `call!`, say), in any mode with checks on.
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

/// The scan for pointers into unpinned managed memory; `own_calls` is how
/// many calls in progress are this thread's own. Returns whether it ran.
///
/// Who is blamed for a new finding: in tracked C memory or a root, whoever
/// ran since the last scan (Rust before a call, C during it); in a static,
/// only the call it appeared during (Rust's statics hold pointers to its
/// own memory legitimately, so a static's new pointer outside a call is
/// nobody's fault), and for a plain heap block only one the call lent (a
/// C library's own bookkeeping in its statics may equal a block's start).
/// A plain heap block is no violation to hold: C found holding one when a
/// call returns is remembered, and judged at its free.
fn full_scan(moment: Moment, own_calls: usize) -> bool {
    if !checks_on() {
        return false;
    }
    #[cfg(feature = "interpose")]
    let _wipe = WipeOnDrop;
    let after = matches!(moment, Moment::AfterCall(..));
    // A static's new word is the call's only if the scan before it ran.
    let attributable = after && BASELINE.try_with(Cell::get).unwrap_or(false);
    let mut held_blocks = Vec::new();
    let mut held_statics = Vec::new();
    let (new, overruns) = {
        let mut seen = seen();
        // Another thread's C may hold its call's loans right now.
        if IN_CALLS.get().load(Ordering::SeqCst) > own_calls {
            return false;
        }
        // With the write watch, only what was written since the last scan
        // is read (guards included): the findings elsewhere are as they
        // were.
        let (ranges, partial, overruns) = match Ranges::gather_written() {
            Some((ranges, written)) => (ranges, true, crate::guard::check_in(&written)),
            None => (Ranges::gather(true), false, crate::guard::check_all()),
        };
        let found = find(&ranges, true);
        let _g = crate::bookkeeping::bookkeeping();
        let previous = seen.take().unwrap_or_default();
        let mut new: Vec<Finding> = Vec::new();
        for f in &found {
            let is_new = !previous.contains(&f.key());
            match (f.target, f.in_static()) {
                (Target::Managed(_), false) if is_new => new.push(f.clone()),
                (Target::Managed(_), true) if is_new && attributable => {
                    new.push(f.clone());
                    held_statics.push(f.clone());
                }
                // Remembered whoever wrote it (and before a call too: with
                // the write watch, a word Rust wrote is not read again
                // after the call).
                (Target::Heap(block), false) if !matches!(moment, Moment::Now(_)) => {
                    held_blocks.push(block)
                }
                // A static's word that happens to equal a block's start (a
                // C library's own bookkeeping, say) is not a hold: only a
                // block the call lent counts.
                (Target::Heap(block), true)
                    if is_new && attributable && crate::frame::was_lent(block) =>
                {
                    held_blocks.push(block);
                    held_statics.push(f.clone());
                }
                _ => {}
            }
        }
        let mut next = if partial {
            let mut read: Vec<(usize, usize)> = ranges
                .spans
                .iter()
                .map(|s| (s.start, s.start + s.len))
                .collect();
            read.sort_unstable();
            let mut kept = previous;
            kept.retain(|&(word, _)| {
                let i = read.partition_point(|r| r.0 <= word);
                !(i > 0 && word < read[i - 1].1)
            });
            kept
        } else {
            HashSet::new()
        };
        next.extend(found.iter().map(Finding::key));
        *seen = Some(next);
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
    if let Some(call) = call {
        held_blocks.sort_unstable();
        held_blocks.dedup();
        remember_held(&held_blocks, call.1);
        if !held_statics.is_empty() {
            remember_words(&held_statics.iter().collect::<Vec<_>>(), call);
        }
    }
    for f in &new {
        report_finding(f, moment);
    }
    true
}

/// Makes each held heap block known to the registry, naming the call during
/// which C was found holding it, so that its free is checked against the C
/// memory that still points into it.
///
/// Rust heap memory never moves, so C keeping such a pointer is no
/// violation by itself: its free while C memory still points into it is
/// `FreedWhileRetained`, found by the scan at the free.
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
        Moment::AfterCall(..) => with_holder(
            v.region_at("retained region", f.target_start()),
            f,
            "held in",
        ),
        _ => with_holder(v, f, "C region written").region_at("points to", f.target_start()),
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
        Holder::Static(since) => {
            let word = f.word();
            let name = segments::describe(word)
                .unwrap_or_else(|| "a static of a loaded object".to_owned());
            let since = match since {
                Some((callee, site)) => format!(
                    ", kept since the call to `{}` at {site}",
                    crate::frame::callee_name(callee)
                ),
                None => String::new(),
            };
            format!(
                "held by: {name} (the word at {word:#x}, the pointer {:#x}){since}",
                f.value
            )
        }
    }
}

fn with_holder(v: Violation, f: &Finding, role: &'static str) -> Violation {
    match f.holder {
        Holder::Region(start) => v.region_at(role, start),
        Holder::Root(_) | Holder::Static(_) => v,
    }
}

/// Rule P3 in mode 2, for the managed region `[start, start + size)` that is
/// being dropped (`unpinned` false) or has just been unpinned: reports every
/// word of C memory that still points into it, as `FreedWhileRetained`.
/// Returns whether one was found (a dropped region is then kept).
///
/// It reads the tracked C memory and the roots, and of the statics only
/// the words found keeping a pointer that appeared during a call.
pub(crate) fn check_release(start: usize, size: usize, unpinned: bool) -> bool {
    if !checks_on() {
        return false;
    }
    let end = start.saturating_add(size.max(1));
    let found = {
        let mut seen = seen();
        let ranges = Ranges::gather(false);
        let _g = crate::bookkeeping::bookkeeping();
        let mut found = find_into(&ranges, start, end);
        found.extend(held_words_into(start, end));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{NewRegion, RegionKind};

    #[test]
    fn a_region_remembered_by_one_scan_is_asked_again_by_the_next() {
        // Synthetic addresses of this test's own (the registry never reads
        // the memory it tracks).
        let start = 0x6b20_0000_0000usize;
        registry::insert(NewRegion {
            start,
            size: 256,
            kind: RegionKind::Managed,
            family: crate::family::FAMILY_RUST,
            flags: 0,
            site: Some(Site::caller()),
            type_name: None,
        });
        let ask = |w: usize| {
            let mut reader = registry::ScanReader::new();
            with_seen_regions(|seen| {
                let seen = seen.expect("this thread's table");
                // Twice in one scan: the second answer is the table's.
                let first = seen.unpinned_start(w, &mut reader);
                assert_eq!(seen.unpinned_start(w + 8, &mut reader), first);
                first
            })
        };
        assert_eq!(ask(start + 16), Some(start));
        // Pinned between two scans: the next scan does not take the last
        // one's word for it.
        registry::update(start, |r| r.pins += 1);
        assert_eq!(ask(start + 16), None);
        registry::update(start, |r| r.pins -= 1);
        assert_eq!(ask(start + 16), Some(start));
        registry::remove(start);
        assert_eq!(ask(start + 16), None);
    }

    #[test]
    fn a_scan_inside_a_scan_goes_without_the_table() {
        with_seen_regions(|outer| {
            assert!(outer.is_some());
            assert!(with_seen_regions(|inner| inner.is_none()));
        });
    }
}
