//! Leaks of C heap blocks by reachability (feature `interpose`), the way
//! LeakSanitizer finds them (`lsan_common`): a C block that no pointer in
//! the roots, nor in a block reachable from them, points to (at its start or
//! inside it) can never be freed again: it leaked.
//!
//! The roots:
//! - the writable segments (`.data`, `.bss`, relro) of every loaded object:
//!   what glibc and libraries keep on purpose hangs off their globals;
//! - every thread's stack that allocated C memory (recorded at its first C
//!   block: the mapping around its stack pointer), and its static TLS (the
//!   block below its thread pointer, and the thread control block);
//! - the calling thread's registers (the callee-saved ones are spilled here;
//!   the others are saved by the calls that led here).
//!
//! Other threads' registers cannot be read without stopping them; a pointer
//! only a running thread's register holds is a false leak LeakSanitizer
//! avoids by stopping the world, and this scan does not. Dead frames and
//! stale words keep blocks reachable: like every conservative scan, it can
//! miss a leak, not invent one from a pointer that exists.
//!
//! Every read goes through `probe::read`, so memory unmapped meanwhile
//! cannot fault the scan. The scan runs under the bookkeeping guard: what it
//! allocates is the checker's own.

// Without the checks compiled in the entry points that use this are not
// either (see `crate::interpose`).
#![cfg_attr(not(any(debug_assertions, feature = "always")), allow(dead_code))]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::c_block::{for_each_c_block, CBlock};
use crate::bookkeeping::bookkeeping;

// ---- threads -------------------------------------------------------------------

const THREADS: usize = 1024;

/// Each recorded thread's stack pointer and thread pointer at its first C
/// block (0 for a free slot). Past 1024 threads the oldest slots are reused.
static THREAD_SP: [AtomicUsize; THREADS] = [const { AtomicUsize::new(0) }; THREADS];
static THREAD_TP: [AtomicUsize; THREADS] = [const { AtomicUsize::new(0) }; THREADS];
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

/// The thread pointer (on x86_64, `%fs:0` holds its own address).
fn thread_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let tp: usize;
        // SAFETY: reads the TCB's self pointer, always mapped for a thread.
        unsafe { std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly)) };
        tp
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// A recorded thread's slot (plus one; 0 for none), given back when the
/// thread ends: the stack of a thread that is gone is dead memory (glibc
/// keeps it mapped for the next thread), and its stale words would make
/// lost blocks look reachable.
struct Recorded(Cell<usize>);

impl Drop for Recorded {
    fn drop(&mut self) {
        let slot = self.0.get();
        if slot == 0 {
            return;
        }
        // Only if the slot is still this thread's (past 1024 threads a
        // slot is reused).
        let slot = slot - 1;
        let tp = thread_pointer();
        if THREAD_TP[slot]
            .compare_exchange(tp, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            THREAD_SP[slot].store(0, Ordering::Relaxed);
        }
    }
}

thread_local! {
    static RECORDED: Recorded = const { Recorded(Cell::new(0)) };
}

/// Records the calling thread's stack and TLS as roots of the leak scan,
/// until the thread ends. Lock-free: called from inside `malloc`, once per
/// thread (the first touch of `RECORDED` registers its destructor with the
/// C library, which allocates: that nested `malloc` finds the thread
/// already has its serial and does not come back here).
#[inline(never)]
pub(super) fn record_thread() {
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let slot = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % THREADS;
    THREAD_SP[slot].store(sp, Ordering::Relaxed);
    THREAD_TP[slot].store(thread_pointer(), Ordering::Relaxed);
    let _ = RECORDED.try_with(|r| r.0.set(slot + 1));
}

// ---- the scan ------------------------------------------------------------------

/// A node of the reachability graph: a block whose contents are scanned
/// once it is reached.
struct Node {
    start: usize,
    end: usize,
    /// The address of the glibc chunk that follows the block's own, which
    /// can lie inside the block's last bytes: glibc's arena keeps it (its
    /// `top`, a free chunk's links), and that word is not a pointer to the
    /// block.
    next_chunk: usize,
    block: CBlock,
    scan: bool,
}

struct Graph {
    nodes: Vec<Node>,
    marked: Vec<bool>,
    work: Vec<usize>,
    lo: usize,
    hi: usize,
}

impl Graph {
    /// Marks the node that `w` points into, if any.
    #[inline]
    fn visit_word(&mut self, w: usize) {
        if w < self.lo || w >= self.hi {
            return;
        }
        let i = self.nodes.partition_point(|n| n.start <= w);
        if i == 0 {
            return;
        }
        let n = &self.nodes[i - 1];
        if w < n.end && w != n.next_chunk && !self.marked[i - 1] {
            self.marked[i - 1] = true;
            if n.scan {
                self.work.push(i - 1);
            }
        }
    }

    /// Reads `[start, start + len)` through safe probes and visits every
    /// aligned word in it.
    fn visit_range(&mut self, start: usize, len: usize) {
        let mut buf = vec![0u8; 1 << 16];
        let mut at = (start + 7) & !7;
        let end = start.saturating_add(len);
        while at < end {
            let n = (end - at).min(buf.len()) & !7;
            if n == 0 {
                break;
            }
            if crate::probe::read(at, &mut buf[..n]) {
                for c in buf[..n].chunks_exact(8) {
                    self.visit_word(usize::from_ne_bytes(c.try_into().expect("8 bytes")));
                }
                at += n;
            } else {
                // Part of it is not readable: go on page by page.
                let next = (at | 0xfff) + 1;
                let m = (next.min(end) - at) & !7;
                if m > 0 && crate::probe::read(at, &mut buf[..m]) {
                    for c in buf[..m].chunks_exact(8) {
                        self.visit_word(usize::from_ne_bytes(c.try_into().expect("8 bytes")));
                    }
                }
                at = next;
            }
        }
    }

    fn drain(&mut self) {
        while let Some(i) = self.work.pop() {
            let (s, e) = (self.nodes[i].start, self.nodes[i].end);
            self.visit_range(s, e - s);
        }
    }
}

/// How far below the thread pointer the static TLS reaches (glibc's own
/// figure when it tells, else a generous guess).
fn static_tls_size() -> usize {
    type Info = unsafe extern "C" fn(*mut usize, *mut usize);
    // SAFETY: dlsym only reads the loader's tables.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_get_tls_static_info".as_ptr()) };
    if f.is_null() {
        return 64 << 10;
    }
    // SAFETY: glibc's `_dl_get_tls_static_info(size_t *, size_t *)`.
    let f: Info = unsafe { std::mem::transmute::<*mut libc::c_void, Info>(f) };
    let (mut size, mut align) = (0usize, 0usize);
    // SAFETY: two writable words.
    unsafe { f(&mut size, &mut align) };
    size.clamp(4096, 1 << 20)
}

/// The C blocks (C domain, live, not known to the registry, allocated
/// during a checked call) that nothing reachable points to. A block
/// allocated outside any call is never a candidate: Rust reaches `malloc`
/// too (the standard library allocates with `System` directly, and without
/// the tracking allocator all of Rust's heap is `malloc`'s), and such a
/// block has no call to be attributed to. Without the tracking allocator
/// (its Rust blocks are told apart from C's) there is no candidate at all. `owned` picks the blocks a leak question is about
/// (a scope's); all blocks take part in the graph regardless. This
/// thread's stack is scanned from `stack_from` up (the frame of the public
/// function that asked: the checker's frames below it hold stale words of
/// the calls made before at the same depth).
#[inline(never)]
pub(crate) fn unreachable_c_blocks(
    owned: &dyn Fn(&CBlock) -> bool,
    stack_from: usize,
) -> Vec<CBlock> {
    // The callee-saved registers of this thread, spilled into this frame;
    // the scan of this thread's stack starts here, above the frames of the
    // scan itself (whose locals name blocks by address).
    #[allow(unused_mut)]
    let mut regs = [0usize; 6];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: stores six registers into the local array.
    unsafe {
        std::arch::asm!(
            "mov [{r}], rbx", "mov [{r} + 8], rbp", "mov [{r} + 16], r12",
            "mov [{r} + 24], r13", "mov [{r} + 32], r14", "mov [{r} + 40], r15",
            r = in(reg) regs.as_mut_ptr(), options(nostack)
        )
    };
    let regs = std::hint::black_box(regs);
    let sp = std::ptr::addr_of!(regs) as usize;
    let leaked = scan(regs, stack_from.max(sp), owned);
    super::c_block::wipe_dead_stack();
    leaked
}

#[inline(never)]
fn scan(regs: [usize; 6], my_sp: usize, owned: &dyn Fn(&CBlock) -> bool) -> Vec<CBlock> {
    // Without the tracking allocator Rust's heap is `malloc`'s too: a Rust
    // block nothing points to any more (one the registry's quarantine
    // holds) would pass for a C leak.
    if !super::c_block::rust_heap_apart() {
        return Vec::new();
    }
    let _g = bookkeeping();
    let mut nodes = Vec::new();
    for_each_c_block(|b| {
        if b.freed() {
            return;
        }
        // The checker's own blocks are neither leaks nor roots: its
        // records name C blocks by address on purpose.
        if b.state & super::c_block::c_state::INTERNAL != 0 {
            return;
        }
        let scan = if b.is_c() {
            true
        } else {
            // Rust's heap: scanned unless the tracking allocator says the
            // block inside is the checker's own, or freed.
            let inner = b.start + b.align.max(super::HDR);
            match super::header(inner) {
                Some(meta) => {
                    super::meta_state(meta) & (super::state::INTERNAL | super::state::FREED) == 0
                }
                None => true,
            }
        };
        // glibc's chunk of the block: 16 bytes of its header before the
        // base, the size rounded as `request2size` rounds it.
        let next_chunk = if b.align <= 16 {
            let base = b.start - super::c_block::C_HDR;
            let chunk = (b.size + super::c_block::C_HDR + 8 + 15) & !15;
            base - 16 + chunk.max(32)
        } else {
            0
        };
        nodes.push(Node {
            start: b.start,
            end: b.start + b.size.max(1),
            next_chunk,
            block: b,
            scan,
        });
    });
    nodes.sort_unstable_by_key(|n| n.start);
    let lo = nodes.first().map_or(0, |n| n.start);
    let hi = nodes.iter().map(|n| n.end).max().unwrap_or(0);
    let mut g = Graph {
        marked: vec![false; nodes.len()],
        nodes,
        work: Vec::new(),
        lo,
        hi,
    };

    for w in regs {
        g.visit_word(w);
    }
    for s in crate::segments::writable() {
        g.visit_range(s.start, s.len);
    }
    g.drain();

    let maps = crate::probe::mappings();
    let tls = static_tls_size();
    let my_tp = thread_pointer();
    let mut stacks: Vec<(usize, usize)> = Vec::new();
    fn scan_stack(
        g: &mut Graph,
        maps: &[(usize, usize)],
        stacks: &mut Vec<(usize, usize)>,
        sp: usize,
        from_sp: bool,
    ) {
        if let Some(&(mlo, mhi)) = maps.iter().find(|(l, h)| *l <= sp && sp < *h) {
            if stacks.contains(&(mlo, mhi)) {
                return;
            }
            stacks.push((mlo, mhi));
            // From a stack pointer: the first whole word at or above it
            // (a word it cuts into belongs partly to a dead frame).
            let start = if from_sp { (sp + 7) & !7 } else { mlo };
            g.visit_range(start, mhi - start);
        }
    }
    scan_stack(&mut g, &maps, &mut stacks, my_sp, true);
    // A thread that pthread created keeps its TLS at the top of its stack
    // mapping (scanned with the stack, and for this thread only above its
    // stack pointer: the dead frames below it hold stale words); the main
    // thread's lies elsewhere.
    let in_stacks =
        |stacks: &[(usize, usize)], tp: usize| stacks.iter().any(|&(l, h)| l <= tp && tp < h);
    if my_tp != 0 && !in_stacks(&stacks, my_tp) {
        g.visit_range(my_tp.saturating_sub(tls), tls + 0x800);
    }
    g.drain();
    for i in 0..THREADS {
        let sp = THREAD_SP[i].load(Ordering::Relaxed);
        if sp == 0 {
            continue;
        }
        scan_stack(&mut g, &maps, &mut stacks, sp, false);
        let tp = THREAD_TP[i].load(Ordering::Relaxed);
        if tp != 0 && tp != my_tp && !in_stacks(&stacks, tp) {
            g.visit_range(tp.saturating_sub(tls), tls + 0x800);
        }
        g.drain();
    }

    g.nodes
        .iter()
        .zip(&g.marked)
        .filter(|(n, marked)| {
            !**marked && n.block.is_c() && !n.block.registered() && n.block.alloc_site.is_some()
        })
        .map(|(n, _)| n.block)
        .filter(|b| owned(b))
        .collect()
}
