//! The checker against a model of its rules: random sequences of
//! allocations, loans, pins, retains, frees and conversions run both through
//! the library and through a plain reference model written here, which knows
//! nothing of the library, only the rules of SPEC §2. After every step the
//! violations the library reports (collected with `capture` around that
//! step) must be exactly the kinds the model predicts, as a multiset; at the
//! end of each case everything is released and freed, and nothing may leak.
//!
//! The rules modelled:
//! - P1: lending managed memory (by reference, or a raw pointer into it)
//!   that holds a pointer to live unpinned managed memory is one
//!   `UnpinnedNested` per lent argument, however many such pointers it holds.
//! - P2: a retain of live unpinned managed memory is `Retained` (and still
//!   counts as a retain); of pinned managed memory or live C memory, nothing.
//! - P3: dropping managed memory C still retains is `FreedWhileRetained`,
//!   dropping it while a `Pinner` pins it (and nothing retains it) is
//!   `FreedWhilePinned`; either way the memory is kept, and the handle is
//!   dead. Unpinning that ends the last pin of live retained memory is
//!   `FreedWhileRetained`.
//! - C1: freeing C memory a second time is `DoubleFree`; freeing managed
//!   memory with C's `free` is `InvalidFree`.
//! - C2: a raw pointer into freed memory (C or managed) passed through
//!   `call!`, or retained by C, is `UseAfterFree`. Freed memory stays in the
//!   checker's quarantine, so within a case a freed handle stays freed.
//! - X1: `to_c::<u64, i32>` of a value above `i32::MAX` is `LossyConversion`.
//! - X2: `CBox::from_str` of a string with an interior NUL is `InteriorNul`.
//!
//! Handles are indices into a `Vec` (in the model and in the real world
//! alike); the strategy picks indices that are taken modulo the current
//! number of handles, so any shrunk sequence is still a valid one.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_void, CStr};

use ffi_check::{call, capture, CBox, LeakCheck, Managed, Pinner, Violation, ViolationKind};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestError, TestRunner};

use common::fixtures;

/// Pinner slots a case may use.
const PINNERS: usize = 3;

/// The longest operation sequence.
const MAX_OPS: usize = 40;

// ---- operations --------------------------------------------------------------

/// A handle chosen by the strategy, taken modulo the number of handles.
type Sel = usize;

/// A pointer word: null, or the address of a handle (or one byte into it:
/// an interior pointer stands for its whole allocation).
#[derive(Clone, Debug)]
enum Entry {
    Null,
    To(Sel, bool),
}

/// An argument lent by reference to a `Managed<[*const c_void]>`: a managed
/// handle itself (when the handle chosen is not live managed memory, a
/// one-entry table pointing to it instead), or a fresh table of pointers.
#[derive(Clone, Debug)]
enum Arg {
    Handle(Sel),
    Table(Vec<Entry>),
}

#[derive(Clone, Debug)]
enum Op {
    /// `Managed::from_vec` of a table of pointers to existing handles.
    NewManaged(Vec<Entry>),
    /// `CBox::new(value)`.
    NewCBox(u64),
    /// `c_malloc(size)`.
    CMalloc(usize),
    /// `c_adopt(libc::malloc(size), size)`.
    Adopt(usize),
    /// `CBox::from_str`, with or without an interior NUL.
    FromStr { nul: bool },
    /// A `call!` lending 1 to 3 managed tables by reference.
    Lend(Vec<Arg>),
    /// A `call!` passing 1 to 3 raw pointers.
    LendRaw(Vec<Entry>),
    /// A `call!` lending one table by reference and passing one raw pointer.
    LendMixed(Arg, Entry),
    /// `Pinner::pin` (live managed memory) or `Pinner::pin_ptr` (anything
    /// else, which pins nothing), creating the pinner if its slot is empty.
    Pin { pinner: usize, h: Sel },
    /// `Pinner::unpin`.
    Unpin(usize),
    /// Drop of a `Pinner` (which unpins).
    DropPinner(usize),
    /// `ffi_check::retain`.
    Retain(Sel),
    /// `ffi_check::release`.
    Release(Sel),
    /// Drop of a `Managed`; for C memory `c_free`, or drop / `CBox::free`
    /// (`explicit`) of a `CBox`, and `c_free` again once it is freed.
    Free { h: Sel, explicit: bool },
    /// `c_free` of the address of live managed memory.
    CFreeManaged(Sel),
    /// `to_c::<u64, i32>`.
    ToC(u64),
}

fn sel() -> impl Strategy<Value = Sel> {
    0..64usize
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        1 => Just(Entry::Null),
        6 => (sel(), any::<bool>()).prop_map(|(h, interior)| Entry::To(h, interior)),
    ]
}

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        2 => sel().prop_map(Arg::Handle),
        1 => vec(entry(), 1..4).prop_map(Arg::Table),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let fits = 0..=i32::MAX as u64;
    let too_big = (i32::MAX as u64 + 1)..=u64::MAX;
    prop_oneof![
        5 => vec(entry(), 1..4).prop_map(Op::NewManaged),
        1 => any::<u64>().prop_map(Op::NewCBox),
        1 => (8..64usize).prop_map(Op::CMalloc),
        1 => (8..64usize).prop_map(Op::Adopt),
        1 => any::<bool>().prop_map(|nul| Op::FromStr { nul }),
        3 => vec(arg(), 1..4).prop_map(Op::Lend),
        2 => vec(entry(), 1..4).prop_map(Op::LendRaw),
        1 => (arg(), entry()).prop_map(|(a, e)| Op::LendMixed(a, e)),
        4 => (0..PINNERS, sel()).prop_map(|(pinner, h)| Op::Pin { pinner, h }),
        1 => (0..PINNERS).prop_map(Op::Unpin),
        1 => (0..PINNERS).prop_map(Op::DropPinner),
        3 => sel().prop_map(Op::Retain),
        2 => sel().prop_map(Op::Release),
        4 => (sel(), any::<bool>()).prop_map(|(h, explicit)| Op::Free { h, explicit }),
        1 => sel().prop_map(Op::CFreeManaged),
        1 => prop_oneof![fits, too_big].prop_map(Op::ToC),
    ]
}

// ---- the reference model -----------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Memory {
    Managed,
    C,
}

/// What the model knows of one handle.
#[derive(Debug)]
struct Handle {
    memory: Memory,
    live: bool,
    pins: u32,
    retains: u32,
    /// For managed memory: the handles its pointer words point to.
    points_to: Vec<Option<usize>>,
}

/// The rules, as plain bookkeeping.
#[derive(Debug, Default)]
struct Model {
    handles: Vec<Handle>,
    /// The handles each pinner slot pins (once per pin).
    pinners: [Vec<usize>; PINNERS],
}

impl Model {
    fn resolve(&self, h: Sel) -> Option<usize> {
        (!self.handles.is_empty()).then(|| h % self.handles.len())
    }

    fn target(&self, e: &Entry) -> Option<usize> {
        match e {
            Entry::Null => None,
            Entry::To(h, _) => self.resolve(*h),
        }
    }

    fn is_live_managed(&self, h: usize) -> bool {
        let h = &self.handles[h];
        h.memory == Memory::Managed && h.live
    }

    /// P1: lent memory holding these pointers breaks the rule when any of
    /// them points to live unpinned managed memory.
    fn holds_unpinned(&self, targets: &[Option<usize>]) -> bool {
        targets
            .iter()
            .flatten()
            .any(|&t| self.is_live_managed(t) && self.handles[t].pins == 0)
    }

    /// P1 for one argument lent by reference.
    fn lend(&self, a: &Arg, out: &mut Vec<ViolationKind>) {
        let targets = match a {
            Arg::Handle(h) => match self.resolve(*h) {
                Some(h) if self.is_live_managed(h) => self.handles[h].points_to.clone(),
                other => vec![other],
            },
            Arg::Table(entries) => entries.iter().map(|e| self.target(e)).collect(),
        };
        if self.holds_unpinned(&targets) {
            out.push(ViolationKind::UnpinnedNested);
        }
    }

    /// C2, then P1 on the whole allocation, for one raw pointer argument.
    fn raw(&self, e: &Entry, out: &mut Vec<ViolationKind>) {
        let Some(h) = self.target(e) else { return };
        let handle = &self.handles[h];
        if !handle.live {
            out.push(ViolationKind::UseAfterFree);
        } else if handle.memory == Memory::Managed && self.holds_unpinned(&handle.points_to) {
            out.push(ViolationKind::UnpinnedNested);
        }
    }

    fn push(&mut self, memory: Memory, points_to: Vec<Option<usize>>) {
        self.handles.push(Handle {
            memory,
            live: true,
            pins: 0,
            retains: 0,
            points_to,
        });
    }

    /// Ends every pin of `pinner`: P3 for each live retained region whose
    /// last pin that was.
    fn unpin(&mut self, pinner: usize, out: &mut Vec<ViolationKind>) {
        let pinned = std::mem::take(&mut self.pinners[pinner]);
        for &h in &pinned {
            self.handles[h].pins -= 1;
        }
        let mut ended: Vec<usize> = pinned
            .into_iter()
            .filter(|&h| {
                let h = &self.handles[h];
                h.pins == 0 && h.retains > 0 && h.live
            })
            .collect();
        ended.sort_unstable();
        ended.dedup();
        out.extend(ended.iter().map(|_| ViolationKind::FreedWhileRetained));
    }

    /// Applies `op` and returns the violations it must report.
    fn step(&mut self, op: &Op) -> Vec<ViolationKind> {
        let mut out = Vec::new();
        match op {
            Op::NewManaged(entries) => {
                let targets = entries.iter().map(|e| self.target(e)).collect();
                self.push(Memory::Managed, targets);
            }
            Op::NewCBox(_) | Op::CMalloc(_) | Op::Adopt(_) => self.push(Memory::C, Vec::new()),
            Op::FromStr { nul } => {
                if *nul {
                    out.push(ViolationKind::InteriorNul);
                }
                self.push(Memory::C, Vec::new());
            }
            Op::Lend(args) => args.iter().for_each(|a| self.lend(a, &mut out)),
            Op::LendRaw(entries) => entries.iter().for_each(|e| self.raw(e, &mut out)),
            Op::LendMixed(a, e) => {
                self.lend(a, &mut out);
                self.raw(e, &mut out);
            }
            Op::Pin { pinner, h } => {
                if let Some(h) = self.resolve(*h).filter(|&h| self.is_live_managed(h)) {
                    self.handles[h].pins += 1;
                    self.pinners[*pinner].push(h);
                }
            }
            Op::Unpin(p) | Op::DropPinner(p) => self.unpin(*p, &mut out),
            Op::Retain(h) => {
                if let Some(h) = self.resolve(*h) {
                    let handle = &mut self.handles[h];
                    if !handle.live {
                        out.push(ViolationKind::UseAfterFree);
                    } else if handle.memory == Memory::Managed {
                        handle.retains += 1;
                        if handle.pins == 0 {
                            out.push(ViolationKind::Retained);
                        }
                    }
                }
            }
            Op::Release(h) => {
                if let Some(h) = self.resolve(*h) {
                    let handle = &mut self.handles[h];
                    if handle.memory == Memory::Managed && handle.retains > 0 {
                        handle.retains -= 1;
                    }
                }
            }
            Op::Free { h, .. } => {
                if let Some(h) = self.resolve(*h) {
                    let handle = &mut self.handles[h];
                    match (handle.memory, handle.live) {
                        (Memory::Managed, true) => {
                            handle.live = false;
                            if handle.retains > 0 {
                                out.push(ViolationKind::FreedWhileRetained);
                            } else if handle.pins > 0 {
                                out.push(ViolationKind::FreedWhilePinned);
                            }
                        }
                        (Memory::Managed, false) => {}
                        (Memory::C, true) => handle.live = false,
                        (Memory::C, false) => out.push(ViolationKind::DoubleFree),
                    }
                }
            }
            Op::CFreeManaged(h) => {
                if self.resolve(*h).is_some_and(|h| self.is_live_managed(h)) {
                    out.push(ViolationKind::InvalidFree);
                }
            }
            Op::ToC(v) => {
                if *v > i32::MAX as u64 {
                    out.push(ViolationKind::LossyConversion);
                }
            }
        }
        out
    }
}

// ---- the real world ----------------------------------------------------------

type Table = Managed<[*const c_void]>;

/// Who owns a handle's memory on the Rust side (`None`: freed or dropped).
enum Owner {
    Managed(Option<Table>),
    CBox(Option<CBox<u64>>),
    CStr(Option<CBox<CStr>>),
    Raw { freed: bool },
}

/// Frees a box Rust still owns (by drop or `CBox::free`); true when it was
/// freed already, so the caller frees it again with `c_free`.
fn free_box<T: ?Sized>(b: Option<CBox<T>>, explicit: bool) -> bool {
    match b {
        Some(b) if explicit => {
            b.free();
            false
        }
        Some(b) => {
            drop(b);
            false
        }
        None => true,
    }
}

struct RealHandle {
    addr: usize,
    owner: Owner,
}

#[derive(Default)]
struct World {
    handles: Vec<RealHandle>,
    pinners: [Option<Pinner>; PINNERS],
}

extern "C" fn sink2(_a: *const c_void, _b: *const c_void) {}
extern "C" fn sink3(_a: *const c_void, _b: *const c_void, _c: *const c_void) {}

/// What a lent argument is, before the borrows are taken.
enum Lent {
    Handle(usize),
    Temp(usize),
}

impl World {
    fn resolve(&self, h: Sel) -> Option<usize> {
        (!self.handles.is_empty()).then(|| h % self.handles.len())
    }

    fn pointer(&self, e: &Entry) -> *const c_void {
        match e {
            Entry::Null => std::ptr::null(),
            Entry::To(h, interior) => self.resolve(*h).map_or(std::ptr::null(), |h| {
                (self.handles[h].addr + usize::from(*interior)) as *const c_void
            }),
        }
    }

    fn table(&self, entries: &[Entry]) -> Table {
        Managed::from_vec(entries.iter().map(|e| self.pointer(e)).collect())
    }

    fn managed(&self, h: usize) -> Option<&Table> {
        match &self.handles[h].owner {
            Owner::Managed(m) => m.as_ref(),
            _ => None,
        }
    }

    /// Decides, for each argument, whether it is a live managed handle or a
    /// fresh table (pushed onto `temps`).
    fn plan(&self, a: &Arg, temps: &mut Vec<Table>) -> Lent {
        match a {
            Arg::Handle(h) => match self.resolve(*h) {
                Some(h) if self.managed(h).is_some() => Lent::Handle(h),
                _ => {
                    temps.push(self.table(&[Entry::To(*h, false)]));
                    Lent::Temp(temps.len() - 1)
                }
            },
            Arg::Table(entries) => {
                temps.push(self.table(entries));
                Lent::Temp(temps.len() - 1)
            }
        }
    }

    fn borrow<'a>(&'a self, lent: &Lent, temps: &'a [Table]) -> &'a Table {
        match lent {
            Lent::Handle(h) => self.managed(*h).expect("planned as live managed"),
            Lent::Temp(i) => &temps[*i],
        }
    }

    fn push(&mut self, addr: usize, owner: Owner) {
        self.handles.push(RealHandle { addr, owner });
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::NewManaged(entries) => {
                let m = self.table(entries);
                self.push(m.addr(), Owner::Managed(Some(m)));
            }
            Op::NewCBox(v) => {
                let b = CBox::new(*v);
                self.push(b.addr(), Owner::CBox(Some(b)));
            }
            Op::CMalloc(size) => {
                let p = ffi_check::c_malloc(*size);
                self.push(p as usize, Owner::Raw { freed: false });
            }
            Op::Adopt(size) => {
                // SAFETY: malloc has no preconditions; the block is adopted
                // at once and freed once, by c_free.
                let p = ffi_check::c_adopt(unsafe { libc::malloc(*size) }, *size);
                self.push(p as usize, Owner::Raw { freed: false });
            }
            Op::FromStr { nul } => {
                let s = CBox::from_str(if *nul { "a\0bc" } else { "abc" });
                self.push(s.addr(), Owner::CStr(Some(s)));
            }
            Op::Lend(args) => {
                let mut temps = Vec::new();
                let plan: Vec<Lent> = args.iter().map(|a| self.plan(a, &mut temps)).collect();
                let lent: Vec<&Table> = plan.iter().map(|l| self.borrow(l, &temps)).collect();
                match lent.as_slice() {
                    [a] => {
                        // SAFETY: with a length of 0, fx_checksum reads nothing.
                        unsafe { call!(fixtures::fx_checksum(*a, 0)) };
                    }
                    [a, b] => call!(sink2(*a, *b)),
                    [a, b, c] => call!(sink3(*a, *b, *c)),
                    _ => unreachable!("1 to 3 arguments"),
                }
            }
            Op::LendRaw(entries) => {
                let ptrs: Vec<*const c_void> = entries.iter().map(|e| self.pointer(e)).collect();
                match ptrs.as_slice() {
                    [a] => {
                        let a = a.cast::<u8>();
                        // SAFETY: with a length of 0, fx_checksum reads nothing.
                        unsafe { call!(fixtures::fx_checksum(a, 0)) };
                    }
                    [a, b] => call!(sink2(*a, *b)),
                    [a, b, c] => call!(sink3(*a, *b, *c)),
                    _ => unreachable!("1 to 3 arguments"),
                }
            }
            Op::LendMixed(a, e) => {
                let mut temps = Vec::new();
                let plan = self.plan(a, &mut temps);
                let lent = self.borrow(&plan, &temps);
                let p = self.pointer(e);
                call!(sink2(lent, p));
            }
            Op::Pin { pinner, h } => {
                let Some(h) = self.resolve(*h) else { return };
                let mut slot = self.pinners[*pinner].take().unwrap_or_default();
                match self.managed(h) {
                    Some(m) => slot.pin(m),
                    None => slot.pin_ptr(self.handles[h].addr as *const u8),
                }
                self.pinners[*pinner] = Some(slot);
            }
            Op::Unpin(p) => {
                if let Some(pinner) = &mut self.pinners[*p] {
                    pinner.unpin();
                }
            }
            Op::DropPinner(p) => self.pinners[*p] = None,
            Op::Retain(h) => {
                if let Some(h) = self.resolve(*h) {
                    ffi_check::retain(self.handles[h].addr as *const u8);
                }
            }
            Op::Release(h) => {
                if let Some(h) = self.resolve(*h) {
                    ffi_check::release(self.handles[h].addr as *const u8);
                }
            }
            Op::Free { h, explicit } => {
                if let Some(h) = self.resolve(*h) {
                    self.free(h, *explicit);
                }
            }
            Op::CFreeManaged(h) => {
                if let Some(m) = self.resolve(*h).and_then(|h| self.managed(h)) {
                    // SAFETY: the checker finds managed memory at this
                    // address, reports InvalidFree and does not free it.
                    unsafe { ffi_check::c_free(m.addr() as *mut c_void) };
                }
            }
            Op::ToC(v) => {
                let n: i32 = ffi_check::to_c(*v);
                std::hint::black_box(n);
            }
        }
    }

    /// Frees handle `h`: a drop for Rust owners, `c_free` for raw C memory,
    /// and `c_free` again for C memory already freed (the double free the
    /// checker reports and skips: the block is still in its quarantine).
    fn free(&mut self, h: usize, explicit: bool) {
        let addr = self.handles[h].addr as *mut c_void;
        let with_c_free = match &mut self.handles[h].owner {
            Owner::Managed(m) => {
                drop(m.take());
                false
            }
            Owner::CBox(b) => free_box(b.take(), explicit),
            Owner::CStr(s) => free_box(s.take(), explicit),
            Owner::Raw { freed } => {
                *freed = true;
                true
            }
        };
        if with_c_free {
            // SAFETY: the first free of a malloc block this case owns, or a
            // later one, which the checker reports as DoubleFree and skips
            // (the block is still in its quarantine).
            unsafe { ffi_check::c_free(addr) };
        }
    }

    /// Releases what C still retains (per the model), ends every pin, drops
    /// every managed handle and frees every C block still owned.
    fn clean_up(&mut self, model: &Model) {
        for (real, modelled) in self.handles.iter().zip(&model.handles) {
            for _ in 0..modelled.retains {
                ffi_check::release(real.addr as *const u8);
            }
        }
        self.pinners = Default::default();
        for h in self.handles.drain(..) {
            match h.owner {
                Owner::Raw { freed: false } => {
                    // SAFETY: a malloc block this case owns, never freed.
                    unsafe { ffi_check::c_free(h.addr as *mut c_void) };
                }
                other => drop(other),
            }
        }
    }
}

// ---- running a case ----------------------------------------------------------

fn sorted(mut kinds: Vec<ViolationKind>) -> Vec<ViolationKind> {
    kinds.sort_by_key(|k| format!("{k:?}"));
    kinds
}

fn first_lines(vs: &[Violation]) -> Vec<String> {
    vs.iter().map(|v| v.first_line().to_owned()).collect()
}

thread_local! {
    /// How often each kind was predicted over the run, to show that the
    /// strategy reaches every rule.
    static SEEN: RefCell<BTreeMap<String, usize>> = const { RefCell::new(BTreeMap::new()) };
}

/// Runs `ops` on the model and the library side by side; the first step
/// where they disagree is the error.
fn run_case(ops: &[Op]) -> Result<(), String> {
    let mut model = Model::default();
    let mut world = World::default();
    let mut outcome = Ok(());
    for (i, op) in ops.iter().enumerate() {
        let expected = sorted(model.step(op));
        let ((), got) = capture(|| world.step(op));
        let got_kinds = sorted(common::kinds(&got));
        if got_kinds != expected {
            outcome = Err(format!(
                "step {i} ({op:?}): the model expects {expected:?}, the library reported {got_kinds:?}: {:#?}",
                first_lines(&got)
            ));
            break;
        }
        SEEN.with(|s| {
            let mut s = s.borrow_mut();
            for k in &expected {
                *s.entry(format!("{k:?}")).or_default() += 1;
            }
        });
    }
    let ((), stray) = capture(|| world.clean_up(&model));
    if outcome.is_ok() && !stray.is_empty() {
        outcome = Err(format!("cleaning up reported {:#?}", first_lines(&stray)));
    }
    outcome
}

/// The kinds the model can predict: the run must have met each.
const MODELLED: [ViolationKind; 9] = [
    ViolationKind::UnpinnedNested,
    ViolationKind::Retained,
    ViolationKind::FreedWhileRetained,
    ViolationKind::FreedWhilePinned,
    ViolationKind::DoubleFree,
    ViolationKind::InvalidFree,
    ViolationKind::UseAfterFree,
    ViolationKind::LossyConversion,
    ViolationKind::InteriorNul,
];

#[test]
fn library_reports_exactly_what_the_model_of_the_rules_predicts() {
    // The model is of the rules checked at the moment of each event (mode
    // 1). Mode 2 adds what its scans of C memory find, which the model does
    // not predict (a handle stored in a `CBox` is then held by C memory), so
    // this test runs in mode 1 whatever `FFI_CHECK` says.
    ffi_check::set_mode(ffi_check::Mode::Check);
    let config = ProptestConfig {
        cases: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&vec(op(), 1..MAX_OPS), |ops| {
        // Each case starts clean: its own leak scope, and any violation
        // outside the steps' own captures is collected, not raised.
        let scope = LeakCheck::start();
        let (outcome, stray) = capture(|| run_case(&ops));
        let leaks = scope.finish();
        outcome.map_err(TestCaseError::fail)?;
        prop_assert!(stray.is_empty(), "stray reports {:#?}", first_lines(&stray));
        prop_assert!(leaks.is_empty(), "{leaks}");
        Ok(())
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, ops)) => {
            panic!("Test failed: {reason}.\nminimal failing input: ops = {ops:#?}")
        }
        Err(e) => panic!("{e}"),
    }
    let seen = SEEN.with(|s| s.borrow().clone());
    for kind in MODELLED {
        assert!(
            seen.get(&format!("{kind:?}")).is_some_and(|n| *n > 0),
            "the run never reached {kind:?}: {seen:?}"
        );
    }
}
