//! Many threads at once: checked calls, C allocations, pins and frees made
//! concurrently from several named threads, with C memory freed on another
//! thread than the one that allocated it.
//!
//! What must hold under that load: no violation on correct code, no region
//! lost (every thread's `LeakCheck` scope ends empty), no deadlock (a
//! watchdog aborts the binary if a test hangs), and every report names the
//! thread it happened on and reaches only that thread's `capture`.
//!
//! The tests of this file run in parallel with each other; each one keeps its
//! allocations bounded so the process-wide counters stay meaningful.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::os::raw::{c_int, c_uchar, c_ulong, c_void};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::fixtures;
use common::{assert_report_line, only};
use ffi_check::{
    assert_clean, c_free, c_malloc, call, callback, capture, release, retain, stats, CBox,
    LeakCheck, Managed, Pinned, Pinner, ViolationKind,
};

/// Worker threads of the stress test.
const THREADS: usize = 6;
/// Iterations of each worker's loop: enough to interleave every operation
/// many times, few enough for a debug build on two cores.
const ITERATIONS: usize = 1500;

/// The rounds each worker runs: fewer in mode 2, where every call scans all
/// tracked C memory twice and every `assert_clean` every record, so that a
/// `FFI_CHECK=2` run of the suite stays within the deadline.
fn iterations() -> usize {
    if ffi_check::mode() == ffi_check::Mode::Full {
        ITERATIONS / 10
    } else {
        ITERATIONS
    }
}
/// C blocks each worker hands to its neighbour per iteration.
const HANDED_OVER: usize = 2;
/// How long a test of this file may run before the binary is aborted.
const DEADLINE: Duration = Duration::from_secs(60);

const DOUBLE_FREE_LINE: &str = "ffi-check: double free of C memory (`free`)";

/// Aborts the process with a message when the test holding it has not
/// finished by the deadline: a deadlock must fail the run, not hang it.
struct Watchdog {
    _done: Sender<()>,
}

fn watchdog(test: &'static str) -> Watchdog {
    let (done, wait) = mpsc::channel::<()>();
    thread::Builder::new()
        .name(format!("{test}-watchdog"))
        .spawn(move || {
            // Dropping the sender (the test ended, even by a panic)
            // disconnects the channel and ends the wait.
            if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(DEADLINE) {
                eprintln!("{test}: still running after {DEADLINE:?}; a deadlock? aborting");
                std::process::abort();
            }
        })
        .expect("spawn the watchdog");
    Watchdog { _done: done }
}

/// Spawns `n` threads named `{prefix}-{i}` running `body(i)`.
fn spawn_named<R: Send + 'static>(
    prefix: &str,
    n: usize,
    body: impl Fn(usize) -> R + Send + Sync + 'static,
) -> Vec<JoinHandle<R>> {
    let body = Arc::new(body);
    (0..n)
        .map(|i| {
            let body = Arc::clone(&body);
            thread::Builder::new()
                .name(format!("{prefix}-{i}"))
                .spawn(move || body(i))
                .expect("spawn a worker")
        })
        .collect()
}

/// Joins every thread, re-raising the first panic.
fn join_all<R>(handles: Vec<JoinHandle<R>>) -> Vec<R> {
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect()
}

/// `fx_visit_fn` that adds each item to the `i64` the user data points to.
unsafe extern "C" fn add_item(user: *mut c_void, item: c_int) -> c_int {
    callback!({
        // SAFETY: the caller passes a live `&mut i64` as user data.
        unsafe { *user.cast::<i64>() += i64::from(item) };
        0
    })
}

/// One round of the correct patterns a thread makes on its own memory:
/// lending buffers and a table of pinned pointers, a callback, C objects
/// made and destroyed, C memory owned by `CBox`, a pin C keeps for a while.
fn local_round(seed: usize) {
    let byte = (seed % 251) as c_uchar;

    // A buffer C fills, then reads back.
    let mut buf = Managed::from_vec(vec![0u8; 64 + seed % 64]);
    let len = buf.len();
    // SAFETY: the buffer is `len` writable bytes, lent for the call.
    let filled = unsafe { call!(fixtures::fx_fill(&mut buf, len, byte)) };
    assert_eq!(filled, len);
    // SAFETY: as above, read only.
    let sum = unsafe { call!(fixtures::fx_checksum(&buf, len)) };
    assert_eq!(sum, c_ulong::from(byte) * len as c_ulong);

    // A table of pointers to managed ints, pinned for the call.
    let values: Vec<Managed<c_int>> = (0..4).map(|k| Managed::new((seed + k) as c_int)).collect();
    let table = Managed::from_vec(values.iter().map(|v| v.as_ptr()).collect::<Vec<_>>());
    let mut pinner = Pinner::new();
    for v in &values {
        pinner.pin(v);
    }
    // SAFETY: the table holds four pointers to live, pinned ints.
    let total = unsafe { call!(fixtures::fx_sum_nested(&table, 4)) };
    assert_eq!(total, (4 * seed + 6) as std::os::raw::c_long);
    pinner.unpin();

    // A callback C calls with this thread's user data.
    let items = Managed::from_vec(vec![1 as c_int, 2, 3, seed as c_int]);
    let mut acc: i64 = 0;
    let user: *mut i64 = &mut acc;
    let n = items.len();
    // SAFETY: `add_item` reads the `i64` behind `user`, which outlives the
    // call; the items are lent for the call.
    let calls = unsafe {
        call!(fixtures::fx_for_each(
            &items,
            n,
            Some(add_item as unsafe extern "C" fn(*mut c_void, c_int) -> c_int),
            user.cast::<c_void>()
        ))
    };
    assert_eq!((calls, acc), (4, 6 + seed as i64));

    // A C object made and destroyed by C.
    // SAFETY: create/use/destroy, each once.
    unsafe {
        let counter = call!(fixtures::fx_counter_new(seed as c_int));
        assert_eq!(call!(fixtures::fx_counter_incr(counter)), seed as c_int + 1);
        call!(fixtures::fx_counter_free(counter));
    }

    // C memory Rust owns, freed by its drop.
    let mut boxed = CBox::new(seed as u64);
    *boxed += 1;
    let ints = CBox::from_slice(&[seed as u32; 8]);
    let name = CBox::from_str("worker");
    // SAFETY: `name` is a live C string, lent for the call.
    assert_eq!(unsafe { call!(fixtures::fx_strlen(&name)) }, 6);
    assert_eq!((*boxed, ints.len()), (seed as u64 + 1, 8));

    // Memory C keeps for a while: pinned first, released before the drop.
    let kept = Pinned::new(seed as u64);
    retain(kept.as_ptr());
    release(kept.as_ptr());
}

/// The body of one stress worker: local rounds, plus C blocks allocated here
/// and freed by the next worker, and blocks from the previous worker freed
/// here. Returns the worker's `LeakCheck` scope, to be finished once every
/// worker has freed what it was sent, and how many blocks it freed.
fn stress_worker(
    index: usize,
    to_next: Sender<usize>,
    from_prev: Receiver<usize>,
) -> (LeakCheck, usize) {
    let scope = LeakCheck::start();
    let mut freed_here = 0;
    let ((), violations) = capture(|| {
        for i in 0..iterations() {
            assert_clean(|| local_round(index * iterations() + i));

            // Allocated here, freed by the next worker.
            for k in 0..HANDED_OVER {
                let p = c_malloc(16 + 8 * k + i % 32);
                assert!(!p.is_null());
                to_next.send(p as usize).expect("the next worker is alive");
            }
            // Allocated by the previous worker, freed here.
            while let Ok(addr) = from_prev.try_recv() {
                // SAFETY: the previous worker sent a block from c_malloc
                // and never touches it again; it is freed once, here.
                unsafe { c_free(addr as *mut c_void) };
                freed_here += 1;
            }
        }
        drop(to_next);
        // What the previous worker sent after our last iteration.
        for addr in from_prev.iter() {
            // SAFETY: as above.
            unsafe { c_free(addr as *mut c_void) };
            freed_here += 1;
        }
    });
    assert!(
        violations.is_empty(),
        "{:?} reported {} violation(s):\n{}",
        thread::current().name(),
        violations.len(),
        violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    (scope, freed_here)
}

#[test]
fn many_threads_calling_allocating_pinning_and_freeing_across_threads_stay_clean() {
    let _watchdog = watchdog("stress");
    let live_c_before = stats().live_c_regions;

    // A ring of channels: worker i sends to worker i + 1.
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel()).unzip();
    let mut receivers: Vec<Option<Receiver<usize>>> = receivers.into_iter().map(Some).collect();
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let to_next = senders[(i + 1) % THREADS].clone();
            let from_prev = receivers[i].take().expect("one receiver per worker");
            thread::Builder::new()
                .name(format!("stress-{i}"))
                .spawn(move || stress_worker(i, to_next, from_prev))
                .expect("spawn a worker")
        })
        .collect();
    // Only the workers hold senders now, so each channel closes when the
    // worker before it is done.
    drop(senders);

    // A worker's blocks are freed by its neighbour, so its scope is finished
    // once every worker is done. It still sees only that worker's regions.
    for (i, (scope, freed)) in join_all(handles).into_iter().enumerate() {
        let report = scope.finish();
        assert!(report.is_empty(), "stress-{i} lost regions:\n{report}");
        assert_eq!(freed, iterations() * HANDED_OVER, "stress-{i}");
    }

    // The process-wide count is back where it was, give or take what the
    // other tests of this binary hold meanwhile: at most three C blocks per
    // thread (a `local_round`), on at most seven threads.
    let live_c_after = stats().live_c_regions;
    assert!(
        live_c_after <= live_c_before + 32,
        "live C regions went from {live_c_before} to {live_c_after}"
    );
}

#[test]
fn each_threads_mistake_names_that_thread() {
    let _watchdog = watchdog("mistakes");
    let start = Arc::new(Barrier::new(THREADS));
    let handles = spawn_named("mistaken", THREADS, move |i| {
        let scope = LeakCheck::start();
        start.wait();
        let ((), v) = capture(|| {
            // Correct work around the mistake, so reports interleave with
            // clean calls on the other threads.
            local_round(i);
            let p = c_malloc(8 + i);
            // SAFETY: p came from c_malloc; the second free is the mistake
            // under test, and the check skips it.
            unsafe {
                c_free(p);
                c_free(p);
            }
            local_round(i + 1);
        });
        let v = only(&v);
        assert_report_line(v, ViolationKind::DoubleFree, "C1", DOUBLE_FREE_LINE);
        let name = format!("mistaken-{i}");
        assert_eq!(v.thread(), name);
        assert!(
            v.to_string().contains(&format!(" on thread `{name}`")),
            "{v}"
        );
        assert_eq!(v.regions()[0].size(), 8 + i, "{v}");
        let report = scope.finish();
        assert!(report.is_empty(), "{name} lost regions:\n{report}");
    });
    join_all(handles);
}

#[test]
fn a_violation_on_one_thread_is_not_captured_by_another() {
    let _watchdog = watchdog("isolation");
    // Both captures are open when the mistake happens, and both stay open
    // until it has been reported.
    let opened = Arc::new(Barrier::new(2));
    let reported = Arc::new(Barrier::new(2));

    let (o, r) = (Arc::clone(&opened), Arc::clone(&reported));
    let faulty = thread::Builder::new()
        .name("isolation-faulty".to_owned())
        .spawn(move || {
            capture(|| {
                o.wait();
                let p = c_malloc(24);
                // SAFETY: p came from c_malloc; the second free is the
                // mistake under test, and the check skips it.
                unsafe {
                    c_free(p);
                    c_free(p);
                }
                r.wait();
            })
            .1
        })
        .expect("spawn the faulty thread");

    let (o, r) = (Arc::clone(&opened), Arc::clone(&reported));
    let bystander = thread::Builder::new()
        .name("isolation-bystander".to_owned())
        .spawn(move || {
            capture(|| {
                o.wait();
                local_round(7);
                r.wait();
            })
            .1
        })
        .expect("spawn the bystander thread");

    let faulty = faulty.join().expect("the faulty thread ends");
    let bystander = bystander.join().expect("the bystander thread ends");
    let v = only(&faulty);
    assert_report_line(v, ViolationKind::DoubleFree, "C1", DOUBLE_FREE_LINE);
    assert_eq!(v.thread(), "isolation-faulty");
    assert!(bystander.is_empty(), "{bystander:#?}");
}
