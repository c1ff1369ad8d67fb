//! A fast stack walk: the return addresses of the caller's callers, found
//! with one cached unwind rule per return address, as the sanitizers'
//! unwinders do, with the platform unwinder behind it for the frames it
//! cannot follow.
//!
//! The platform unwinder (`_Unwind_Backtrace`) reads and interprets the
//! DWARF call-frame information (CFI) again for every frame of every walk:
//! about two microseconds for thirty frames. On x86_64 System V nearly every
//! compiled frame follows one shape: at a return address, the caller's
//! canonical frame address (CFA) is `rsp + N` or `rbp + N`, the return
//! address is at `CFA - 8`, and `rbp` is saved at `CFA + M` or unchanged.
//! [`walk`] reads that rule once per return address from the CFI (the FDE
//! `_Unwind_Find_FDE` finds, its CIE's and its own instructions run up to
//! the address) and keeps it in a fixed table of atomic words; a walk is
//! then, per frame, one table probe and one or two loads from the stack.
//!
//! A frame the rule cannot describe (a CFA given by an expression, as in a
//! signal trampoline; a register rule other than "saved at an offset"; a
//! signal frame) is marked slow, and a walk that meets one is done again by
//! the platform unwinder, whole, with the same frames dropped, so a stack
//! reads the same whichever walk took it.
//!
//! Invariants: the walk never faults. Every load is from `[rsp, top)` of
//! the current thread's stack (`rsp` read at the walk's start, inside the
//! thread's stack: everything above it is the callers' frames, mapped; a
//! walk that starts elsewhere, on a signal's alternate stack, is the
//! platform unwinder's), the CFA rises strictly from
//! frame to frame, and the walk ends at the buffer's end, at a return
//! address without FDE or whose caller is undefined (the stack's outermost
//! frame). Nothing on the walk allocates (but the thread's stack bounds,
//! asked once per thread, under the bookkeeping guard): the rule table is
//! one anonymous mapping, made once (outside every tracked heap and every
//! scanned segment), and an entry is one `AtomicU64` holding both the address it is
//! for and its rule, so a reader never sees half of another's write.
//!
//! Each thread also keeps the states of its last walk (see "the memo of the
//! last walk" below): a walk that meets one of them checks the last walk's
//! next return addresses are still in their places (independent loads,
//! every address checked to lie in the walk's `[rsp, top)` as above)
//! instead of stepping frame by frame, and steps by the rules from the
//! first that is not.
//!
//! A rule is read once per address: a library unloaded and another loaded
//! at the same addresses would find the old rules (a walk through them may
//! end early or find wrong callers, never fault).
//!
//! A ground-floor module: it uses only [`bookkeeping`](crate::bookkeeping)
//! and [`probe`](crate::probe)'s stack bounds.

use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use crate::bookkeeping::bookkeeping;

/// How to find a frame's caller, at one return address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// The CFA is `rbp + cfa_off` (else `rsp + cfa_off`), the return
    /// address is at `CFA - 8`, the caller's `rbp` as `rbp` says.
    Frame {
        cfa_rbp: bool,
        cfa_off: u32,
        rbp: Rbp,
    },
    /// A frame the rule cannot describe: the platform unwinder's.
    Slow,
    /// The outermost frame: no FDE, or the caller is undefined.
    End,
}

/// Where the caller's `rbp` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rbp {
    /// In `rbp` still.
    Same,
    /// At `CFA + offset`, inside the frame: `-2048 <= offset <= -8`, a
    /// multiple of 8 (anything else is slow).
    At(i32),
}

// A rule in 32 bits, laid out for the walk's loop to use with as few
// operations as it can: the CFA's offset from its base in bits 0-15 (one
// zero-extending move; a frame's is at least 8, so 0 means "not a frame"),
// the CFA's base (`rbp`, else `rsp`) in bit 16, "the caller's `rbp` is this
// frame's" in bit 17, the kind in bits 18-19 (for the walk's slow path and
// the tests), and the offset from the CFA of the word the caller's `rbp` is
// loaded from, / 8 and signed, in bits 23-31 (one arithmetic shift, and the
// multiplication by 8 an address scale). A slow rule and the end have a CFA
// offset of 0 and base `rsp`: their return address would lie below the
// frame's stack pointer, which the walk's bounds check refuses, so the
// loop needs no test of the kind. An `rbp` kept in `rbp` has the offset of
// the return address (-8): always a word the walk may load, whose value it
// then ignores, so the loop loads without a branch.
const CFA_OFF_MASK: u32 = 0xffff;
const CFA_RBP: u32 = 1 << 16;
const RBP_SAME: u32 = 1 << 17;
const KIND_SHIFT: u32 = 18;
const KIND_FRAME: u32 = 1;
const KIND_SLOW: u32 = 2;
const KIND_END: u32 = 3;
const RBP_OFF_SHIFT: u32 = 23;
/// The lowest `rbp` offset a rule holds (the 9-bit field's, times 8).
const MIN_RBP_OFF: i32 = -2048;

/// The offset from the CFA of the word the caller's `rbp` is loaded from,
/// in a packed frame rule.
#[inline(always)]
fn rbp_offset(bits: u32) -> isize {
    // The top 9 bits, sign-extended, times 8.
    (((bits as i32) >> RBP_OFF_SHIFT) as isize) * 8
}

impl Rule {
    /// A frame rule, or `Slow` when its offsets do not fit the packing.
    fn frame(cfa_rbp: bool, cfa_off: i64, rbp: Rbp) -> Rule {
        let Ok(cfa_off) = u32::try_from(cfa_off) else {
            return Rule::Slow;
        };
        match rbp {
            _ if !(8..=CFA_OFF_MASK).contains(&cfa_off) => Rule::Slow,
            Rbp::At(m) if m % 8 != 0 || !(MIN_RBP_OFF..=-8).contains(&m) => Rule::Slow,
            _ => Rule::Frame {
                cfa_rbp,
                cfa_off,
                rbp,
            },
        }
    }

    fn pack(self) -> u32 {
        match self {
            Rule::Slow => KIND_SLOW << KIND_SHIFT,
            Rule::End => KIND_END << KIND_SHIFT,
            Rule::Frame {
                cfa_rbp,
                cfa_off,
                rbp,
            } => {
                let (same, off) = match rbp {
                    Rbp::Same => (RBP_SAME, -8),
                    Rbp::At(m) => (0, m),
                };
                KIND_FRAME << KIND_SHIFT
                    | if cfa_rbp { CFA_RBP } else { 0 }
                    | same
                    | ((off / 8) as u32) << RBP_OFF_SHIFT
                    | cfa_off
            }
        }
    }

    #[cfg(test)]
    fn unpack(bits: u32) -> Option<Rule> {
        match bits >> KIND_SHIFT & 3 {
            KIND_SLOW => Some(Rule::Slow),
            KIND_END => Some(Rule::End),
            KIND_FRAME => Some(Rule::Frame {
                cfa_rbp: bits & CFA_RBP != 0,
                cfa_off: bits & CFA_OFF_MASK,
                rbp: if bits & RBP_SAME != 0 {
                    Rbp::Same
                } else {
                    Rbp::At(rbp_offset(bits) as i32)
                },
            }),
            _ => None,
        }
    }
}

// ---- the rule table ------------------------------------------------------

/// The table holds 2^TABLE_BITS entries, one way each: a newer rule for
/// another address in the same slot replaces the older.
const TABLE_BITS: u32 = 15;
const TABLE_LEN: usize = 1 << TABLE_BITS;
/// Addresses the table can hold: below 2^47, the user half of a 4-level
/// address space, where every loaded object is.
const ADDRESS_BITS: u32 = TABLE_BITS + 32;

/// The table, mapped at first use; null until then (or while mapping
/// fails: every walk is then the platform unwinder's).
static TABLE: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

/// An entry is `tag << 32 | rule`, with `tag` the address's bits above
/// `TABLE_BITS` and the slot the bits below: a tag and a slot name one
/// address. An address whose tag does not fit 32 bits (above 2^47) is never
/// stored, so never found. An empty entry (0) has tag 0, the tag of the
/// first 32 KiB of the address space, where nothing is ever mapped (Linux
/// keeps at least the first 64 KiB unmapped by default): its rule, 0, is
/// no frame's, so a walk that read it there would stop at the bounds
/// check and fall back.
#[inline(always)]
fn slot(pc: usize) -> (usize, u64) {
    (pc & (TABLE_LEN - 1), (pc >> TABLE_BITS) as u64)
}

#[cold]
fn map_table() -> *mut AtomicU64 {
    let bytes = TABLE_LEN * std::mem::size_of::<AtomicU64>();
    // SAFETY: an anonymous private mapping, asked of the kernel; no memory
    // of this process is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    // Zeroed pages: every entry empty. Two threads may map at once; one
    // mapping wins, the other is given back.
    match TABLE.compare_exchange(
        std::ptr::null_mut(),
        p.cast(),
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => p.cast(),
        Err(winner) => {
            // SAFETY: `p` is the mapping made above, seen by no one else.
            unsafe { libc::munmap(p, bytes) };
            winner
        }
    }
}

#[inline(always)]
fn table() -> *mut AtomicU64 {
    let t = TABLE.load(Ordering::Acquire);
    if t.is_null() {
        map_table()
    } else {
        t
    }
}

/// The packed rule at return address `pc` (or at the walk's first `pc`,
/// just past an instruction of the walking function): cached, else read
/// from the CFI of the instruction before it, which is the call.
///
/// # Safety
/// `table` is the published table (not null).
#[inline(always)]
unsafe fn rule_bits(table: *mut AtomicU64, pc: usize) -> u32 {
    let (i, tag) = slot(pc);
    // SAFETY: `table` is the live mapping of TABLE_LEN entries (never
    // unmapped once published) and `i < TABLE_LEN`.
    let entry = unsafe { &*table.add(i) };
    let e = entry.load(Ordering::Relaxed);
    if e >> 32 == tag {
        e as u32
    } else {
        fill(entry, tag, pc)
    }
}

/// Reads the rule at `pc` and caches it in `entry` (when its tag fits).
#[cold]
#[inline(never)]
fn fill(entry: &AtomicU64, tag: u64, pc: usize) -> u32 {
    let bits = read_rule(pc.wrapping_sub(1)).pack();
    if pc >> ADDRESS_BITS == 0 {
        // One word: a racing reader sees the old entry or this one, whole.
        entry.store(tag << 32 | u64::from(bits), Ordering::Relaxed);
    }
    bits
}

// ---- reading a rule from the CFI ----------------------------------------

/// `struct dwarf_eh_bases` of libgcc's `unwind-dw2-fde.h`.
#[repr(C)]
#[allow(dead_code)] // `tbase` and `dbase` are written by libgcc, never read.
struct DwarfEhBases {
    tbase: *mut c_void,
    dbase: *mut c_void,
    func: *mut c_void,
}

extern "C" {
    /// libgcc's (exported from `libgcc_s`, which the standard library
    /// links): the FDE that covers `pc`, or null; fills `bases`, `func`
    /// being the FDE's first address. The platform unwinder calls it for
    /// every frame it walks; it takes the loader's (recursive) lock, or
    /// none where glibc has `_dl_find_object`.
    fn _Unwind_Find_FDE(pc: *mut c_void, bases: *mut DwarfEhBases) -> *const u8;
}

/// DWARF register numbers of x86_64 System V.
const REG_RBP: u64 = 6;
const REG_RSP: u64 = 7;
const REG_RA: u64 = 16;

/// The rule for the frame executing `target` (a call instruction's
/// address, or the walk's own instruction).
#[cold]
#[inline(never)]
fn read_rule(target: usize) -> Rule {
    let mut bases = DwarfEhBases {
        tbase: std::ptr::null_mut(),
        dbase: std::ptr::null_mut(),
        func: std::ptr::null_mut(),
    };
    let _g = bookkeeping();
    // SAFETY: `_Unwind_Find_FDE` only reads the loaded objects' unwind
    // tables and fills `bases`.
    let fde = unsafe { _Unwind_Find_FDE(target as *mut c_void, &mut bases) };
    if fde.is_null() {
        return Rule::End;
    }
    // SAFETY: `fde` is an FDE of a loaded object's `.eh_frame`, mapped for
    // as long as the object is loaded (it is: `target` is in it), with its
    // CIE before it in the same section.
    unsafe { rule_from_fde(fde, bases.func as usize, target) }.unwrap_or(Rule::Slow)
}

/// A cursor over CFI bytes, never past `end`.
struct Bytes {
    at: *const u8,
    end: *const u8,
}

impl Bytes {
    fn u8(&mut self) -> Option<u8> {
        if self.at >= self.end {
            return None;
        }
        // SAFETY: `at < end`, inside the CFI entry the cursor was made for.
        let b = unsafe { *self.at };
        // SAFETY: at most `end`, in (or one past) the same entry.
        self.at = unsafe { self.at.add(1) };
        Some(b)
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        let left = self.end as usize - self.at as usize;
        let n = usize::try_from(n).ok().filter(|&n| n <= left)?;
        // SAFETY: `n` bytes are left before `end`.
        self.at = unsafe { self.at.add(n) };
        Some(())
    }

    fn fixed<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        for b in &mut out {
            *b = self.u8()?;
        }
        Some(out)
    }

    fn uleb(&mut self) -> Option<u64> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
    }

    fn sleb(&mut self) -> Option<i64> {
        let (mut v, mut shift) = (0i64, 0u32);
        loop {
            let b = self.u8()?;
            if shift < 64 {
                v |= i64::from(b & 0x7f) << shift;
            }
            shift += 7;
            if b & 0x80 == 0 {
                if shift < 64 && b & 0x40 != 0 {
                    v |= -1i64 << shift;
                }
                return Some(v);
            }
        }
    }

    /// Skips a pointer of encoding `enc` (`DW_EH_PE_*`); `None` for an
    /// encoding whose size depends on where it lies (aligned).
    fn skip_encoded(&mut self, enc: u8) -> Option<()> {
        if enc == 0xff {
            return Some(());
        }
        if enc & 0x70 == 0x50 {
            return None;
        }
        match enc & 0x0f {
            0x00 | 0x04 | 0x0c => self.skip(8),
            0x03 | 0x0b => self.skip(4),
            0x02 | 0x0a => self.skip(2),
            0x01 => self.uleb().map(drop),
            0x09 => self.sleb().map(drop),
            _ => None,
        }
    }
}

/// What a register's rule is, for the registers the walk follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegRule {
    Same,
    Offset(i64),
    Undefined,
    /// In another register, or by an expression: beyond the fast walk.
    Other,
}

/// One row of the CFI table, for what the walk uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row {
    cfa_reg: u64,
    cfa_off: i64,
    /// False once the CFA is given by an expression.
    cfa_plain: bool,
    rbp: RegRule,
    ra: RegRule,
}

impl Row {
    fn set(&mut self, reg: u64, rule: RegRule) {
        match reg {
            REG_RBP => self.rbp = rule,
            REG_RA => self.ra = rule,
            _ => {}
        }
    }

    fn restore(&mut self, reg: u64, init: &Row) {
        match reg {
            REG_RBP => self.rbp = init.rbp,
            REG_RA => self.ra = init.ra,
            _ => {}
        }
    }
}

/// The most `DW_CFA_remember_state`s in flight (compilers use one).
const STATE_DEPTH: usize = 8;

/// The CFI program state while running a CIE's and an FDE's instructions.
struct Program {
    row: Row,
    /// The row after the CIE's instructions (`None` while running them).
    init: Option<Row>,
    saved: [Option<Row>; STATE_DEPTH],
    depth: usize,
    loc: usize,
    target: usize,
    code_align: u64,
    data_align: i64,
}

impl Program {
    /// Runs `insns` until the row covering `target` is complete; `None` on
    /// an instruction the fast walk does not follow.
    fn run(&mut self, mut insns: Bytes) -> Option<()> {
        while let Some(op) = insns.u8() {
            let (high, low) = (op >> 6, u64::from(op & 0x3f));
            match high {
                1 => {
                    if self.advance(low)? {
                        return Some(());
                    }
                }
                2 => {
                    let off = self.factored(insns.uleb()?)?;
                    self.row.set(low, RegRule::Offset(off));
                }
                3 => {
                    let init = self.init?;
                    self.row.restore(low, &init);
                }
                _ => match op {
                    0x00 => {}
                    0x02 => {
                        if self.advance(u64::from(insns.u8()?))? {
                            return Some(());
                        }
                    }
                    0x03 => {
                        if self.advance(u64::from(u16::from_ne_bytes(insns.fixed()?)))? {
                            return Some(());
                        }
                    }
                    0x04 => {
                        if self.advance(u64::from(u32::from_ne_bytes(insns.fixed()?)))? {
                            return Some(());
                        }
                    }
                    // offset_extended
                    0x05 => {
                        let reg = insns.uleb()?;
                        let off = self.factored(insns.uleb()?)?;
                        self.row.set(reg, RegRule::Offset(off));
                    }
                    // restore_extended
                    0x06 => {
                        let reg = insns.uleb()?;
                        let init = self.init?;
                        self.row.restore(reg, &init);
                    }
                    0x07 => self.row.set(insns.uleb()?, RegRule::Undefined),
                    0x08 => self.row.set(insns.uleb()?, RegRule::Same),
                    // register
                    0x09 => {
                        let reg = insns.uleb()?;
                        insns.uleb()?;
                        self.row.set(reg, RegRule::Other);
                    }
                    // remember_state
                    0x0a => {
                        *self.saved.get_mut(self.depth)? = Some(self.row);
                        self.depth += 1;
                    }
                    // restore_state
                    0x0b => {
                        self.depth = self.depth.checked_sub(1)?;
                        self.row = self.saved[self.depth]?;
                    }
                    // def_cfa
                    0x0c => {
                        self.row.cfa_reg = insns.uleb()?;
                        self.row.cfa_off = i64::try_from(insns.uleb()?).ok()?;
                        self.row.cfa_plain = true;
                    }
                    // def_cfa_register
                    0x0d => self.row.cfa_reg = insns.uleb()?,
                    // def_cfa_offset
                    0x0e => self.row.cfa_off = i64::try_from(insns.uleb()?).ok()?,
                    // def_cfa_expression
                    0x0f => {
                        let len = insns.uleb()?;
                        insns.skip(len)?;
                        self.row.cfa_plain = false;
                    }
                    // expression
                    0x10 => {
                        let reg = insns.uleb()?;
                        let len = insns.uleb()?;
                        insns.skip(len)?;
                        self.row.set(reg, RegRule::Other);
                    }
                    // offset_extended_sf
                    0x11 => {
                        let reg = insns.uleb()?;
                        let off = insns.sleb()?.checked_mul(self.data_align)?;
                        self.row.set(reg, RegRule::Offset(off));
                    }
                    // def_cfa_sf
                    0x12 => {
                        self.row.cfa_reg = insns.uleb()?;
                        self.row.cfa_off = insns.sleb()?.checked_mul(self.data_align)?;
                        self.row.cfa_plain = true;
                    }
                    // def_cfa_offset_sf
                    0x13 => self.row.cfa_off = insns.sleb()?.checked_mul(self.data_align)?,
                    // val_offset, val_offset_sf
                    0x14 | 0x15 => {
                        let reg = insns.uleb()?;
                        insns.uleb()?;
                        self.row.set(reg, RegRule::Other);
                    }
                    // val_expression
                    0x16 => {
                        let reg = insns.uleb()?;
                        let len = insns.uleb()?;
                        insns.skip(len)?;
                        self.row.set(reg, RegRule::Other);
                    }
                    // GNU_args_size: what a caller pushed; no bearing on the CFA.
                    0x2e => {
                        insns.uleb()?;
                    }
                    // GNU_negative_offset_extended
                    0x2f => {
                        let reg = insns.uleb()?;
                        let off = self.factored(insns.uleb()?)?;
                        self.row.set(reg, RegRule::Offset(off.checked_neg()?));
                    }
                    // set_loc and anything unknown: not followed.
                    _ => return None,
                },
            }
        }
        Some(())
    }

    /// Moves the location by `delta` code units; true when that passes the
    /// target (the row is complete).
    fn advance(&mut self, delta: u64) -> Option<bool> {
        let step = usize::try_from(delta.checked_mul(self.code_align)?).ok()?;
        let next = self.loc.checked_add(step)?;
        if next > self.target {
            return Some(true);
        }
        self.loc = next;
        Some(false)
    }

    fn factored(&self, off: u64) -> Option<i64> {
        i64::try_from(off).ok()?.checked_mul(self.data_align)
    }
}

/// The rule from an FDE, for `target` inside it.
///
/// # Safety
/// `fde` points to an FDE in a mapped `.eh_frame`, its CIE before it.
unsafe fn rule_from_fde(fde: *const u8, func: usize, target: usize) -> Option<Rule> {
    // SAFETY: an FDE starts with its 4-byte length and 4-byte CIE offset,
    // and holds `length` bytes after the length.
    let (fde_len, cie_delta) = unsafe {
        (
            std::ptr::read_unaligned(fde.cast::<u32>()),
            std::ptr::read_unaligned(fde.add(4).cast::<u32>()),
        )
    };
    if fde_len < 4 || fde_len == u32::MAX {
        return None;
    }
    // SAFETY: the CIE offset counts back from its own field to the CIE, in
    // the same section.
    let cie = unsafe { fde.add(4).sub(cie_delta as usize) };
    // SAFETY: a CIE starts with its 4-byte length.
    let cie_len = unsafe { std::ptr::read_unaligned(cie.cast::<u32>()) };
    if cie_len < 4 || cie_len == u32::MAX {
        return None;
    }
    let mut c = Bytes {
        // SAFETY: past the length and the CIE id, inside the CIE.
        at: unsafe { cie.add(8) },
        // SAFETY: one past the CIE's last byte.
        end: unsafe { cie.add(4 + cie_len as usize) },
    };
    let version = c.u8()?;
    if version != 1 && version != 3 {
        return None;
    }
    let mut aug = [0u8; 8];
    let mut aug_len = 0;
    loop {
        match c.u8()? {
            0 => break,
            ch => {
                *aug.get_mut(aug_len)? = ch;
                aug_len += 1;
            }
        }
    }
    let aug = &aug[..aug_len];
    let code_align = c.uleb()?;
    let data_align = c.sleb()?;
    let ra = if version == 1 {
        u64::from(c.u8()?)
    } else {
        c.uleb()?
    };
    if ra != REG_RA {
        return None;
    }
    let mut fde_enc = 0u8;
    let has_z = aug.first() == Some(&b'z');
    if has_z {
        let len = c.uleb()?;
        let mut data = Bytes {
            at: c.at,
            end: c.end,
        };
        c.skip(len)?;
        data.end = c.at;
        for &ch in &aug[1..] {
            match ch {
                b'R' => fde_enc = data.u8()?,
                b'L' => {
                    data.u8()?;
                }
                b'P' => {
                    let enc = data.u8()?;
                    data.skip_encoded(enc)?;
                }
                // A signal frame: the platform unwinder's.
                b'S' => return Some(Rule::Slow),
                _ => return None,
            }
        }
    } else if !aug.is_empty() {
        return None;
    }
    let mut f = Bytes {
        // SAFETY: past the length and the CIE offset, inside the FDE.
        at: unsafe { fde.add(8) },
        // SAFETY: one past the FDE's last byte.
        end: unsafe { fde.add(4 + fde_len as usize) },
    };
    // The initial location (`func` has it, decoded) and the range.
    f.skip_encoded(fde_enc & 0x0f)?;
    f.skip_encoded(fde_enc & 0x0f)?;
    if has_z {
        let len = f.uleb()?;
        f.skip(len)?;
    }
    let mut program = Program {
        row: Row {
            cfa_reg: REG_RSP,
            cfa_off: 0,
            cfa_plain: true,
            rbp: RegRule::Same,
            ra: RegRule::Same,
        },
        init: None,
        saved: [None; STATE_DEPTH],
        depth: 0,
        loc: func,
        target,
        code_align,
        data_align,
    };
    program.run(c)?;
    program.init = Some(program.row);
    program.depth = 0;
    program.run(f)?;
    Some(rule_of_row(&program.row))
}

fn rule_of_row(row: &Row) -> Rule {
    if row.ra == RegRule::Undefined {
        return Rule::End;
    }
    if row.ra != RegRule::Offset(-8) || !row.cfa_plain {
        return Rule::Slow;
    }
    let cfa_rbp = match row.cfa_reg {
        REG_RSP => false,
        REG_RBP => true,
        _ => return Rule::Slow,
    };
    let rbp = match row.rbp {
        RegRule::Same => Rbp::Same,
        // Where a caller's `rbp` is lost, a CFA based on it later cannot
        // be followed: the platform unwinder's.
        RegRule::Undefined => return Rule::Slow,
        RegRule::Offset(m) => match i32::try_from(m) {
            Ok(m) => Rbp::At(m),
            Err(_) => return Rule::Slow,
        },
        RegRule::Other => return Rule::Slow,
    };
    Rule::frame(cfa_rbp, row.cfa_off, rbp)
}

// ---- the walks -----------------------------------------------------------

/// How many walks met a frame the fast walk does not follow and were done
/// by the platform unwinder.
static FALLBACKS: AtomicUsize = AtomicUsize::new(0);

/// How many walks the platform unwinder took over so far.
pub(crate) fn fallbacks() -> usize {
    FALLBACKS.load(Ordering::Relaxed)
}

/// The address of the next instruction, the stack pointer and the frame
/// register, read in the function this expands in.
macro_rules! registers {
    () => {{
        let (pc, sp, fp): (usize, usize, usize);
        // SAFETY: reads three registers, nothing else. The three are read
        // in one block, so they are one moment's, and `pc` lies in it.
        unsafe {
            std::arch::asm!(
                "lea {pc}, [rip]",
                "mov {sp}, rsp",
                "mov {fp}, rbp",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                options(nomem, nostack, preserves_flags)
            )
        };
        (pc, sp, fp)
    }};
}

/// Writes the return addresses of the caller's callers into `ips`,
/// innermost first, after dropping `skip` of them: called from `f`, the
/// first is where `f` returns to. Returns how many it wrote. Walks with the
/// cached rules, else (a frame they cannot follow) with the platform
/// unwinder; both give the same addresses.
#[inline(never)]
pub(crate) fn walk(ips: &mut [usize], skip: usize) -> usize {
    let (pc, sp, fp) = registers!();
    match fast(ips, skip + 1, pc, sp, fp) {
        Some(n) => n,
        None => {
            FALLBACKS.fetch_add(1, Ordering::Relaxed);
            // `platform` counts the frames to drop from its caller, which
            // must be this function: called last, it would be compiled (in
            // an optimised build) as a jump that replaces this frame with
            // its own, and the walk would drop one caller too many. The
            // `black_box` after the call keeps it a call.
            std::hint::black_box(platform(ips, skip + 1))
        }
    }
}

/// As [`walk`] with the cached rules only: `None` where they cannot follow
/// a frame.
#[inline(never)]
pub(crate) fn walk_fast(ips: &mut [usize], skip: usize) -> Option<usize> {
    let (pc, sp, fp) = registers!();
    fast(ips, skip + 1, pc, sp, fp)
}

/// The lowest stack pointer a fast walk starts from: above it, no address
/// the walk computes (a CFA, and a saved `rbp`'s slot at most 2048 bytes
/// below it) wraps around zero. No thread's stack lies this low.
const MIN_SP: usize = 4096;

/// The walk along the cached rules from a frame at `pc` whose `rsp` is
/// `sp`; the first `drop` return addresses are not written.
#[inline(always)]
fn fast(ips: &mut [usize], drop: usize, pc: usize, sp: usize, fp: usize) -> Option<usize> {
    let (low, top) = crate::probe::stack_bounds();
    // Off the thread's stack (a signal's alternate stack, a coroutine's),
    // nothing above `sp` is known to be mapped: the platform unwinder's.
    // (Unknown bounds are `(0, 0)`: then no `sp` is below the top.)
    if sp < low || sp < MIN_SP {
        return None;
    }
    // The highest address a word may be loaded from.
    let last = top.checked_sub(WORD)?;
    if last < sp {
        return None;
    }
    let table = table();
    if table.is_null() {
        return None;
    }
    let at = Cursor {
        pc,
        sp,
        fp,
        fp_at: 0,
        cfa_rbp: false,
        kept: false,
    };
    let state = MEMO_STATE.with(|s| s.replace(s.get() | MEMO_BUSY));
    if state & MEMO_BUSY != 0 {
        // A walk interrupted (by a signal handler) on this thread is using
        // the memos: this one walks without them.
        // SAFETY: `table` is not null; `[sp, last]` is the callers' frames
        // and `sp >= MIN_SP` (checked above).
        return unsafe { plain(ips, drop, table, at, last) };
    }
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let memos = MEMOS.with(|m| m.get()).cast::<Memo>();
    let last_walk = usize::from(state & 1);
    // SAFETY: this thread's two memos, distinct; no other reference to
    // them exists while MEMO_BUSY is set (a handler interrupting this walk
    // sees it and leaves them alone). `table`, `[sp, last]` as above.
    let (n, flip) = unsafe {
        let (memo, scratch) = (&mut *memos.add(last_walk), &mut *memos.add(last_walk ^ 1));
        memo_walk(ips, drop, table, at, last, memo, scratch)
    };
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    MEMO_STATE.with(|s| s.set((last_walk ^ usize::from(flip)) as u8));
    n
}

/// The walk without the memos: every frame by its rule.
///
/// # Safety
/// As [`step`]'s, for `at`.
#[inline(always)]
unsafe fn plain(
    ips: &mut [usize],
    drop: usize,
    table: *mut AtomicU64,
    mut at: Cursor,
    last: usize,
) -> Option<usize> {
    for _ in 0..drop {
        // SAFETY: the caller's (`step` only raises `at.sp`, to at most
        // `last + WORD`, and keeps the rest).
        if unsafe { step(table, &mut at, last) }? == 0 {
            return Some(0);
        }
    }
    for (n, ip) in ips.iter_mut().enumerate() {
        // SAFETY: as above.
        match unsafe { step(table, &mut at, last) }? {
            0 => return Some(n),
            ra => *ip = ra,
        }
    }
    Some(ips.len())
}

// ---- the memo of the last walk -------------------------------------------
//
// Consecutive walks on a thread mostly share their outer frames (the same
// callers of the same code) and often all of them (a loop that allocates).
// Each thread keeps the states its last successful walk passed through, a
// chain of step records: a state's return address, stack pointer and
// `rbp`, and its step's flags (CFA based on `rbp`; `rbp` kept) and where
// the step loaded the caller's `rbp` from; the next state is where the
// step went. A walk that reaches a state of the last walk (the same return
// address and stack pointer) goes on exactly as the last one did so long
// as each step's inputs are unchanged: a step's result is a function of
// its state's stack pointer, its `rbp` (only for a CFA based on it), the
// rule at its return address (a rule is read once per address) and the
// return address it loads. So from there the walk checks, frame by frame,
// that the return address each step loaded is still in its place (and, at
// a CFA based on `rbp`, that this walk's `rbp` is the one the step used),
// an independent load a frame instead of a chain of dependent ones, takes
// the last walk's next state where it is, and goes back to the rules at
// the first step that does not hold. This walk's `rbp` at a state is the
// word the last step that loaded one loads now. Every address loaded this
// way is a step's load address of an earlier walk on this thread, and is
// checked to lie in `[sp, last]` of this walk before it is loaded.
//
// The memos are two per thread: `memo`, the last walk's, and `scratch`,
// where a walk keeps its states between the stretches of the last walk it
// follows (it may leave the last walk where their callers differ and meet
// it again further up; if it never meets it, `scratch` becomes the last
// walk's). A signal handler that walks
// while a walk on its thread is under way finds the memos marked busy and
// walks without them.

/// The most states a memo keeps (a walk's buffer, 32 frames for an event
/// stack, plus its dropped frames and its start, fit): a power of two, an
/// index masked by `STATES - 1` needs no bounds check, and at most 64, the
/// bits of a mask.
const STATES: usize = 64;

/// The states of a thread's last walk (see above).
struct Memo {
    /// How many states are kept: state 0 is the walk's start, state
    /// `j + 1` the one step `j` went to.
    len: usize,
    pc: [usize; STATES],
    sp: [usize; STATES],
    fp: [usize; STATES],
    /// Where step `j` loaded the caller's `rbp` from (the return
    /// address's word when it kept `rbp`).
    fp_at: [usize; STATES],
    /// Bit `j`: step `j`'s CFA was based on `rbp`.
    cfa_rbp: u64,
    /// Bit `j`: step `j` kept `rbp`.
    kept: u64,
}

const MEMO_BUSY: u8 = 2;

thread_local! {
    /// This thread's two memos (constant initialiser, no destructor:
    /// usable at any time on any thread).
    static MEMOS: std::cell::UnsafeCell<[Memo; 2]> = const {
        std::cell::UnsafeCell::new(
            [const {
                Memo {
                    len: 0,
                    pc: [0; STATES],
                    sp: [0; STATES],
                    fp: [0; STATES],
                    fp_at: [0; STATES],
                    cfa_rbp: 0,
                    kept: 0,
                }
            }; 2],
        )
    };
    /// Which memo holds the last walk (bit 0), and whether a walk is using
    /// the memos (`MEMO_BUSY`).
    static MEMO_STATE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Where a walk writes its return addresses: dropping the first `drop`.
struct Out<'a> {
    ips: &'a mut [usize],
    n: usize,
    drop: usize,
}

impl Out<'_> {
    /// Takes a return address; true when the buffer is full.
    #[inline(always)]
    fn push(&mut self, ra: usize) -> bool {
        if self.drop > 0 {
            self.drop -= 1;
            return false;
        }
        self.ips[self.n] = ra;
        self.n += 1;
        self.n == self.ips.len()
    }
}

impl Memo {
    /// Keeps state `j`, if there is room.
    #[inline(always)]
    fn keep(&mut self, j: usize, at: &Cursor) {
        if j < STATES {
            let j = j & (STATES - 1);
            self.pc[j] = at.pc;
            self.sp[j] = at.sp;
            self.fp[j] = at.fp;
        }
    }

    /// Keeps step `j`'s loads and flags.
    #[inline(always)]
    fn keep_step(&mut self, j: usize, fp_at: usize, cfa_rbp: bool, kept: bool) {
        self.fp_at[j & (STATES - 1)] = fp_at;
        self.cfa_rbp |= u64::from(cfa_rbp) << (j & (STATES - 1));
        self.kept |= u64::from(kept) << (j & (STATES - 1));
    }
}

/// The walk, with the last walk's memo `memo` to follow where it can, and
/// `scratch` for the states between the stretches it follows. Returns what
/// the walk found, and whether `scratch` now holds the last walk (else
/// `memo` does, or, with `memo.len` 0, neither).
///
/// `memo` holds this walk's states below `base`, and the last walk's from
/// `k` to `end`; the walk keeps its states from `base` on in `scratch`
/// (state `j` at `j - base`) until it meets one of the last walk's (its
/// state `j` is the last walk's `k`): then the last walk's states from `k`
/// are moved to `j` in `memo`, this walk's from `base` copied before them,
/// and the walk follows them there, in place, while their steps hold. From
/// the first step that does not (or the last walk's end), it steps by the
/// rule again, keeping its states in `scratch` again with `base` past the
/// stretch followed, and may meet the last walk again further up (the
/// callers both walks share, past a frame they do not).
///
/// # Safety
/// As [`step`]'s, for `at`; `memo` holds states of an earlier walk on this
/// thread (or none).
#[inline(always)]
unsafe fn memo_walk(
    ips: &mut [usize],
    drop: usize,
    table: *mut AtomicU64,
    mut at: Cursor,
    last: usize,
    memo: &mut Memo,
    scratch: &mut Memo,
) -> (Option<usize>, bool) {
    let bottom = at.sp;
    let span = last - bottom;
    let mut out = Out { ips, n: 0, drop };
    if out.ips.is_empty() {
        return (Some(0), false);
    }
    let mut end = memo.len.min(STATES);
    scratch.cfa_rbp = 0;
    scratch.kept = 0;
    let (mut j, mut k, mut base) = (0, 0, 0);
    loop {
        if j < STATES {
            scratch.keep(j - base, &at);
        }
        while k < end && memo.sp[k] < at.sp {
            k += 1;
        }
        if k < end && memo.sp[k] == at.sp && memo.pc[k] == at.pc && j < STATES {
            // The last walk's state `k` is this one's `j`: its states from
            // `k` go to `j` (as many as fit), this walk's from `base` before
            // them.
            let moved = (end - k).min(STATES - j);
            let merge = |m: u64, scratch: u64| {
                m & below(base) | (scratch << base) & below(j) & !below(base) | (m >> k) << j
            };
            memo.cfa_rbp = merge(memo.cfa_rbp, scratch.cfa_rbp);
            memo.kept = merge(memo.kept, scratch.kept);
            if j != k {
                memo.pc.copy_within(k..k + moved, j);
                memo.sp.copy_within(k..k + moved, j);
                memo.fp.copy_within(k..k + moved, j);
                memo.fp_at.copy_within(k..k + moved, j);
            }
            let n = j - base;
            memo.pc[base..j].copy_from_slice(&scratch.pc[..n]);
            memo.sp[base..j].copy_from_slice(&scratch.sp[..n]);
            memo.fp[base..j].copy_from_slice(&scratch.fp[..n]);
            memo.fp_at[base..j].copy_from_slice(&scratch.fp_at[..n]);
            end = j + moved;
            // Until this walk ends well, `memo` holds no walk's states.
            memo.len = 0;
            // Followed no further than the states whose return addresses
            // fill `ips` (the stretch beyond stays the last walk's, for a
            // later walk to check when it needs it).
            let needed = (j + out.drop + (out.ips.len() - out.n) + 1).min(end);
            // SAFETY: `memo`'s states `j..end` are the last walk's from
            // `k` (moved), a chain of steps of earlier walks on this
            // thread; `bottom` and `span` are this walk's.
            let t = unsafe { follow(memo, &mut at, j, needed, bottom, span) };
            // The return addresses of the steps followed, into `ips`, at
            // most as many as it has room for.
            let skip = out.drop.min(t - j);
            out.drop -= skip;
            let s = j + 1 + skip;
            let room = out.ips.len() - out.n;
            if t + 1 - s >= room {
                out.ips[out.n..].copy_from_slice(&memo.pc[s..s + room]);
                out.n += room;
                memo.len = end;
                return (Some(out.n), false);
            }
            out.ips[out.n..out.n + (t + 1 - s)].copy_from_slice(&memo.pc[s..=t]);
            out.n += t + 1 - s;
            // On from state `t` by its rule: its step is this walk's own,
            // kept in `memo`; the states after it in `scratch` again.
            j = t;
            memo.fp[j] = at.fp;
            // SAFETY: the caller's; `at` is state `t`, reached by steps
            // checked to hold, so `at.sp` rose to at most `last + WORD`.
            let ra = unsafe { step(table, &mut at, last) };
            let Some(ra) = ra else {
                return (None, false);
            };
            if ra == 0 {
                memo.len = j + 1;
                return (Some(out.n), false);
            }
            let bit = !below(j) & below(j + 1);
            memo.cfa_rbp = memo.cfa_rbp & !bit | if at.cfa_rbp { bit } else { 0 };
            memo.kept = memo.kept & !bit | if at.kept { bit } else { 0 };
            memo.fp_at[j] = at.fp_at;
            (j, k, base) = (j + 1, j + 1, j + 1);
            (scratch.cfa_rbp, scratch.kept) = (0, 0);
            if out.push(ra) {
                if j < STATES {
                    scratch.keep(0, &at);
                }
                break;
            }
            continue;
        }
        // SAFETY: the caller's; `at` is this walk's state, reached by
        // steps (or by steps checked to hold), so `at.sp` rose to at most
        // `last + WORD`.
        let ra = unsafe { step(table, &mut at, last) };
        let Some(ra) = ra else {
            return (None, false);
        };
        if ra == 0 {
            break;
        }
        if j < STATES - 1 {
            scratch.keep_step(j - base, at.fp_at, at.cfa_rbp, at.kept);
        }
        j += 1;
        if out.push(ra) {
            if j < STATES {
                scratch.keep(j - base, &at);
            }
            break;
        }
    }
    // The walk ended with its states from `base` in `scratch`.
    let len = (j + 1).min(STATES);
    if base == 0 {
        scratch.len = len;
        return (Some(out.n), true);
    }
    if base < len {
        let n = len - base;
        memo.pc[base..len].copy_from_slice(&scratch.pc[..n]);
        memo.sp[base..len].copy_from_slice(&scratch.sp[..n]);
        memo.fp[base..len].copy_from_slice(&scratch.fp[..n]);
        memo.fp_at[base..len].copy_from_slice(&scratch.fp_at[..n]);
        let below = (1u64 << base) - 1;
        memo.cfa_rbp = memo.cfa_rbp & below | scratch.cfa_rbp << base;
        memo.kept = memo.kept & below | scratch.kept << base;
    }
    memo.len = len.max(base.min(STATES));
    (Some(out.n), false)
}

/// Follows the last walk's steps in `memo` from this walk's state `j` (at
/// `at`, the last walk's state `j` too) while they hold, up to state `end`:
/// returns the state reached, with `at` there.
///
/// Step `t` holds while the return address it loaded is still in its place
/// and, for a CFA based on `rbp`, this walk's `rbp` is the one it used
/// (this walk's `rbp` at a state: the word the last step that loaded one
/// loads now, or the `rbp` at `j`). A step's record (its state's `rbp`, its
/// flags, its loads and the state it went to) is one real step's, so it
/// stays true as it is: nothing is written.
///
/// The walk's `rbp` matters only at a step whose CFA is based on it (rare
/// in code built without frame pointers) and at the state reached, so
/// [`follow_by_returns`] takes a frame with one bounds check, one load and
/// one comparison, and works out the `rbp` only where it is needed;
/// [`follow_by_steps`], which tracks it at every step, decides where that
/// `rbp`'s word is not where a step of this walk could load it (no chain
/// of real steps gives that).
///
/// # Safety
/// `memo`'s states `j..end` are a chain of steps of earlier walks on this
/// thread; `[bottom, bottom + span]` is this walk's `[sp, last]`.
#[inline(always)]
unsafe fn follow(
    memo: &Memo,
    at: &mut Cursor,
    j: usize,
    end: usize,
    bottom: usize,
    span: usize,
) -> usize {
    let stretch = Stretch {
        j,
        end,
        bottom,
        span,
    };
    // SAFETY: the caller's.
    if let Some(t) = unsafe { follow_by_returns(memo, at, stretch) } {
        return t;
    }
    // SAFETY: the caller's.
    unsafe { follow_by_steps(memo, at, stretch) }
}

/// What [`follow`] follows: the last walk's states from `j` up to `end`,
/// checked against this walk's `[bottom, bottom + span]` (its `[sp,
/// last]`).
#[derive(Clone, Copy)]
struct Stretch {
    j: usize,
    end: usize,
    bottom: usize,
    span: usize,
}

/// The bits below bit `n` (all 64 from `n = 64` on).
#[inline(always)]
fn below(n: usize) -> u64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// This walk's `rbp` at state `t` of `stretch`: the word the last step
/// before `t` that did not keep `rbp` loads now, or `at_j`, the `rbp` at
/// the stretch's first state. `None` where that word is not in `[bottom,
/// bottom + span]`.
///
/// # Safety
/// `[bottom, bottom + span]` is this walk's `[sp, last]`.
#[inline(always)]
unsafe fn rbp_at(memo: &Memo, stretch: Stretch, t: usize, at_j: usize) -> Option<usize> {
    let Stretch {
        j, bottom, span, ..
    } = stretch;
    let loads = !memo.kept & below(t) & !below(j);
    if loads == 0 {
        return Some(at_j);
    }
    let s = (63 - loads.leading_zeros()) as usize;
    let fp_at = memo.fp_at[s & (STATES - 1)];
    if fp_at.wrapping_sub(bottom) > span {
        return None;
    }
    // SAFETY: `fp_at` lies in `[bottom, last]` (checked), the callers'
    // frames.
    Some(unsafe { *(fp_at as *const usize) })
}

/// [`follow`] by the return addresses: a step holds while the return
/// address it loaded is in its place and, where its CFA is based on
/// `rbp`, this walk's `rbp` ([`rbp_at`]) is the one it used. `None` (and
/// `at` unchanged) where an `rbp` needed is not where a step of this walk
/// could load it.
///
/// # Safety
/// As [`follow`]'s.
#[inline(always)]
unsafe fn follow_by_returns(memo: &Memo, at: &mut Cursor, stretch: Stretch) -> Option<usize> {
    let Stretch {
        j,
        end,
        bottom,
        span,
    } = stretch;
    // The steps `j..last_step`, those of them with a CFA based on `rbp`.
    let last_step = end.min(STATES).saturating_sub(1);
    let rbp_steps = memo.cfa_rbp & below(last_step) & !below(j);
    // The return address a step `t` loaded is in `sp[t + 1] - WORD`: a
    // step holds when that lies in `[bottom, last]` and still holds it.
    let lo = bottom.wrapping_add(WORD);
    let holds = |sp: usize, pc: usize| {
        // SAFETY: `sp - WORD` lies in `[bottom, last]` (checked first),
        // the callers' frames.
        sp.wrapping_sub(lo) <= span && unsafe { *((sp - WORD) as *const usize) } == pc
    };
    let mut t = j;
    'stretch: while t < last_step {
        // Up to the next step based on `rbp`, the return addresses alone.
        let later = rbp_steps & !below(t);
        let stop = if later == 0 {
            last_step
        } else {
            later.trailing_zeros() as usize
        };
        // `stop < last_step < STATES`: every index is in bounds.
        let stop = stop & (STATES - 1);
        while t < stop {
            let next = t + 1;
            if !holds(memo.sp[next], memo.pc[next]) {
                break 'stretch;
            }
            t = next;
        }
        if t == last_step {
            break;
        }
        // SAFETY: the caller's.
        let fp = unsafe { rbp_at(memo, stretch, t, at.fp) }?;
        let next = (t + 1) & (STATES - 1);
        if fp != memo.fp[t & (STATES - 1)] || !holds(memo.sp[next], memo.pc[next]) {
            break;
        }
        t += 1;
    }
    // SAFETY: the caller's.
    at.fp = unsafe { rbp_at(memo, stretch, t, at.fp) }?;
    at.pc = memo.pc[t & (STATES - 1)];
    at.sp = memo.sp[t & (STATES - 1)];
    Some(t)
}

/// [`follow`] step by step: each step's `rbp` (where its CFA is based on
/// it) and its loads checked.
///
/// # Safety
/// As [`follow`]'s.
#[inline(never)]
unsafe fn follow_by_steps(memo: &Memo, at: &mut Cursor, stretch: Stretch) -> usize {
    let Stretch {
        j,
        end,
        bottom,
        span,
    } = stretch;
    let (mut t, mut fp_from) = (j, 0usize);
    let (mut cfa_rbp, mut kept) = (memo.cfa_rbp >> j, memo.kept >> j);
    while t + 1 < end {
        let (i, next) = (t & (STATES - 1), (t + 1) & (STATES - 1));
        if cfa_rbp & 1 != 0 {
            let fp = if fp_from == 0 {
                at.fp
            } else {
                // SAFETY: `fp_from` lies in `[bottom, last]` (checked
                // below when taken), the callers' frames.
                unsafe { *(fp_from as *const usize) }
            };
            if fp != memo.fp[i] {
                break;
            }
        }
        let ra_at = memo.sp[next].wrapping_sub(WORD);
        let fp_at = if kept & 1 == 0 {
            memo.fp_at[i]
        } else {
            fp_from
        };
        if ra_at.wrapping_sub(bottom) > span || fp_at != 0 && fp_at.wrapping_sub(bottom) > span {
            break;
        }
        // SAFETY: `ra_at` lies in `[bottom, last]` (checked), the callers'
        // frames.
        if unsafe { *(ra_at as *const usize) } != memo.pc[next] {
            break;
        }
        fp_from = fp_at;
        t += 1;
        (cfa_rbp, kept) = (cfa_rbp >> 1, kept >> 1);
    }
    if fp_from != 0 {
        // SAFETY: as above.
        at.fp = unsafe { *(fp_from as *const usize) };
    }
    at.pc = memo.pc[t & (STATES - 1)];
    at.sp = memo.sp[t & (STATES - 1)];
    t
}

const WORD: usize = std::mem::size_of::<usize>();

/// Where a walk is: a frame's return address, stack pointer and `rbp`.
struct Cursor {
    pc: usize,
    sp: usize,
    fp: usize,
    /// Where the last step loaded the caller's `rbp` from (the return
    /// address's word when it kept `rbp`).
    fp_at: usize,
    /// Whether the last step's CFA was based on `rbp`, and whether it kept
    /// `rbp`.
    cfa_rbp: bool,
    kept: bool,
}

/// Moves `at` to its frame's caller along the cached rule at `at.pc`, and
/// returns the caller's return address (0 at the stack's outermost frame),
/// or `None` where the rule cannot follow the frame.
///
/// # Safety
/// `table` is the published table (not null); every word of `[at.sp,
/// last]` lies in this thread's live stack (the callers' frames, mapped);
/// `at.sp >= MIN_SP`. The move keeps all three.
#[inline(always)]
unsafe fn step(table: *mut AtomicU64, at: &mut Cursor, last: usize) -> Option<usize> {
    // SAFETY: `table` is the published table.
    let bits = unsafe { rule_bits(table, at.pc) };
    at.cfa_rbp = bits & CFA_RBP != 0;
    let base = if at.cfa_rbp { at.fp } else { at.sp };
    let cfa = base.wrapping_add((bits & CFA_OFF_MASK) as usize);
    // The CFA rises strictly: the return address lies at or above the
    // frame's stack pointer (and no sum wrapped around), and below the
    // top. A slow rule or the end fails here (their CFA offset is 0).
    let ra_at = cfa.wrapping_sub(WORD);
    if ra_at < at.sp || ra_at > last {
        return not_a_frame(bits);
    }
    // A frame's rule, then: the caller's `rbp` is loaded from `cfa - 2048
    // ..= cfa - 8` (the return address's word when it is this frame's
    // `rbp`), with `cfa > at.sp >= MIN_SP`: no wrap-around.
    let fp_at = cfa.wrapping_add_signed(rbp_offset(bits));
    if fp_at < at.sp {
        return None;
    }
    // SAFETY: `ra_at` and `fp_at` lie in `[at.sp, last]` (checked), the
    // callers' frames, word-sized loads of plain integers.
    let (ra, fp) = unsafe { (*(ra_at as *const usize), *(fp_at as *const usize)) };
    at.kept = bits & RBP_SAME != 0;
    if !at.kept {
        at.fp = fp;
    }
    at.fp_at = fp_at;
    at.sp = cfa;
    at.pc = ra;
    Some(ra)
}

/// The walk's way out when a rule gives no frame: the end (`Some(0)`), or
/// a frame the rule cannot follow (`None`).
#[cold]
#[inline(never)]
fn not_a_frame(bits: u32) -> Option<usize> {
    (bits >> KIND_SHIFT & 3 == KIND_END).then_some(0)
}

/// As [`walk`], with the platform unwinder (`_Unwind_Backtrace`) only.
#[inline(never)]
pub(crate) fn platform(ips: &mut [usize], skip: usize) -> usize {
    if ips.is_empty() {
        return 0;
    }
    // The unwinder's "CFA" of a frame is the stack pointer in it (the
    // callee's CFA): the first frame whose stack pointer is above this
    // local is this function's caller, at where this function returns to.
    let here = 0u8;
    let mark = std::hint::black_box(std::ptr::addr_of!(here)) as usize;
    let (mut own, mut drop, mut n) = (false, skip + 1, 0);
    let _g = bookkeeping();
    // SAFETY: the unwinder only reads this thread's stack and the loaded
    // objects' unwind tables; the callback neither panics nor unwinds. The
    // platform unwinder is thread-safe on its own: the `backtrace` crate's
    // lock only serialises its symbolisation, which this does not do.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if !own {
                own = frame.sp() as usize > mark;
                if !own {
                    return true;
                }
            }
            let ip = frame.ip() as usize;
            if ip == 0 {
                return false;
            }
            if drop > 0 {
                drop -= 1;
                return true;
            }
            ips[n] = ip;
            n += 1;
            n < ips.len()
        })
    };
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 64;

    /// The fast walk and the platform unwinder from the same function.
    #[inline(never)]
    fn both_here() -> (Vec<usize>, Vec<usize>) {
        let (mut fast, mut slow) = ([0usize; N], [0usize; N]);
        let nf = walk_fast(&mut fast, 0).expect("the fast walk follows every frame");
        let ns = platform(&mut slow, 0);
        std::hint::black_box(&mut fast);
        (fast[..nf].to_vec(), slow[..ns].to_vec())
    }

    #[inline(never)]
    fn chain_a(depth: usize) -> (Vec<usize>, Vec<usize>) {
        if depth == 0 {
            return both_here();
        }
        let r = chain_b(depth - 1);
        std::hint::black_box(r)
    }

    #[inline(never)]
    fn chain_b(depth: usize) -> (Vec<usize>, Vec<usize>) {
        let r = chain_a(depth);
        std::hint::black_box(r)
    }

    fn assert_same((fast, slow): (Vec<usize>, Vec<usize>)) {
        assert!(fast.len() >= 4, "a few callers at least: {fast:x?}");
        assert_eq!(fast, slow, "the fast walk's callers are the unwinder's");
    }

    #[test]
    fn the_fast_walk_finds_the_unwinders_callers() {
        assert_same(chain_a(5));
    }

    #[test]
    fn through_std_frames_too() {
        // A closure run by `thread::scope` on a new thread: the whole stack,
        // down to the thread's start in the C library.
        let (fast, slow) = std::thread::scope(|s| s.spawn(|| chain_a(3)).join().unwrap());
        assert!(fast.len() < N, "the walk reached the thread's first frame");
        assert_same((fast, slow));
        // Inside iterator adapters.
        let got: Vec<_> = (0..2)
            .map(|i| chain_a(i + 1))
            .filter(|(f, _)| !f.is_empty())
            .collect();
        for pair in got {
            assert_same(pair);
        }
    }

    #[test]
    fn a_small_stack_is_walked_within_its_bounds() {
        let pair = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| chain_a(2))
            .unwrap()
            .join()
            .unwrap();
        assert_same(pair);
    }

    #[inline(never)]
    fn deep(depth: usize) -> (usize, [usize; 8], [usize; 8]) {
        if depth > 0 {
            return std::hint::black_box(deep(depth - 1));
        }
        let (mut fast, mut slow) = ([0usize; 8], [0usize; 8]);
        let n = walk_fast(&mut fast, 0).unwrap();
        let m = platform(&mut slow, 0);
        assert_eq!(n, m);
        (n, fast, slow)
    }

    #[test]
    fn a_deep_stack_is_cut_at_the_buffer() {
        let (n, fast, slow) = deep(40);
        assert_eq!(n, 8);
        assert_eq!(fast, slow);
        // Eight returns into `deep` itself: one return address, repeated.
        assert!(fast.iter().all(|&ip| ip == fast[0]));
    }

    #[test]
    fn skip_drops_the_innermost() {
        #[inline(never)]
        fn skipped() -> (Vec<usize>, Vec<usize>) {
            let (mut all, mut some) = ([0usize; 8], [0usize; 8]);
            let n = walk(&mut all, 0);
            let m = walk(&mut some, 2);
            (all[2..n].to_vec(), some[..m].to_vec())
        }
        let (all, some) = skipped();
        assert_eq!(
            all[..all.len().min(some.len())],
            some[..all.len().min(some.len())]
        );
        assert!(!some.is_empty());
    }

    /// What the signal handler below found: both walks' lengths and
    /// addresses (atomics: a handler takes no lock).
    static SIGNAL_WALKS: [AtomicUsize; 2 + 2 * 16] = [const { AtomicUsize::new(0) }; 2 + 2 * 16];

    extern "C" fn on_signal(_: libc::c_int) {
        let (mut a, mut b) = ([0usize; 16], [0usize; 16]);
        let n = walk(&mut a, 0);
        let m = platform(&mut b, 0);
        SIGNAL_WALKS[0].store(n, Ordering::Relaxed);
        SIGNAL_WALKS[1].store(m, Ordering::Relaxed);
        for i in 0..16 {
            SIGNAL_WALKS[2 + i].store(a[i], Ordering::Relaxed);
            SIGNAL_WALKS[18 + i].store(b[i], Ordering::Relaxed);
        }
    }

    /// Raises SIGUSR2 on this thread with `on_signal` as its handler, on an
    /// alternate stack when `alt`; returns what the handler found.
    fn walks_in_a_signal_handler(alt: bool) -> (Vec<usize>, Vec<usize>) {
        let mut alt_stack = vec![0u8; 256 * 1024];
        // SAFETY: installs a handler and (when `alt`) an alternate stack
        // that outlives the one signal raised below; both are undone
        // before `alt_stack` is freed.
        unsafe {
            let mut old_ss: libc::stack_t = std::mem::zeroed();
            if alt {
                let ss = libc::stack_t {
                    ss_sp: alt_stack.as_mut_ptr().cast(),
                    ss_flags: 0,
                    ss_size: alt_stack.len(),
                };
                assert_eq!(libc::sigaltstack(&ss, &mut old_ss), 0);
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = if alt { libc::SA_ONSTACK } else { 0 };
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, &mut old), 0);
            libc::raise(libc::SIGUSR2);
            libc::sigaction(libc::SIGUSR2, &old, std::ptr::null_mut());
            if alt {
                let off = libc::stack_t {
                    ss_sp: std::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                libc::sigaltstack(&off, std::ptr::null_mut());
            }
        }
        drop(alt_stack);
        let get = |i: usize| SIGNAL_WALKS[i].load(Ordering::Relaxed);
        let (n, m) = (get(0), get(1));
        (
            (0..n).map(|i| get(2 + i)).collect(),
            (0..m).map(|i| get(18 + i)).collect(),
        )
    }

    #[test]
    fn a_signal_frame_is_left_to_the_platform_unwinder() {
        // One test for both: the handler's results are process-wide.
        for alt in [false, true] {
            let before = fallbacks();
            let (walked, unwound) = walks_in_a_signal_handler(alt);
            assert!(
                fallbacks() > before,
                "the signal frame (alt stack: {alt}) fell back"
            );
            // The handler, the signal frame, `raise`, this file's two
            // functions and the test harness's frames beyond them.
            assert!(
                walked.len() >= 8,
                "the walk went on through the signal frame: {walked:x?}"
            );
            // The same callers, the signal trampoline's return address
            // first (in an optimised build too, where a fallback that
            // ended `walk` with a jump to the platform unwinder dropped it).
            assert_eq!(walked, unwound);
        }
    }

    /// Two callers of `both_here` alike but for their return addresses.
    #[inline(never)]
    fn caller_one() -> (Vec<usize>, Vec<usize>) {
        std::hint::black_box(both_here())
    }

    #[inline(never)]
    fn caller_two() -> (Vec<usize>, Vec<usize>) {
        let r = std::hint::black_box(both_here());
        std::hint::black_box(2);
        r
    }

    #[test]
    fn a_walk_like_the_last_but_for_one_caller_finds_its_own() {
        // The same frames at the same stack pointers, below a caller that
        // alternates: the memo of the last walk matches, and its next
        // return address is no longer in its place.
        let mut seen = std::collections::HashSet::new();
        for i in 0..6 {
            let pair = if i % 2 == 0 {
                caller_one()
            } else {
                caller_two()
            };
            // Where `both_here` returns to: into one caller or the other.
            seen.insert(pair.0[0]);
            assert_same(pair);
        }
        assert_eq!(seen.len(), 2, "two different callers");
    }

    #[test]
    fn walks_at_other_depths_below_the_same_callers_are_whole() {
        // The last walk's outer frames met at another depth each time (its
        // states moved in the memo), and deeper than the memo holds.
        for depth in [3, 7, 3, 5, 5, 1, 40, 9, 2, 40, 0] {
            let (fast, slow) = chain_a(depth);
            assert_same((fast.clone(), slow));
            assert!(fast.len() >= depth.min(N - 4), "{depth}: {}", fast.len());
        }
    }

    #[inline(never)]
    fn via_caller(depth: usize, one: bool) -> (Vec<usize>, Vec<usize>) {
        if depth > 0 {
            return std::hint::black_box(via_caller(depth - 1, one));
        }
        if one {
            caller_one()
        } else {
            caller_two()
        }
    }

    #[test]
    fn walks_that_differ_in_the_middle_meet_the_last_again_further_up() {
        // Below the same recursion, a caller that changes; above it, the
        // same recursion again at another depth, then the same harness:
        // each walk follows the last one, leaves it, and meets it again.
        for i in 0..40usize {
            let (fast, slow) = via_caller(i * 7 % 5, i % 3 == 0);
            assert_same((fast, slow));
        }
    }

    /// A frame whose CFA is based on `rbp`: an over-aligned local makes
    /// the compiler realign the stack and address its frame from `rbp`.
    #[inline(never)]
    fn realigned(depth: usize, one: bool) -> (Vec<usize>, Vec<usize>) {
        #[repr(align(128))]
        struct Aligned([u8; 256]);
        let mut local = Aligned([depth as u8; 256]);
        std::hint::black_box(&mut local);
        let r = if depth == 0 {
            if one {
                caller_one()
            } else {
                caller_two()
            }
        } else {
            realigned(depth - 1, one)
        };
        std::hint::black_box(local.0[depth % 256]);
        r
    }

    /// `realigned` below `pad` more frames: its frames start at other
    /// offsets from a 128-byte boundary, so some of them realign to the
    /// same stack pointers with another `rbp`.
    #[inline(never)]
    fn padded(pad: usize, one: bool) -> (Vec<usize>, Vec<usize>) {
        if pad == 0 {
            return realigned(1, one);
        }
        std::hint::black_box(padded(pad - 1, one))
    }

    /// Whether the thread's last walk stepped through a CFA based on `rbp`.
    fn last_walk_used_rbp() -> bool {
        let state = MEMO_STATE.with(|s| s.get());
        let memos = MEMOS.with(|m| m.get()).cast::<Memo>();
        // SAFETY: this thread's memos, read while no walk runs on it.
        let memo = unsafe { &*memos.add(usize::from(state & 1)) };
        memo.cfa_rbp & below(memo.len) != 0
    }

    #[test]
    fn walks_through_frames_addressed_from_rbp_follow_the_last_one() {
        // Frames whose CFA is `rbp`-based, at several depths, below a
        // caller that changes and above a padding that moves them: each
        // walk follows the last one through them (checking the `rbp` each
        // step used) and leaves it where they differ.
        for i in 0..30usize {
            let pair = realigned(i * 3 % 4, i % 4 == 1);
            assert!(last_walk_used_rbp(), "the walk met a CFA based on rbp");
            assert_same(pair);
        }
        for i in 0..40usize {
            let pair = padded(i * 5 % 8, i % 3 == 0);
            assert!(last_walk_used_rbp(), "the walk met a CFA based on rbp");
            assert_same(pair);
        }
    }

    #[test]
    fn a_walk_without_the_memos_finds_the_same() {
        // As an interrupted walk's signal handler does: the memos marked in
        // use, every frame by its rule.
        let was = MEMO_STATE.with(|s| s.replace(s.get() | MEMO_BUSY));
        let without = chain_a(4);
        let still = MEMO_STATE.with(|s| s.replace(was));
        assert_eq!(still, was | MEMO_BUSY, "the walk left the memos alone");
        assert_same(without);
    }

    #[test]
    fn rules_pack_and_unpack() {
        let rules = [
            Rule::Slow,
            Rule::End,
            Rule::frame(false, 8, Rbp::Same),
            Rule::frame(true, 16, Rbp::At(-16)),
            Rule::frame(false, 4096, Rbp::At(-2048)),
            Rule::frame(false, 65535, Rbp::At(-8)),
            Rule::frame(true, 200, Rbp::Same),
        ];
        for r in rules {
            assert_eq!(Rule::unpack(r.pack()), Some(r));
        }
        assert!(matches!(
            Rule::frame(true, 16, Rbp::At(-16)),
            Rule::Frame { .. }
        ));
        assert_eq!(Rule::frame(false, 1 << 16, Rbp::Same), Rule::Slow);
        assert_eq!(Rule::frame(false, 24, Rbp::At(-12)), Rule::Slow);
        assert_eq!(Rule::frame(false, 24, Rbp::At(-2056)), Rule::Slow);
        assert_eq!(Rule::frame(false, 24, Rbp::At(0)), Rule::Slow);
        assert_eq!(Rule::frame(false, 200, Rbp::At(2040)), Rule::Slow);
        assert_eq!(Rule::frame(false, 4, Rbp::Same), Rule::Slow);
        assert_eq!(Rule::unpack(0), None);
    }

    #[test]
    fn a_rule_that_is_no_frame_fails_the_walks_bounds_check() {
        // The walk's loop tells no kinds apart: a slow rule, the end and an
        // empty entry must give a return address below the stack pointer.
        for bits in [Rule::Slow.pack(), Rule::End.pack(), 0] {
            assert_eq!(bits & CFA_OFF_MASK, 0);
            assert_eq!(bits & CFA_RBP, 0);
        }
        // A frame's packed `rbp` slot: `cfa + offset`, or the return
        // address's word when `rbp` is kept.
        let same = Rule::frame(true, 16, Rbp::Same).pack();
        assert_eq!(rbp_offset(same), -8);
        assert_ne!(same & RBP_SAME, 0);
        let at = Rule::frame(false, 48, Rbp::At(-40)).pack();
        assert_eq!(
            (rbp_offset(at), at & RBP_SAME, at & CFA_OFF_MASK),
            (-40, 0, 48)
        );
        assert_eq!(not_a_frame(Rule::End.pack()), Some(0));
        assert_eq!(not_a_frame(Rule::Slow.pack()), None);
        assert_eq!(not_a_frame(0), None);
    }

    #[test]
    fn a_slot_and_a_tag_name_one_address() {
        let mut seen = std::collections::HashSet::new();
        for a in (0x5555_5555_0000usize..0x5555_5556_0000).step_by(7) {
            let (i, tag) = slot(a);
            assert!(i < TABLE_LEN);
            assert_eq!((tag as usize) << TABLE_BITS | i, a);
            assert!(seen.insert((i, tag)));
        }
    }

    #[test]
    fn a_cfa_expression_is_slow_and_an_undefined_return_the_end() {
        let base = Row {
            cfa_reg: REG_RSP,
            cfa_off: 16,
            cfa_plain: true,
            rbp: RegRule::Same,
            ra: RegRule::Offset(-8),
        };
        assert_eq!(
            rule_of_row(&base),
            Rule::Frame {
                cfa_rbp: false,
                cfa_off: 16,
                rbp: Rbp::Same
            }
        );
        assert_eq!(
            rule_of_row(&Row {
                cfa_plain: false,
                ..base
            }),
            Rule::Slow
        );
        assert_eq!(
            rule_of_row(&Row {
                ra: RegRule::Undefined,
                ..base
            }),
            Rule::End
        );
        assert_eq!(rule_of_row(&Row { cfa_reg: 3, ..base }), Rule::Slow);
        assert_eq!(
            rule_of_row(&Row {
                rbp: RegRule::Other,
                ..base
            }),
            Rule::Slow
        );
        assert_eq!(
            rule_of_row(&Row {
                rbp: RegRule::Undefined,
                ..base
            }),
            Rule::Slow
        );
    }

    #[test]
    fn a_cfi_program_runs_to_the_target_row() {
        // push rbp; mov rbp, rsp; ... ; at func+1: CFA rsp+16, rbp at
        // CFA-16; at func+4: CFA rbp+16.
        let insns = [
            0x41u8, // advance_loc 1
            0x0e, 16, // def_cfa_offset 16
            0x86, 2,    // offset rbp, 2 * -8
            0x43, // advance_loc 3
            0x0d, 6,    // def_cfa_register rbp
            0x0a, // remember_state
            0x48, // advance_loc 8
            0x0c, 7, 8,    // def_cfa rsp 8
            0xc6, // restore rbp
            0x41, // advance_loc 1
            0x0b, // restore_state
        ];
        let run = |target: usize| {
            let mut p = Program {
                row: Row {
                    cfa_reg: REG_RSP,
                    cfa_off: 8,
                    cfa_plain: true,
                    rbp: RegRule::Same,
                    ra: RegRule::Offset(-8),
                },
                init: None,
                saved: [None; STATE_DEPTH],
                depth: 0,
                loc: 1000,
                target,
                code_align: 1,
                data_align: -8,
            };
            p.init = Some(p.row);
            let range = insns.as_ptr_range();
            p.run(Bytes {
                at: range.start,
                end: range.end,
            })
            .unwrap();
            rule_of_row(&p.row)
        };
        let frame = |cfa_rbp, cfa_off, rbp| Rule::Frame {
            cfa_rbp,
            cfa_off,
            rbp,
        };
        assert_eq!(run(1000), frame(false, 8, Rbp::Same));
        assert_eq!(run(1001), frame(false, 16, Rbp::At(-16)));
        assert_eq!(run(1004), frame(true, 16, Rbp::At(-16)));
        assert_eq!(run(1011), frame(true, 16, Rbp::At(-16)));
        assert_eq!(run(1012), frame(false, 8, Rbp::Same));
        assert_eq!(run(1013), frame(true, 16, Rbp::At(-16)));
    }
}
