//! The write watch: which pages of the memory mode 2 scans were written
//! since it last looked, asked of the kernel, so a scan reads only those.
//!
//! Linux 6.7 and later track writes without soft-dirty bits: a range
//! registered with `userfaultfd` in asynchronous write-protect mode
//! (`UFFD_FEATURE_WP_ASYNC`, with `UFFD_FEATURE_WP_UNPOPULATED` so that
//! pages not yet touched count too) takes no fault to user space on a write;
//! the kernel just notes the page written. `ioctl(PAGEMAP_SCAN)` on
//! `/proc/self/pagemap`, with `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`
//! and the category `PAGE_IS_WRITTEN`, returns the pages written since the
//! last scan and write-protects them again in the same step. The system
//! headers may be older than the kernel, so the constants and structures
//! are declared here by hand, from the kernel's `linux/userfaultfd.h` and
//! `linux/fs.h`.
//!
//! Where the kernel refuses (an older kernel, `vm.unprivileged_userfaultfd`
//! off without privilege, or `FFI_CHECK_WRITE_WATCH=0`), [`start`] says no
//! and the scans read everything, as before. Which one is in use is said
//! once on stderr. A range the kernel will not watch (another user of
//! `userfaultfd` holds it, say) is reported as written at every scan: read
//! in full, never missed.
//!
//! The state the scans change (their locks, what they found) is kept in
//! [`Unwatched`] memory, outside every loaded object's segments: a scan
//! that took a lock in a static would dirty a watched page itself, and
//! every call would then pay that page's write fault, its re-arming and
//! its reading.
//!
//! Invariants: `registered` holds page-aligned, sorted, disjoint ranges,
//! each registered with the file descriptor `uffd`; everything is reached
//! under the [`WATCH`] mutex (the scans hold their own lock around it, so
//! one scan asks at a time), and allocated as bookkeeping.
//!
//! A ground-floor module: it uses [`bookkeeping`](crate::bookkeeping),
//! [`mode`](crate::mode)'s environment reader and [`stderr`](crate::stderr).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::bookkeeping::bookkeeping;

// ---- state kept off the watched pages ------------------------------------------

/// A `static`'s value kept in memory of its own, mapped from the kernel on
/// first use and never freed, instead of in the program's `.data`/`.bss`:
/// changing it (taking a lock it holds) dirties no page of a loaded
/// object's segments, which the write watch watches and the scans read.
///
/// `T` must be at most page-aligned. Only the pointer lives in the static,
/// written once.
pub(crate) struct Unwatched<T> {
    ptr: AtomicPtr<T>,
    init: fn() -> T,
    /// Shared between threads as a `&T` would be.
    _value: PhantomData<T>,
}

impl<T> Unwatched<T> {
    /// A value made by `init` on first use.
    pub(crate) const fn new(init: fn() -> T) -> Self {
        Unwatched {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            init,
            _value: PhantomData,
        }
    }

    /// The value, made on first use.
    #[inline]
    pub(crate) fn get(&'static self) -> &'static T {
        let p = self.ptr.load(Ordering::Acquire);
        if p.is_null() {
            return self.place();
        }
        // SAFETY: a non-null pointer was published by `place` (Release,
        // read with Acquire) after the value was written; it is never freed
        // nor written through again.
        unsafe { &*p }
    }

    #[cold]
    #[inline(never)]
    fn place(&'static self) -> &'static T {
        let _g = bookkeeping();
        let size = std::mem::size_of::<T>().max(1);
        let fresh = match crate::bookkeeping::map_anonymous(size) {
            Some(m) if std::mem::align_of::<T>() <= page() => {
                let m = m.cast::<T>();
                // SAFETY: `m` is a fresh mapping of at least `size` bytes,
                // page-aligned (so aligned for `T`), written once here.
                unsafe { m.write((self.init)()) };
                m
            }
            // Out of mappings: on the heap, as the checker's own.
            _ => Box::into_raw(Box::new((self.init)())),
        };
        match self.ptr.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: just published; never freed.
            Ok(_) => unsafe { &*fresh },
            Err(won) => {
                // Another thread placed its value first: ours was never
                // shared, and is dropped (the mapping or box leaks; this
                // happens at most once per racing thread).
                // SAFETY: `fresh` holds a value written above and seen by
                // no one else.
                unsafe { std::ptr::drop_in_place(fresh) };
                // SAFETY: as in `get`.
                unsafe { &*won }
            }
        }
    }
}

// ---- the kernel's interface (linux/userfaultfd.h, linux/fs.h) ----------------

const UFFD_API: u64 = 0xAA;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `_IOC(dir, type, nr, size)` of `asm-generic/ioctl.h`.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_READ_WRITE: u64 = 3;
const UFFDIO_API: u64 = ioc(IOC_READ_WRITE, 0xAA, 0x3F, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ_WRITE,
    0xAA,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);

const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGEMAP_SCAN: u64 = ioc(
    IOC_READ_WRITE,
    b'f' as u64,
    16,
    std::mem::size_of::<PmScanArg>(),
);

// ---- the watch ------------------------------------------------------------------

struct Watch {
    uffd: libc::c_int,
    pagemap: libc::c_int,
    registered: Vec<(usize, usize)>,
    /// Written pages found by the last [`written`], reused.
    regions: Vec<PageRegion>,
}

enum State {
    Undecided,
    Off,
    On(Watch),
}

static WATCH: Unwatched<Mutex<State>> = Unwatched::new(|| Mutex::new(State::Undecided));

/// Whether stderr was told which scan is in use.
static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn watch() -> MutexGuard<'static, State> {
    // Every change is completed before anything that could panic.
    WATCH.get().lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(1)
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Opens the userfaultfd and the pagemap and checks that the kernel has the
/// features; why not, otherwise.
fn open() -> Result<Watch, String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // User-mode-only faults are what an unprivileged process may ask for
    // when `vm.unprivileged_userfaultfd` is off; older kernels lack the flag.
    // SAFETY: the userfaultfd system call takes flags and returns a file
    // descriptor or -1.
    let mut uffd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
    if uffd < 0 {
        // SAFETY: as above.
        uffd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    }
    if uffd < 0 {
        return Err(format!("userfaultfd: {}", errno()));
    }
    let uffd = uffd as libc::c_int;
    let close = |why: String| {
        // SAFETY: `uffd` is ours and closed once.
        unsafe { libc::close(uffd) };
        Err(why)
    };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes the `uffdio_api` it is given.
    if unsafe { libc::ioctl(uffd, UFFDIO_API as _, &mut api as *mut UffdioApi) } != 0 {
        return close(format!(
            "the kernel lacks asynchronous write-protect userfaultfd: {}",
            errno()
        ));
    }
    let path = c"/proc/self/pagemap";
    // SAFETY: a NUL-terminated path; the descriptor is kept.
    let pagemap = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if pagemap < 0 {
        return close(format!("/proc/self/pagemap: {}", errno()));
    }
    let mut w = Watch {
        uffd,
        pagemap,
        registered: Vec::new(),
        // The kernel allocates a buffer of as many regions (at most 512)
        // at every PAGEMAP_SCAN: past 341 of them it takes whole pages
        // from the page allocator, a cost every call paid. A scan that
        // fills the list is continued from where it stopped.
        regions: vec![PageRegion::default(); 64],
    };
    // PAGEMAP_SCAN itself (Linux 6.7): tried on a page of our own.
    let probe = crate::bookkeeping::map_anonymous(page());
    let works = probe.is_some_and(|p| {
        let (start, len) = (p as usize, page());
        let ok = w.register(start, len) && w.scan(start, start + len).is_ok();
        // SAFETY: the probe page is ours and unused.
        unsafe { libc::munmap(p, len) };
        ok
    });
    w.registered.clear();
    if !works {
        // SAFETY: both descriptors are ours and closed once.
        unsafe {
            libc::close(pagemap);
        }
        return close(format!("PAGEMAP_SCAN with the write watch: {}", errno()));
    }
    Ok(w)
}

impl Watch {
    /// Registers `[start, start + len)` (page-aligned) for write tracking.
    fn register(&mut self, start: usize, len: usize) -> bool {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes the `uffdio_register` it
        // is given; it only changes how the kernel tracks the range.
        let ok = unsafe {
            libc::ioctl(
                self.uffd,
                UFFDIO_REGISTER as _,
                &mut reg as *mut UffdioRegister,
            )
        } == 0;
        if ok {
            let i = self.registered.partition_point(|r| r.0 < start);
            self.registered.insert(i, (start, start + len));
            // Neighbours that touch merge, so the list stays short.
            let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.registered.len());
            for &(s, e) in &self.registered {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            self.registered = merged;
        }
        ok
    }

    fn is_registered(&self, start: usize, end: usize) -> bool {
        let i = self.registered.partition_point(|r| r.1 <= start);
        self.registered
            .get(i)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }

    /// The pages of `[start, end)` written since the last scan of them,
    /// which are write-protected again, appended to `out` as ranges.
    fn scan(&mut self, start: usize, end: usize) -> Result<Vec<(usize, usize)>, ()> {
        let mut out = Vec::new();
        let mut from = start;
        while from < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                start: from as u64,
                end: end as u64,
                walk_end: 0,
                vec: self.regions.as_mut_ptr() as u64,
                vec_len: self.regions.len() as u64,
                max_pages: 0,
                category_inverted: 0,
                category_mask: PAGE_IS_WRITTEN,
                category_anyof_mask: 0,
                return_mask: PAGE_IS_WRITTEN,
            };
            // SAFETY: PAGEMAP_SCAN reads the `pm_scan_arg` and writes at
            // most `vec_len` `page_region`s into `vec`, our buffer.
            let n =
                unsafe { libc::ioctl(self.pagemap, PAGEMAP_SCAN as _, &mut arg as *mut PmScanArg) };
            if n < 0 {
                return Err(());
            }
            for r in &self.regions[..(n as usize).min(self.regions.len())] {
                out.push((r.start as usize, r.end as usize));
            }
            let walked = arg.walk_end as usize;
            if walked <= from {
                break;
            }
            from = walked;
        }
        Ok(out)
    }
}

/// Whether the write watch is in use (deciding it, and saying which one is
/// in use on stderr, the first time).
pub(crate) fn on() -> bool {
    let mut state = watch();
    if matches!(*state, State::Undecided) {
        let _g = bookkeeping();
        let wanted = crate::mode::parse_env("FFI_CHECK_WRITE_WATCH", 1, |s| match s {
            "0" => Some(0),
            "1" => Some(1),
            _ => None,
        }) == 1;
        let (next, said) = if !wanted {
            (
                State::Off,
                "ffi-check: mode 2 reads all the C memory it scans at every call (the write watch is off: FFI_CHECK_WRITE_WATCH=0)\n".to_owned(),
            )
        } else {
            match open() {
                Ok(w) => (
                    State::On(w),
                    "ffi-check: mode 2 reads only the pages written during each call (write watch: userfaultfd + PAGEMAP_SCAN)\n".to_owned(),
                ),
                Err(why) => (
                    State::Off,
                    format!("ffi-check: mode 2 reads all the C memory it scans at every call (no write watch: {why})\n"),
                ),
            }
        };
        *state = next;
        // Once a process: a child of `fork` decides anew, silently.
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            crate::stderr::write_stderr(&said);
        }
    }
    matches!(*state, State::On(_))
}

/// Turns the watch off (`false`) or lets the next scan decide anew
/// (`true`), for the benchmarks that compare it with the full scan.
pub(crate) fn set_enabled(on: bool) {
    replace_state(if on { State::Undecided } else { State::Off });
}

/// Closes the watch's descriptors, if it is on, and puts `next` in its
/// place.
fn replace_state(next: State) {
    let mut state = watch();
    if let State::On(w) = &*state {
        // SAFETY: the watch's descriptors, closed once: the state is
        // replaced below.
        unsafe {
            libc::close(w.uffd);
            libc::close(w.pagemap);
        }
    }
    let _g = bookkeeping();
    *state = next;
}

/// For each of `ranges` (sorted by start, `(start, end)`), the parts that
/// were written since the last call, re-armed: `None` when the watch is off
/// or the kernel stopped answering (then every range must be read whole,
/// and the watch is off from then on). A range it cannot watch comes back
/// whole.
pub(crate) fn written(ranges: &[(usize, usize)]) -> Option<Vec<(usize, usize)>> {
    let mut state = watch();
    let State::On(w) = &mut *state else {
        return None;
    };
    let _g = bookkeeping();
    let page = page();
    // The pages the ranges cover, merged.
    let mut hulls: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges {
        if start >= end {
            continue;
        }
        let (s, e) = (
            start & !(page - 1),
            end.saturating_add(page - 1) & !(page - 1),
        );
        match hulls.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => hulls.push((s, e)),
        }
    }
    // Ranges a few pages apart are asked about as one: each question costs
    // the kernel a few microseconds whatever its size, and a million small
    // C blocks, with the checker's own records between them, make
    // thousands of ranges. The pages between them are registered too;
    // what is written there is reported and never read (the callers clip
    // to their ranges), and a page there written again after a scan takes
    // one write fault.
    let mut out = Vec::new();
    let mut i = 0;
    while i < hulls.len() {
        let mut j = i + 1;
        while j < hulls.len() && hulls[j].0 - hulls[j - 1].1 <= MERGE_GAP_PAGES * page {
            j += 1;
        }
        let (s, e) = (hulls[i].0, hulls[j - 1].1);
        if e - s <= READ_WHOLE_PAGES * page {
            // Cheaper read than asked about: a question costs the kernel
            // more than reading a page or two (a shared library's few
            // pages of data, say).
            out.push((s, e));
        } else if j - i == 1 || !w.ask(s, e, &mut out) {
            // One range, or a group the kernel will not watch whole (a
            // mapping between that refuses): one question a range.
            for &(s, e) in &hulls[i..j] {
                if !w.ask(s, e, &mut out) {
                    // Not watchable (another userfaultfd, a mapping that
                    // refuses): read whole, every time.
                    out.push((s, e));
                }
            }
        }
        i = j;
    }
    Some(out)
}

/// How far apart (in pages) two watched ranges may be and still be asked
/// about in one `PAGEMAP_SCAN`.
const MERGE_GAP_PAGES: usize = 16;

/// The most pages a group of ranges may span and be read whole at every
/// scan rather than watched: one `PAGEMAP_SCAN` costs more than reading
/// this much.
const READ_WHOLE_PAGES: usize = 2;

impl Watch {
    /// Appends the written pages of `[s, e)` (page-aligned) to `out`,
    /// registering the range first if need be; false (and nothing
    /// appended) when the kernel will not watch it.
    fn ask(&mut self, s: usize, e: usize, out: &mut Vec<(usize, usize)>) -> bool {
        if !self.is_registered(s, e) && !self.register(s, e - s) {
            return false;
        }
        match self.scan(s, e) {
            Ok(pages) => out.extend(pages),
            Err(()) => {
                // The mapping changed under the registration (unmapped and
                // mapped again): register it anew and ask again.
                self.registered.retain(|&(rs, re)| re <= s || e <= rs);
                match self.register(s, e - s).then(|| self.scan(s, e)) {
                    Some(Ok(pages)) => out.extend(pages),
                    _ => return false,
                }
            }
        }
        true
    }
}

/// The watch's lock, held across `fork` (see `crate::fork`).
pub(crate) struct ForkLock {
    _watch: MutexGuard<'static, State>,
}

/// Takes the watch's lock for `fork`'s prepare handler.
pub(crate) fn lock_for_fork() -> ForkLock {
    ForkLock { _watch: watch() }
}

/// In the child of a `fork`: the descriptors are the parent's (its
/// `/proc/self/pagemap` names the parent, and the kernel dropped the
/// child's registrations), so they are closed and the watch is decided
/// again at the child's next scan.
pub(crate) fn after_fork_in_child() {
    replace_state(State::Undecided);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a kernel with the write watch, a written page is found once:
    /// the scan re-arms it. (Elsewhere the watch is off and says so.)
    #[test]
    fn a_written_page_is_found_once() {
        let mut w = match open() {
            Ok(w) => w,
            Err(why) => {
                eprintln!("no write watch here: {why}");
                return;
            }
        };
        let len = 8 * page();
        let p = crate::bookkeeping::map_anonymous(len).unwrap() as usize;
        assert!(w.register(p, len));
        // Every page counts as written before the first scan.
        let first = w.scan(p, p + len).unwrap();
        assert_eq!(first.iter().map(|r| r.1 - r.0).sum::<usize>(), len);
        assert!(w.scan(p, p + len).unwrap().is_empty());
        // SAFETY: the mapping is ours.
        unsafe { *((p + 3 * page() + 8) as *mut u64) = 7 };
        assert_eq!(
            w.scan(p, p + len).unwrap(),
            vec![(p + 3 * page(), p + 4 * page())]
        );
        assert!(w.scan(p, p + len).unwrap().is_empty());
        // SAFETY: the mapping is ours and unused from here on.
        unsafe { libc::munmap(p as *mut libc::c_void, len) };
    }

    /// A range of a page or two (a shared library's data, say) is read
    /// whole at every scan, not asked about: cheaper than the question.
    #[test]
    fn a_range_of_a_page_or_two_is_read_whole_every_time() {
        if !on() {
            return;
        }
        let len = READ_WHOLE_PAGES * page();
        let p = crate::bookkeeping::map_anonymous(len).unwrap() as usize;
        for _ in 0..3 {
            assert_eq!(written(&[(p + 8, p + len - 8)]), Some(vec![(p, p + len)]));
        }
        // One page more is watched: found written once, then not.
        let big = crate::bookkeeping::map_anonymous(len + page()).unwrap() as usize;
        let whole = written(&[(big, big + len + page())]).unwrap();
        assert_eq!(whole.iter().map(|r| r.1 - r.0).sum::<usize>(), len + page());
        assert_eq!(written(&[(big, big + len + page())]), Some(vec![]));
        // SAFETY: the mappings are ours and unused from here on.
        unsafe {
            libc::munmap(p as *mut libc::c_void, len);
            libc::munmap(big as *mut libc::c_void, len + page());
        }
    }

    /// Reading a watched range (as the scan does) is not writing it: a
    /// large `malloc` block read whole is found written once, then not.
    #[test]
    fn a_range_read_but_not_written_is_not_found_again() {
        if !on() {
            return;
        }
        let len = 8 << 20;
        // SAFETY: a plain allocation, freed below.
        let p = unsafe { libc::calloc(1, len) } as usize;
        assert_ne!(p, 0);
        let sum = |p: usize| {
            // SAFETY: the block is ours and `len` bytes long.
            let words = unsafe { std::slice::from_raw_parts(p as *const u64, len / 8) };
            words.iter().fold(0u64, |a, w| a ^ w)
        };
        let first = written(&[(p, p + len)]).unwrap();
        assert!(first.iter().map(|r| r.1 - r.0).sum::<usize>() >= len);
        assert_eq!(sum(p), 0);
        let again = written(&[(p, p + len)]).unwrap();
        assert!(
            again.iter().map(|r| r.1 - r.0).sum::<usize>() <= 2 * page(),
            "{} bytes found written after a read",
            again.iter().map(|r| r.1 - r.0).sum::<usize>()
        );
        // SAFETY: inside the block.
        unsafe { *((p + len / 2) as *mut u64) = 1 };
        let one = written(&[(p, p + len)]).unwrap();
        assert_eq!(
            one.iter().map(|r| r.1 - r.0).sum::<usize>(),
            page(),
            "{one:x?}"
        );
        // SAFETY: allocated above, freed once.
        unsafe { libc::free(p as *mut libc::c_void) };
    }
}
