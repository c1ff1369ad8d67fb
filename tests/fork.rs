//! `fork()` while other threads use the checker: the child must find every
//! lock of the checker free (and every registry shard's sequence number
//! even), and go on checking on its own: allocations, frees, pins and
//! checked calls, in mode 1 and in mode 2.
//!
//! Eight threads hammer the registry, the tracking allocator's quarantine,
//! the pinner table and (in mode 2) the scans, while the test's thread
//! forks. Each child runs a thousand checked operations, checks that the
//! checker still finds what it must, and leaves with `_exit`; the parent
//! waits for it with a deadline, so a child that hangs fails the test rather
//! than hanging it.
//!
//! Each mode runs in a process of its own (the mode is process-wide, and
//! each starts with an empty registry), with a watchdog that aborts it if
//! the parent itself hangs in `fork`.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{child_passes, is_child};
use ffi_check::{
    c_free, c_malloc, call, capture, CBox, LeakCheck, Managed, Mode, Pinner, TrackingAllocator,
    ViolationKind,
};

#[global_allocator]
static ALLOC: TrackingAllocator = TrackingAllocator::new();

/// Threads that use the checker while the test's thread forks.
const THREADS: usize = 8;
/// Forks per mode.
const FORKS: usize = 50;
/// Checked operations each child runs.
const CHILD_OPERATIONS: usize = 1000;
/// How long a child may take before it counts as hung (it needs well under
/// a second, even in mode 2 on a loaded machine).
const CHILD_DEADLINE: Duration = Duration::from_secs(5);
/// How long one mode's 50 forks may take before the process is aborted (the
/// parent hung in `fork`, or a thread of it in the checker).
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The child's exit codes, for the parent's message.
const EXIT_PANICKED: c_int = 2;
const EXIT_LEAKED: c_int = 3;
const EXIT_MISSED_DOUBLE_FREE: c_int = 4;
const EXIT_MISSED_RETAINED: c_int = 5;

// ---- the C side (written in Rust, called through `call!`) ---------------------

extern "C" fn sum(p: *const u32, n: usize) -> u32 {
    // SAFETY: the caller lends `n` readable u32s.
    unsafe { std::slice::from_raw_parts(p, n) }
        .iter()
        .fold(0u32, |a, b| a.wrapping_add(*b))
}

extern "C" fn first(items: *const *const u32) -> u32 {
    // SAFETY: the caller lends a table whose first pointer is valid.
    unsafe { **items }
}

extern "C" fn keep_in(table: *mut *const u64, p: *const u64) {
    // SAFETY: the caller lends a table with room for one pointer.
    unsafe { *table = p };
}

// ---- what the threads and the children do -------------------------------------

/// The checked operations the threads and the children make.
#[derive(Clone, Copy)]
enum Op {
    /// A block allocated and freed through the tracking allocator.
    HeapBlock,
    /// C memory (`CBox`) allocated, written and freed.
    CMemory,
    /// Managed memory made and dropped.
    Managed,
    /// Managed memory pinned and unpinned.
    Pin,
    /// A checked call lending a table whose pointer is pinned (P1 scans it).
    CallNested,
    /// A checked call lending a slice.
    Call,
}

/// What the threads cycle through: every operation as often as any other.
const EVERY_OP: [Op; 6] = [
    Op::HeapBlock,
    Op::CMemory,
    Op::Managed,
    Op::Pin,
    Op::CallNested,
    Op::Call,
];

/// The child's `i`-th operation: every kind in each 80, the costly ones the
/// rarest (in mode 2, dropping or unpinning managed memory scans all
/// tracked C memory, and a checked call scans it twice).
fn child_op(i: usize) -> Op {
    match i % 80 {
        39 => Op::CallNested,
        79 => Op::Call,
        19 | 59 => Op::Pin,
        9 | 29 | 49 | 69 => Op::Managed,
        k if k % 2 == 1 => Op::CMemory,
        _ => Op::HeapBlock,
    }
}

fn operation(op: Op, i: usize) -> u32 {
    match op {
        Op::HeapBlock => {
            let v: Vec<u64> = (0..(i % 17) as u64 + 1).collect();
            v.iter().sum::<u64>() as u32
        }
        Op::CMemory => {
            let mut c = CBox::new(0u64);
            c.set(i as u64);
            *c as u32
        }
        Op::Managed => {
            let m = Managed::new([i as u32; 4]);
            m[3]
        }
        Op::Pin => {
            let m = Managed::from_vec(vec![i as u32; 8]);
            let mut pinner = Pinner::new();
            pinner.pin(&m);
            pinner.unpin();
            m[0]
        }
        Op::CallNested => {
            let value = Managed::new(i as u32);
            let table = Managed::new([value.as_ptr()]);
            let mut pinner = Pinner::new();
            pinner.pin(&value);
            call!(first(&table))
        }
        Op::Call => {
            let v = Managed::from_vec(vec![1u32; 16]);
            let n = v.len();
            call!(sum(&v, n))
        }
    }
}

/// What a child checks after its operations: the checker still catches a
/// double free, and (mode 2) the scan after a call still runs, though the
/// threads that were inside checked calls at the fork are gone.
fn child_checks(mode: Mode) -> Result<(), c_int> {
    let p = c_malloc(16);
    // SAFETY: p came from c_malloc; the second free is the mistake caught.
    let ((), v) = capture(|| unsafe {
        c_free(p);
        c_free(p);
    });
    if v.len() != 1 || v[0].kind() != ViolationKind::DoubleFree {
        return Err(EXIT_MISSED_DOUBLE_FREE);
    }
    if mode == Mode::Full {
        let table = c_malloc(8).cast::<*const u64>();
        let lent = Managed::new(1u64);
        let ((), v) = capture(|| call!(keep_in(table, &lent)));
        // SAFETY: the table is C memory owned here: emptied, then freed once.
        unsafe {
            *table = std::ptr::null();
            c_free(table.cast());
        }
        if v.len() != 1 || v[0].kind() != ViolationKind::Retained {
            return Err(EXIT_MISSED_RETAINED);
        }
    }
    Ok(())
}

/// The child's life after the fork: never returns.
fn child(mode: Mode) -> ! {
    let code = catch_unwind(AssertUnwindSafe(|| {
        let scope = LeakCheck::start();
        let mut total = 0u32;
        for i in 0..CHILD_OPERATIONS {
            total = total.wrapping_add(operation(child_op(i), i));
        }
        std::hint::black_box(total);
        if !scope.finish().is_empty() {
            return EXIT_LEAKED;
        }
        match child_checks(mode) {
            Ok(()) => 0,
            Err(code) => code,
        }
    }))
    .unwrap_or(EXIT_PANICKED);
    // SAFETY: _exit ends the child at once, running nothing of the parent's
    // (no atexit handler, no destructor of another thread's state).
    unsafe { libc::_exit(code) }
}

/// The threads that use the checker, paused between forks so that each
/// child gets the processor it needs.
struct Hammer {
    stop: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Hammer {
    fn start() -> Hammer {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let threads = (0..THREADS)
            .map(|t| {
                let (stop, running, rounds) = (stop.clone(), running.clone(), rounds.clone());
                thread::Builder::new()
                    .name(format!("hammer-{t}"))
                    .spawn(move || {
                        let mut i = t;
                        while !stop.load(Ordering::Relaxed) {
                            if !running.load(Ordering::Relaxed) {
                                thread::sleep(Duration::from_micros(200));
                                continue;
                            }
                            std::hint::black_box(operation(EVERY_OP[i % EVERY_OP.len()], i));
                            i = i.wrapping_add(1);
                            rounds.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .expect("spawn a hammer thread")
            })
            .collect();
        Hammer {
            stop,
            running,
            rounds,
            threads,
        }
    }

    fn run(&self, on: bool) {
        self.running.store(on, Ordering::Relaxed);
    }

    /// Lets the threads get into their work (and their locks): about one
    /// operation each, then a little more, a different while each time.
    fn warm_up(&self, fork: usize) {
        let before = self.rounds.load(Ordering::Relaxed);
        let started = Instant::now();
        while self.rounds.load(Ordering::Relaxed) < before + THREADS
            && started.elapsed() < Duration::from_millis(100)
        {
            thread::sleep(Duration::from_micros(100));
        }
        thread::sleep(Duration::from_micros(37 * (fork as u64 % 29)));
    }

    /// Stops the threads; a panic (a violation on correct code) fails here.
    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("a hammer thread panicked");
        }
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        // A failed test still stops its threads.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Waits for the child `pid` until the deadline; a hung child is killed.
fn wait_for(pid: libc::pid_t, fork: usize, mode: Mode) {
    let deadline = Instant::now() + CHILD_DEADLINE;
    let mut status: c_int = 0;
    loop {
        // SAFETY: waits (without blocking) for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!(
                "{mode:?}: the child of fork {fork} still ran after {CHILD_DEADLINE:?}: it hung on a lock held at the fork"
            );
        }
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        libc::WIFEXITED(status),
        "{mode:?}: the child of fork {fork} died: status {status:#x}"
    );
    let code = libc::WEXITSTATUS(status);
    let why = match code {
        0 => return,
        EXIT_PANICKED => "panicked",
        EXIT_LEAKED => "leaked what it allocated",
        EXIT_MISSED_DOUBLE_FREE => "missed a double free",
        EXIT_MISSED_RETAINED => "missed a pointer C kept (the mode-2 scan did not run)",
        _ => "failed",
    };
    panic!("{mode:?}: the child of fork {fork} {why} (exit {code})");
}

/// Aborts the process when one mode's run has not ended by the deadline.
fn watchdog(mode: Mode) -> mpsc::Sender<()> {
    let (done, wait) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("fork-watchdog".into())
        .spawn(move || {
            // Dropping the sender (the run ended, even by a panic) ends the
            // wait.
            if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(RUN_DEADLINE) {
                eprintln!("{mode:?}: forks still running after {RUN_DEADLINE:?}; the parent hung? aborting");
                std::process::abort();
            }
        })
        .expect("spawn the watchdog");
    done
}

fn forks_while_threads_hammer(mode: Mode) {
    let _watchdog = watchdog(mode);
    ffi_check::set_mode(mode);
    let hammer = Hammer::start();
    for fork in 0..FORKS {
        hammer.run(true);
        hammer.warm_up(fork);
        // SAFETY: the child runs only the checker's operations and `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            child(mode);
        }
        hammer.run(false);
        assert!(pid > 0, "fork failed");
        wait_for(pid, fork, mode);
    }
    hammer.finish();
}

#[test]
fn fork_while_threads_use_the_checker_mode_1() {
    child_passes("forking_process_mode_1", &[("FFI_CHECK", "1")]);
}

#[test]
fn forking_process_mode_1() {
    if is_child("forking_process_mode_1") {
        forks_while_threads_hammer(Mode::Check);
    }
}

#[test]
fn fork_while_threads_use_the_checker_mode_2() {
    child_passes("forking_process_mode_2", &[("FFI_CHECK", "2")]);
}

#[test]
fn forking_process_mode_2() {
    if is_child("forking_process_mode_2") {
        forks_while_threads_hammer(Mode::Full);
    }
}
