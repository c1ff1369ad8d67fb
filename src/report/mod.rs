//! Violations: what each rule's breach is called, how it is worded, and what
//! happens once one is found (panic, abort, log, or capture), plus the
//! counters behind [`stats`] and the JSON-lines log (`FFI_CHECK_LOG`).
//!
//! Every message and every `help:` line is defined once, here, in
//! [`ViolationKind`]; the checking modules describe *what* they found and
//! this module decides what it does. The functions that build a report are
//! cold: they run only when a rule is broken.
//!
//! A region in a report is described by asking the floors below: the
//! registry's record, or for a heap block it never knew, the tracking
//! allocator's header and quarantine (`heap`). The parts: this file holds the
//! kinds, the messages and the [`Violation`] value; `render` its text,
//! `emit` what it does, `stats` the public counters.

use std::fmt::{self, Write as _};

use backtrace::Backtrace;

use crate::registry::{RegionDetail, RegionKind, RegionState};
use crate::site::Site;

mod emit;
mod render;
mod stats;

pub use emit::capture;
pub(crate) use emit::{emit, enter_callback, in_callback};
use render::{current_thread_name, json_str, render_region, site_plain};
pub(crate) use render::{render_backtrace, render_stack};
pub use stats::{stats, Stats};

/// The kinds of violation, one per way of breaking a rule of SPEC §2.
///
/// ```
/// use ffi_check::ViolationKind;
/// assert_eq!(ViolationKind::DoubleFree.rule(), "C1");
/// assert_eq!(ViolationKind::UnpinnedNested.to_string(), "UnpinnedNested");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ViolationKind {
    /// P1: memory lent to C holds a pointer to unpinned managed memory.
    UnpinnedNested,
    /// P2: C keeps a pointer to unpinned managed memory after the call.
    Retained,
    /// P3: managed memory freed or unpinned while C still holds a retain.
    FreedWhileRetained,
    /// P3: a `Managed` dropped while a `Pinner` still pins it.
    FreedWhilePinned,
    /// P4: a callback returned a pointer to unpinned managed memory to C.
    CallbackReturnedUnpinned,
    /// P5: Rust stored a pointer to unpinned managed memory in C memory.
    StoredUnpinned,
    /// P6: a `Pinner` was leaked while it pinned something.
    LeakedPin,
    /// C1: C memory freed a second time.
    DoubleFree,
    /// C1: a free of something no C allocator returned (managed memory, an
    /// interior pointer, an unknown address).
    InvalidFree,
    /// C1: C memory freed with another allocator's deallocator.
    MismatchedFree,
    /// C2: a pointer into freed tracked memory crossed the boundary.
    UseAfterFree,
    /// C3: C memory that Rust owns was never freed.
    Leak,
    /// X1: a number does not fit the C type it is converted to.
    LossyConversion,
    /// X2: a string going to C holds a NUL byte before its end.
    InteriorNul,
    /// X2: a NULL pointer where C promised a string or a non-empty buffer.
    NullPointer,
    /// X2: no NUL terminator within the tracked region of a C string.
    UnterminatedString,
    /// X2: a C string that is not UTF-8 where a `str` is asked for.
    InvalidUtf8,
    /// C4 (mode 2): C wrote outside a guarded C allocation it was lent: the
    /// guard bytes before or after the block changed.
    GuardOverrun,
    /// C4: a buffer from C said to be longer than the tracked region it lies
    /// in (or longer than any buffer can be): reading it would read past the
    /// memory.
    OutOfBounds,
    /// P2 (mode 2): a root registered for the scans that is not readable
    /// memory for its whole length, or whose end overflows.
    InvalidRoot,
}

impl ViolationKind {
    /// Every kind, in rule order.
    pub const ALL: [ViolationKind; 20] = [
        ViolationKind::UnpinnedNested,
        ViolationKind::Retained,
        ViolationKind::FreedWhileRetained,
        ViolationKind::FreedWhilePinned,
        ViolationKind::CallbackReturnedUnpinned,
        ViolationKind::StoredUnpinned,
        ViolationKind::LeakedPin,
        ViolationKind::DoubleFree,
        ViolationKind::InvalidFree,
        ViolationKind::MismatchedFree,
        ViolationKind::UseAfterFree,
        ViolationKind::Leak,
        ViolationKind::LossyConversion,
        ViolationKind::InteriorNul,
        ViolationKind::NullPointer,
        ViolationKind::UnterminatedString,
        ViolationKind::InvalidUtf8,
        ViolationKind::GuardOverrun,
        ViolationKind::OutOfBounds,
        ViolationKind::InvalidRoot,
    ];

    /// The rule this kind breaks (`"P1"` … `"X2"`; `"C4"` for the guard
    /// bytes of mode 2: C writes only inside the C memory it is given).
    pub fn rule(self) -> &'static str {
        use ViolationKind::*;
        match self {
            UnpinnedNested => "P1",
            Retained | InvalidRoot => "P2",
            FreedWhileRetained | FreedWhilePinned => "P3",
            CallbackReturnedUnpinned => "P4",
            StoredUnpinned => "P5",
            LeakedPin => "P6",
            DoubleFree | InvalidFree | MismatchedFree => "C1",
            UseAfterFree => "C2",
            Leak => "C3",
            GuardOverrun | OutOfBounds => "C4",
            LossyConversion => "X1",
            InteriorNul | NullPointer | UnterminatedString | InvalidUtf8 => "X2",
        }
    }

    /// The variant's name, as in the JSON log's `kind` field.
    pub fn name(self) -> &'static str {
        use ViolationKind::*;
        match self {
            UnpinnedNested => "UnpinnedNested",
            Retained => "Retained",
            FreedWhileRetained => "FreedWhileRetained",
            FreedWhilePinned => "FreedWhilePinned",
            CallbackReturnedUnpinned => "CallbackReturnedUnpinned",
            StoredUnpinned => "StoredUnpinned",
            LeakedPin => "LeakedPin",
            DoubleFree => "DoubleFree",
            InvalidFree => "InvalidFree",
            MismatchedFree => "MismatchedFree",
            UseAfterFree => "UseAfterFree",
            Leak => "Leak",
            LossyConversion => "LossyConversion",
            InteriorNul => "InteriorNul",
            NullPointer => "NullPointer",
            UnterminatedString => "UnterminatedString",
            InvalidUtf8 => "InvalidUtf8",
            GuardOverrun => "GuardOverrun",
            OutOfBounds => "OutOfBounds",
            InvalidRoot => "InvalidRoot",
        }
    }

    /// The one `help:` line of this kind's reports.
    pub fn help(self) -> &'static str {
        use ViolationKind::*;
        match self {
            UnpinnedNested => "pin the memory the nested pointer points to (`Pinner::pin`, or keep it in a `Pinned<T>`) for as long as C can see it",
            Retained => "pin the memory (`Pinner` or `Pinned<T>`) before C keeps a pointer to it, or give C its own copy in C memory (`CBox`)",
            FreedWhileRetained => "make C release the pointer (`ffi_check_release`, or the library's own release call) before the memory is dropped or unpinned",
            FreedWhilePinned => "drop or `unpin` the `Pinner` before dropping the memory it pins",
            CallbackReturnedUnpinned => "return C memory (`CBox::into_raw`) or pinned memory (`Pinned<T>`) from a callback, never a pointer to a temporary Rust value",
            StoredUnpinned => "pin the memory (`Pinner` or `Pinned<T>`) before storing a pointer to it in C memory",
            LeakedPin => "let the `Pinner` drop or call `Pinner::unpin` once C no longer needs the memory; never `mem::forget` a `Pinner`",
            DoubleFree => "free C memory exactly once: let one owner (`CBox`) free it, and use `CBox::into_raw` when C takes ownership",
            InvalidFree => "free only the exact pointer a C allocator returned; Rust memory is freed by Rust (drop it), C memory by C's deallocator",
            MismatchedFree => "free memory with the deallocator of the allocator that made it (`CBox::from_raw_with` records it)",
            UseAfterFree => "keep the memory alive for as long as C may use the pointer (bind it to a variable that outlives the call; see the `dangling_pointers_from_temporaries` lint)",
            Leak => "free it (drop the `CBox`, call the library's destroy function), or mark it with `ffi_check::intended_leak` if it must live forever",
            LossyConversion => "check the value first (`ffi_check::try_to_c`) or use a C type wide enough for every value",
            InteriorNul => "remove the NUL byte, or pass the bytes with their length instead of as a C string",
            NullPointer => "check for NULL before reading (C returns NULL for errors and empty results)",
            UnterminatedString => "read the bytes with their length (`ffi_check::slice_from_c`) instead of as a C string",
            InvalidUtf8 => "read it as bytes (`CStr::to_bytes`) or convert lossily (`CStr::to_string_lossy`)",
            GuardOverrun => "keep C's writes inside the memory it was given: pass the buffer's true length (counting the room for a NUL), or give C a larger buffer",
            OutOfBounds => "read only as many elements as C's buffer holds: check the length C returned against the buffer's size",
            InvalidRoot => "register only memory that stays mapped and readable for its whole length (a global table, a static, a live C block), with its true length in bytes",
        }
    }

    fn index(self) -> usize {
        ViolationKind::ALL
            .iter()
            .position(|k| *k == self)
            .expect("ALL lists every kind")
    }
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fixed phrases of the first lines, in cgocheck's words where Go has
/// them. One place per message.
pub(crate) mod msg {
    /// Go: "cgo argument has Go pointer to unpinned Go pointer".
    pub const UNPINNED_NESTED: &str = "has managed pointer to unpinned managed pointer";
    /// Go: "cgo result is unpinned Go pointer or points to unpinned Go pointer".
    pub const CALLBACK_UNPINNED: &str = "is unpinned managed pointer";
    pub const CALLBACK_POINTS_TO_UNPINNED: &str = "points to unpinned managed pointer";
    /// Go (cgocheck2): "unpinned Go pointer stored into non-Go memory".
    pub const STORED_UNPINNED: &str = "unpinned managed pointer stored into C memory";
    /// Go: "found leaking pinned pointer; forgot to call Unpin()?".
    pub const LEAKED_PIN: &str = "found leaking pinned pointer; forgot to call Pinner::unpin()?";
    pub const RETAINED: &str = "C keeps a pointer to unpinned managed memory after the call";
    pub const FREED_WHILE_RETAINED: &str =
        "managed memory freed while C still holds a pointer to it";
    pub const UNPINNED_WHILE_RETAINED: &str =
        "managed memory unpinned while C still holds a pointer to it";
    pub const FREED_WHILE_PINNED: &str = "managed memory dropped while a Pinner still pins it";
    pub const DOUBLE_FREE: &str = "double free of C memory";
    pub const FREE_MANAGED: &str = "C free of managed memory";
    pub const FREE_INTERIOR: &str = "free of a pointer into the middle of C memory";
    pub const FREE_NOT_HEAP: &str = "free of a pointer no C allocator returned";
    pub const MISMATCHED_FREE: &str = "C memory freed with the wrong deallocator";
    pub const USE_AFTER_FREE_ARG: &str = "is a pointer into freed memory";
    pub const RETAINED_FREED: &str = "C retained a pointer into freed memory";
    pub const LEAK: &str = "leak of C memory";
    pub const LOSSY: &str = "does not fit in";
    pub const INTERIOR_NUL: &str = "string for C has an interior NUL byte";
    pub const NULL_STRING: &str = "NULL pointer where a C string was expected";
    pub const NULL_SLICE: &str = "NULL pointer with a non-zero length";
    pub const SLICE_PAST_REGION: &str =
        "buffer from C is longer than the tracked region it lies in";
    pub const SLICE_TOO_LONG: &str = "buffer from C is longer than any buffer can be";
    pub const BAD_ROOT: &str = "root for the mode-2 scans is not readable memory";
    pub const ADOPT_NOT_HEAP: &str = "adoption of a pointer no C allocator returned";
    pub const UNTERMINATED: &str = "C string has no NUL terminator within its region";
    pub const INVALID_UTF8: &str = "C string is not valid UTF-8";
    /// HotSpot -Xcheck:jni: "buffer overrun" / "buffer underrun".
    pub const GUARD_AFTER: &str = "C wrote past the end of a guarded C allocation";
    pub const GUARD_BEFORE: &str = "C wrote before the start of a guarded C allocation";
}

/// One region named by a report.
///
/// ```
/// # use ffi_check::*;
/// # if !ffi_check::COMPILED_IN { return; } // compiled out, nothing stops the real double free
/// let (_, v) = ffi_check::capture(|| {
///     let p = c_malloc(8);
///     // SAFETY: p came from c_malloc; the second free is the mistake.
///     unsafe { c_free(p); c_free(p); }
/// });
/// let r = &v[0].regions()[0];
/// assert_eq!(r.size(), 8);
/// assert_eq!(r.kind(), RegionKind::C);
/// assert_eq!(r.state(), RegionState::Freed);
/// assert!(r.free_site().is_some());
/// ```
#[derive(Clone, Debug)]
pub struct ReportRegion {
    role: &'static str,
    detail: RegionDetail,
}

impl ReportRegion {
    pub(crate) fn new(role: &'static str, detail: RegionDetail) -> ReportRegion {
        ReportRegion { role, detail }
    }
    /// What the region is to the violation ("lent", "points to", "freed", …).
    pub fn role(&self) -> &'static str {
        self.role
    }
    /// Start address.
    pub fn addr(&self) -> usize {
        self.detail.start
    }
    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.detail.size
    }
    /// Managed or C memory.
    pub fn kind(&self) -> RegionKind {
        self.detail.kind
    }
    /// Live or freed, when the report was made.
    pub fn state(&self) -> RegionState {
        self.detail.state
    }
    /// The Rust type held there, when known.
    pub fn type_name(&self) -> Option<&'static str> {
        self.detail.type_name
    }
    /// Where it was allocated or adopted.
    pub fn alloc_site(&self) -> Option<Site> {
        self.detail.alloc_site
    }
    /// Where it was first freed.
    pub fn free_site(&self) -> Option<Site> {
        self.detail.free_site
    }
    /// Where it was (last) pinned.
    pub fn pin_site(&self) -> Option<Site> {
        self.detail.pin_site
    }
    /// Where C retained it.
    pub fn retain_site(&self) -> Option<Site> {
        self.detail.retain_site
    }
    /// The name of the allocator family that made it.
    pub fn allocator(&self) -> &'static str {
        crate::family::family_name(self.detail.family)
    }
}

/// A broken rule, with everything needed to explain it.
///
/// `Display` is the full report: a first line starting with `ffi-check:`,
/// the regions involved with their sites and backtraces, the call site, and a
/// `help:` line.
///
/// ```
/// use ffi_check::{capture, to_c, ViolationKind};
/// use std::os::raw::c_int;
/// let (_, v) = capture(|| { let _: c_int = to_c(1usize << 40); });
/// # if !ffi_check::COMPILED_IN { return; }
/// assert_eq!(v[0].kind(), ViolationKind::LossyConversion);
/// let report = v[0].to_string();
/// assert!(report.starts_with("ffi-check: "));
/// assert!(report.lines().any(|l| l.starts_with("help: ")));
/// ```
#[derive(Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct Violation(Box<ViolationData>);

#[derive(Clone)]
struct ViolationData {
    kind: ViolationKind,
    message: String,
    regions: Vec<ReportRegion>,
    callee: Option<&'static str>,
    in_callback: bool,
    site: Option<Site>,
    thread: String,
    notes: Vec<String>,
    backtrace: Option<Backtrace>,
}

impl fmt::Debug for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Violation {
    /// Starts a violation of `kind` whose first line (after `ffi-check: `) is
    /// `message`. Captures the current backtrace (unresolved).
    #[cold]
    pub(crate) fn new(kind: ViolationKind, message: String) -> Violation {
        Violation(Box::new(ViolationData {
            kind,
            message,
            regions: Vec::new(),
            callee: None,
            in_callback: false,
            site: None,
            thread: current_thread_name(),
            notes: Vec::new(),
            backtrace: Some(crate::bookkeeping::capture_backtrace()),
        }))
    }
    pub(crate) fn region(mut self, r: ReportRegion) -> Violation {
        self.0.regions.push(r);
        self
    }
    pub(crate) fn region_at(self, role: &'static str, start: usize) -> Violation {
        match crate::registry::detail(start) {
            Some(d) => self.region(ReportRegion::new(role, d)),
            None => self,
        }
    }
    /// As [`region_at`](Self::region_at), and a heap block of the tracking
    /// allocator when the registry does not know `start`.
    pub(crate) fn region_at_any(self, role: &'static str, start: usize) -> Violation {
        if let Some(d) = crate::registry::detail(start) {
            return self.region(ReportRegion::new(role, d));
        }
        match crate::heap::block_at(start) {
            Some(b) => self
                .region(ReportRegion::new(role, heap_detail(b)))
                .note("the region is a Rust heap block (tracking allocator)".into()),
            #[cfg(feature = "interpose")]
            None => match crate::heap::c_block_at(start) {
                Some(b) => self.region(ReportRegion::new(role, c_block_detail(b))),
                None => self,
            },
            #[cfg(not(feature = "interpose"))]
            None => self,
        }
    }
    pub(crate) fn with_callee(mut self, callee: Option<&'static str>) -> Violation {
        self.0.callee = callee;
        self
    }
    /// Names the Rust callback (called by C) the violation happened in.
    pub(crate) fn with_callback(mut self, callback: &'static str) -> Violation {
        self.0.callee = Some(callback);
        self.0.in_callback = true;
        self
    }
    pub(crate) fn with_site(mut self, site: Option<Site>) -> Violation {
        self.0.site = site;
        self
    }
    /// Adds a line of explanation (once: the same note twice, from two
    /// regions of one kind, is said once).
    pub(crate) fn note(mut self, note: String) -> Violation {
        if !self.0.notes.contains(&note) {
            self.0.notes.push(note);
        }
        self
    }
    pub(crate) fn without_backtrace(mut self) -> Violation {
        self.0.backtrace = None;
        self
    }

    /// The kind of violation.
    pub fn kind(&self) -> ViolationKind {
        self.0.kind
    }
    /// The rule broken (`"P1"` …).
    pub fn rule(&self) -> &'static str {
        self.0.kind.rule()
    }
    /// The first line of the report, `ffi-check: …`.
    pub fn first_line(&self) -> String {
        format!("ffi-check: {}", self.0.message)
    }
    /// The first line without the `ffi-check: ` prefix.
    pub fn message(&self) -> &str {
        &self.0.message
    }
    /// The `help:` line.
    pub fn help(&self) -> String {
        format!("help: {}", self.0.kind.help())
    }
    /// The regions involved.
    pub fn regions(&self) -> &[ReportRegion] {
        &self.0.regions
    }
    /// The C function of the `call!` (or the callback) involved, if any.
    pub fn callee(&self) -> Option<&'static str> {
        self.0.callee
    }
    /// The Rust (or C) site that made the call, the free or the conversion.
    pub fn call_site(&self) -> Option<Site> {
        self.0.site
    }
    /// The name (or id) of the thread it happened on.
    pub fn thread(&self) -> &str {
        &self.0.thread
    }

    fn render(&self) -> String {
        let d = &self.0;
        let mut out = String::new();
        let _ = writeln!(out, "ffi-check: {}", d.message);
        let _ = writeln!(out, "  rule {} ({})", d.kind.rule(), d.kind.name());
        for note in &d.notes {
            let _ = writeln!(out, "  {note}");
        }
        if let Some(site) = d.site {
            let _ = write!(out, "  at {site}");
            match (d.callee, d.in_callback) {
                (Some(callback), true) => {
                    let _ = write!(out, " in callback `{callback}`");
                }
                (Some(callee), false) => {
                    let _ = write!(out, " in call to `{callee}`");
                }
                (None, _) => {}
            }
            let _ = writeln!(out, " on thread `{}`", d.thread);
        } else {
            let _ = writeln!(out, "  on thread `{}`", d.thread);
        }
        for r in &d.regions {
            render_region(&mut out, r);
        }
        if let Some(bt) = &d.backtrace {
            let _ = writeln!(out, "  backtrace of the violation:");
            render_backtrace(&mut out, bt, "      ");
        }
        let _ = write!(out, "help: {}", d.kind.help());
        out
    }

    /// One JSON object (no newline) with the stable fields of SPEC §4.
    pub fn to_json(&self) -> String {
        let d = &self.0;
        let mut out = String::from("{");
        let _ = write!(out, "\"kind\":{},", json_str(d.kind.name()));
        let _ = write!(out, "\"rule\":{},", json_str(d.kind.rule()));
        let _ = write!(out, "\"message\":{},", json_str(&self.first_line()));
        let _ = write!(
            out,
            "\"callee\":{},",
            d.callee.map_or("null".into(), json_str)
        );
        let _ = write!(
            out,
            "\"site\":{},",
            d.site.map_or("null".into(), |s| json_str(&site_plain(s)))
        );
        let _ = write!(out, "\"thread\":{},", json_str(&d.thread));
        out.push_str("\"regions\":[");
        for (i, r) in d.regions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"addr\":{},\"size\":{},\"kind\":{},\"state\":{},\"role\":{}",
                json_str(&format!("{:#x}", r.addr())),
                r.size(),
                json_str(&r.kind().to_string()),
                json_str(&r.state().to_string()),
                json_str(r.role)
            );
            if let Some(s) = r.alloc_site() {
                let _ = write!(out, ",\"alloc_site\":{}", json_str(&site_plain(s)));
            }
            if let Some(s) = r.free_site() {
                let _ = write!(out, ",\"free_site\":{}", json_str(&site_plain(s)));
            }
            out.push('}');
        }
        out.push_str("],");
        let _ = write!(out, "\"help\":{},", json_str(d.kind.help()));
        let _ = write!(out, "\"pid\":{}", std::process::id());
        out.push('}');
        out
    }
}

/// The description of a heap block of the tracking allocator that the
/// registry does not know, for a report: what its header and the
/// quarantine say.
/// A C heap block of the interposed allocator (feature `interpose`) as a
/// region of family `malloc`.
#[cfg(feature = "interpose")]
pub(crate) fn c_block_detail(block: crate::heap::CBlock) -> RegionDetail {
    RegionDetail {
        start: block.start,
        size: block.size,
        kind: RegionKind::C,
        state: if block.freed() {
            RegionState::Freed
        } else {
            RegionState::Live
        },
        pins: 0,
        retains: 0,
        type_name: None,
        family: crate::family::FAMILY_MALLOC,
        alloc_site: block.alloc_site,
        alloc_trace: crate::heap::c_alloc_trace(block.start),
        free_site: block.free_site(),
        free_trace: None,
        pin_site: None,
        pin_trace: None,
        retain_site: None,
        retain_trace: None,
        leak_reason: None,
    }
}

pub(crate) fn heap_detail(block: crate::heap::Block) -> RegionDetail {
    let (free_site, free_trace) = if block.freed {
        crate::heap::free_record(block.start)
    } else {
        (None, None)
    };
    RegionDetail {
        start: block.start,
        size: block.size,
        kind: RegionKind::Managed,
        state: if block.freed {
            RegionState::Freed
        } else {
            RegionState::Live
        },
        pins: 0,
        retains: 0,
        type_name: None,
        family: 0,
        alloc_site: None,
        alloc_trace: None,
        free_site,
        free_trace,
        pin_site: None,
        pin_trace: None,
        retain_site: None,
        retain_trace: None,
        leak_reason: None,
    }
}
