//! Leaks: C memory Rust owns that was never freed (rule C3) and pins that
//! never ended (rule P6), grouped by allocation site and printed the way
//! LeakSanitizer prints them.
//!
//! [`LeakCheck`] scopes the question to the regions the current thread
//! created inside the scope, so tests running in parallel do not see each
//! other's allocations.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Once;

use crate::heap::HandedToC;
use crate::pin::{live_pinners, PinnerLeak};
use crate::registry::{self, flags, RegionDetail, RegionKind, RegionState};
use crate::report::{msg, render_stack, ReportRegion, Violation, ViolationKind};
use crate::site::Site;

/// Leaked allocations that share an allocation site.
#[derive(Clone, Debug)]
pub struct LeakGroup {
    site: Option<Site>,
    count: usize,
    bytes: usize,
    example: RegionDetail,
}

impl LeakGroup {
    /// Where they were allocated (or adopted).
    pub fn site(&self) -> Option<Site> {
        self.site
    }
    /// How many allocations leaked there.
    pub fn count(&self) -> usize {
        self.count
    }
    /// How many bytes they hold in all.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The address of one of them.
    pub fn example_addr(&self) -> usize {
        self.example.start
    }
    /// The group as a `Leak` violation (its first line and `help:` line are
    /// those of the report).
    pub fn violation(&self) -> Violation {
        let site = self
            .site
            .map_or_else(|| "an unknown site".to_owned(), |s| s.to_string());
        Violation::new(
            ViolationKind::Leak,
            format!(
                "{}: {} byte(s) in {} allocation(s) from {site}",
                msg::LEAK,
                self.bytes,
                self.count
            ),
        )
        .without_backtrace()
        .region(ReportRegion::new("one of them", self.example.clone()))
    }
}

/// A `Pinner` that still held pins when the report was made.
#[derive(Clone, Debug)]
pub struct LeakedPin {
    inner: PinnerLeak,
}

impl LeakedPin {
    /// Where the `Pinner` was created.
    pub fn site(&self) -> Site {
        self.inner.site
    }
    /// How many regions it still pins.
    pub fn pinned_regions(&self) -> usize {
        self.inner.regions.len()
    }
    /// The pin as a `LeakedPin` violation.
    pub fn violation(&self) -> Violation {
        let mut v = Violation::new(ViolationKind::LeakedPin, msg::LEAKED_PIN.to_owned())
            .without_backtrace()
            .note(format!(
                "the Pinner created at {} still pins {} region(s)",
                self.inner.site,
                self.inner.regions.len()
            ));
        for start in self.inner.regions.iter().take(4) {
            v = v.region_at("still pinned", *start);
        }
        v
    }
}

/// What leaked: groups of leaked C allocations by site, leaked pins, and a
/// count of intended leaks. `Display` prints it like LeakSanitizer.
///
/// ```
/// let scope = ffi_check::LeakCheck::start();
/// let p = ffi_check::c_malloc(24);
/// let report = scope.finish();
/// if ffi_check::COMPILED_IN {
///     assert_eq!(report.groups().len(), 1);
///     assert_eq!(report.leaked_bytes(), 24);
///     assert!(report.to_string().contains("SUMMARY: ffi-check: 24 byte(s) leaked in 1 allocation(s)"));
/// }
/// // SAFETY: p came from c_malloc.
/// unsafe { ffi_check::c_free(p) };
/// ```
#[derive(Clone, Debug, Default)]
pub struct LeakReport {
    groups: Vec<LeakGroup>,
    pins: Vec<LeakedPin>,
    intended: Vec<RegionDetail>,
    handed: Vec<HandedToC>,
}

impl LeakReport {
    /// True when nothing leaked (intended leaks do not count).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.pins.is_empty()
    }
    /// Leaked allocations grouped by site, largest first.
    pub fn groups(&self) -> &[LeakGroup] {
        &self.groups
    }
    /// Pinners that still pin something.
    pub fn leaked_pins(&self) -> &[LeakedPin] {
        &self.pins
    }
    /// Bytes leaked in all.
    pub fn leaked_bytes(&self) -> usize {
        self.groups.iter().map(|g| g.bytes).sum()
    }
    /// Allocations leaked in all.
    pub fn leaked_allocations(&self) -> usize {
        self.groups.iter().map(|g| g.count).sum()
    }
    /// With the [`TrackingAllocator`](crate::TrackingAllocator): Rust heap
    /// blocks that were passed to C as `*mut` pointers (the shape
    /// `Box::into_raw` and `CString::into_raw` produce) and are still live.
    /// Those C took ownership of are never freed unless C hands them back
    /// (`Box::from_raw`); those Rust still owns are listed too, so they are
    /// shown apart and do not make [`is_empty`](LeakReport::is_empty) false.
    /// Only [`leak_report`] lists them, not a [`LeakCheck`] scope.
    pub fn handed_to_c(&self) -> &[HandedToC] {
        &self.handed
    }
    /// Allocations marked as intended leaks.
    pub fn intended_leaks(&self) -> usize {
        self.intended.len()
    }
    /// Every leak as a violation (`Leak` per group, `LeakedPin` per pinner).
    pub fn violations(&self) -> Vec<Violation> {
        self.groups
            .iter()
            .map(LeakGroup::violation)
            .chain(self.pins.iter().map(LeakedPin::violation))
            .collect()
    }
}

impl fmt::Display for LeakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        out.push_str("=================================================================\n");
        out.push_str("ffi-check: detected memory leaks\n");
        for g in &self.groups {
            let _ = write!(
                out,
                "\nLeak of {} byte(s) in {} allocation(s) of C memory allocated at {}\n",
                g.bytes,
                g.count,
                g.site
                    .map_or_else(|| "an unknown site".to_owned(), |s| s.to_string())
            );
            if let Some(id) = g.example.alloc_trace {
                render_stack(&mut out, id, "    ");
            }
        }
        for p in &self.pins {
            let _ = writeln!(
                out,
                "\nLeaked pin: the Pinner created at {} still pins {} region(s) ({})",
                p.inner.site,
                p.inner.regions.len(),
                msg::LEAKED_PIN
            );
        }
        if !self.intended.is_empty() {
            let _ = writeln!(
                out,
                "\n{} intended leak(s), not counted:",
                self.intended.len()
            );
            for d in self.intended.iter().take(8) {
                let _ = writeln!(
                    out,
                    "    {} byte(s) at {:#x}: {}",
                    d.size,
                    d.start,
                    d.leak_reason.as_deref().unwrap_or("")
                );
            }
        }
        if !self.handed.is_empty() {
            let _ = writeln!(
                out,
                "\n{} Rust heap block(s) passed to C as `*mut` and still live (handed over with `into_raw`?), not counted:",
                self.handed.len()
            );
            for h in self.handed.iter().take(16) {
                let _ = writeln!(
                    out,
                    "    {} byte(s) at {:#x}, passed to `{}` at {}",
                    h.size,
                    h.addr,
                    h.callee,
                    h.site
                        .map_or_else(|| "an unknown site".to_owned(), |s| s.to_string())
                );
            }
        }
        let _ = write!(
            out,
            "\nSUMMARY: ffi-check: {} byte(s) leaked in {} allocation(s); {} leaked pin(s).",
            self.leaked_bytes(),
            self.leaked_allocations(),
            self.pins.len()
        );
        f.write_str(&out)
    }
}

/// With the C allocator interposed: the C blocks that nothing reachable
/// points to (LeakSanitizer's method, `heap`'s leak scan), grouped by
/// allocation site, for the blocks `owned` picks. Blocks the registry knows
/// follow its own rules above.
#[cfg(feature = "interpose")]
fn unreachable_groups(
    owned: &dyn Fn(&crate::heap::CBlock) -> bool,
    stack_from: usize,
) -> Vec<LeakGroup> {
    if !crate::mode::COMPILED_IN {
        return Vec::new();
    }
    let blocks = crate::heap::unreachable_c_blocks(owned, stack_from);
    let _g = crate::bookkeeping::bookkeeping();
    // Grouped by the `call!` line and, with event backtraces on, the C
    // stack that allocated (LeakSanitizer groups by stack).
    type Key = (Option<Site>, Option<crate::stackdepot::StackId>);
    let mut by_site: HashMap<Key, (usize, usize, crate::heap::CBlock)> = HashMap::new();
    for b in blocks {
        let key = (b.alloc_site, crate::heap::c_alloc_trace(b.start));
        let e = by_site.entry(key).or_insert((0, 0, b));
        e.0 += 1;
        e.1 += b.size;
    }
    by_site
        .into_iter()
        .map(|((site, _), (count, bytes, example))| LeakGroup {
            site,
            count,
            bytes,
            example: crate::report::c_block_detail(example),
        })
        .collect()
}

/// `stack_from`: an address in the frame of the public function that asks
/// (the leak scan of C blocks reads this thread's stack from there up).
fn collect(
    scope: Option<(u32, u64)>,
    c_scope: Option<(u32, u64)>,
    stack_from: usize,
) -> LeakReport {
    #[cfg(not(feature = "interpose"))]
    let _ = (c_scope, stack_from);
    // Group under the shard locks with plain numbers; build the details
    // (clones of backtraces) only for one example per group.
    let mut by_site: HashMap<Option<Site>, (usize, usize, usize)> = HashMap::new();
    let mut intended_starts = Vec::new();
    registry::for_each(|start, r| {
        if r.kind != RegionKind::C || r.state != RegionState::Live {
            return;
        }
        if let Some((thread, first)) = scope {
            if r.thread() != thread || r.id() < first {
                return;
            }
        }
        if r.flags & flags::INTENDED_LEAK != 0 {
            intended_starts.push(start);
            return;
        }
        let e = by_site.entry(r.site).or_insert((0, 0, start));
        e.0 += 1;
        e.1 += r.size;
    });
    let mut groups: Vec<LeakGroup> = by_site
        .into_iter()
        .filter_map(|(site, (count, bytes, example))| {
            let example = registry::detail(example)?;
            Some(LeakGroup {
                site,
                count,
                bytes,
                example,
            })
        })
        .collect();
    #[cfg(feature = "interpose")]
    groups.extend(unreachable_groups(
        &|b: &crate::heap::CBlock| match c_scope {
            None => true,
            Some((thread, first)) => {
                let (t, seq) = b.clock();
                t == thread && seq >= first
            }
        },
        stack_from,
    ));
    groups.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.count.cmp(&b.count)));
    let intended = intended_starts
        .into_iter()
        .filter_map(registry::detail)
        .collect();
    let pins = live_pinners(scope)
        .into_iter()
        .map(|inner| LeakedPin { inner })
        .collect();
    LeakReport {
        groups,
        pins,
        intended,
        handed: if scope.is_none() {
            crate::heap::handed_to_c()
        } else {
            Vec::new()
        },
    }
}

/// Every live C allocation the checker tracks, and every `Pinner` still
/// pinning, in the whole process. Meant for the end of a program or test,
/// when every pin should have ended.
///
/// ```
/// let report = ffi_check::leak_report();
/// println!("{} byte(s) of C memory outstanding", report.leaked_bytes());
/// ```
#[inline(never)]
pub fn leak_report() -> LeakReport {
    let here = 0u8;
    collect(
        None,
        None,
        caller_stack(
            std::ptr::addr_of!(here) as usize,
            leak_report as *const () as usize,
        ),
    )
}

/// Where the leak scan reads this thread's stack from: the stack pointer of
/// the caller of the public function `me` (its frame's canonical frame
/// address), so that no word of that function's own frame counts. Its
/// frame lies where the caller's previous callees' frames lay (`call!(lose())`
/// then `finish()`), and a slot it leaves unwritten still holds a word of
/// theirs: a pointer C just lost would pass for reachable. Falls back to
/// `here`, an address in `me`'s frame, when the unwinder cannot tell.
#[inline(never)]
fn caller_stack(here: usize, me: usize) -> usize {
    if !cfg!(feature = "interpose") {
        return here;
    }
    // A frame's `sp` is its stack pointer while it runs: that of the frame
    // after `me`'s is the caller's, just above `me`'s return address.
    let mut from = here;
    let mut found = false;
    crate::bookkeeping::walk_stack(|frame| {
        if found {
            from = (frame.sp() as usize).max(here);
            return false;
        }
        found = frame.symbol_address() as usize == me;
        true
    });
    from
}

/// A leak scope: [`finish`](LeakCheck::finish) reports the C memory and pins
/// that the current thread created after [`start`](LeakCheck::start) and that
/// are still live. Other threads' allocations are not seen.
///
/// ```
/// let scope = ffi_check::LeakCheck::start();
/// let b = ffi_check::CBox::new(1u64);
/// drop(b);
/// assert!(scope.finish().is_empty());
/// ```
#[must_use = "call finish() to get the report"]
#[derive(Debug)]
pub struct LeakCheck {
    thread: u32,
    first_id: u64,
    /// The thread's serial and next sequence number among C blocks of the
    /// interposed allocator.
    c_first: (u32, u64),
}

impl LeakCheck {
    /// Starts a scope on this thread.
    pub fn start() -> LeakCheck {
        LeakCheck {
            thread: registry::thread_serial(),
            first_id: registry::next_id(),
            c_first: c_clock(),
        }
    }

    /// Ends the scope and reports what leaked in it.
    #[inline(never)]
    pub fn finish(self) -> LeakReport {
        let here = 0u8;
        if !crate::mode::COMPILED_IN {
            return LeakReport::default();
        }
        collect(
            Some((self.thread, self.first_id)),
            Some(self.c_first),
            caller_stack(
                std::ptr::addr_of!(here) as usize,
                LeakCheck::finish as *const () as usize,
            ),
        )
    }
}

/// This thread's clock among C blocks of the interposed allocator.
fn c_clock() -> (u32, u64) {
    #[cfg(feature = "interpose")]
    {
        crate::heap::c_clock()
    }
    #[cfg(not(feature = "interpose"))]
    {
        (0, 0)
    }
}

/// Runs `f` and panics with the full reports if any violation, or any new
/// leak of C memory (or pin) on this thread, happened inside it.
///
/// ```
/// let sum = ffi_check::assert_clean(|| {
///     let b = ffi_check::CBox::new(41u32);
///     *b + 1
/// });
/// assert_eq!(sum, 42);
/// ```
#[track_caller]
pub fn assert_clean<R>(f: impl FnOnce() -> R) -> R {
    let scope = LeakCheck::start();
    let (r, violations) = crate::report::capture(f);
    let leaks = scope.finish();
    if violations.is_empty() && leaks.is_empty() {
        return r;
    }
    let mut text = format!(
        "ffi-check: assert_clean found {} violation(s) and {} leak group(s)\n",
        violations.len(),
        leaks.groups().len() + leaks.leaked_pins().len()
    );
    for v in &violations {
        let _ = writeln!(text, "\n{v}");
    }
    if !leaks.is_empty() {
        let _ = writeln!(text, "\n{leaks}");
    }
    panic!("{text}");
}

/// Installs the at-exit leak report when `FFI_CHECK_LEAKS=1` (once).
fn install_exit_report_from_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if crate::mode::COMPILED_IN && crate::mode::leaks_at_exit() {
            // SAFETY: registering a plain extern "C" fn with atexit.
            unsafe { libc::atexit(exit_report) };
        }
    });
}

/// Registers the at-exit leak report before `main`, from the environment:
/// the leak report sits above the configuration it follows, so it installs
/// itself rather than being called up into from the mode's first read.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static INSTALL_EXIT_REPORT: extern "C" fn() = {
    extern "C" fn install() {
        // Never unwind out of a constructor.
        let _ = std::panic::catch_unwind(install_exit_report_from_env);
    }
    install
};

extern "C" fn exit_report() {
    // Never unwind out of an atexit handler.
    let _ = std::panic::catch_unwind(|| {
        let report = leak_report();
        if !report.is_empty() {
            crate::stderr::write_stderr(&format!("{report}\n"));
        }
    });
}
