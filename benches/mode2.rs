//! What mode 2 (`FFI_CHECK=2`) costs per outermost call, as the C memory it
//! tracks grows and after many frees, in the same run.
//!
//! Every figure is the time of one outermost `call!` of `add` (a tiny C
//! stand-in that takes two integers) in mode 2, which scans the C memory
//! around the call (rule P2), so the figures are the scan's cost:
//!
//! Each mode-2 figure comes twice: `watch/…` with the write watch (only
//! the pages written since the last scan are read) and `full/…` with the
//! full scan it falls back to (everything is read, twice a call).
//!
//! - `call_vs_tracked/mode1` — the same call in mode 1: the baseline.
//! - `call_vs_tracked/*/nothing` — mode 2 with no C memory tracked: what
//!   the program's and libraries' statics cost.
//! - `call_vs_tracked/*/64KiB`, `/64MiB` — with one `CBox` of that many
//!   bytes of (pointer-free) C memory live; `/1GiB` too when
//!   `FFI_CHECK_BENCH_HUGE=1` (it needs a gibibyte of memory).
//! - `call_vs_tracked/*/1M_blocks` — with a million 8-byte `CBox`es live.
//! - `after_frees/*/before`, `/after_1M` — with nothing tracked, then after
//!   a million `CBox` frees (the registry's quarantine full of freed
//!   records): the work per call must not grow with freed memory.
//! - `capture/depot` against `capture/backtrace_unresolved` — one event
//!   backtrace as mode 2 takes it at every allocation, pin and free: raw
//!   return addresses stored once in the stack depot, against the
//!   `backtrace::Backtrace::new_unresolved()` it took before (both
//!   unresolved, from the same depth of this benchmark's stack).
//! - `loop_40k` — not a criterion figure: the time of 40,000 iterations of
//!   one `CBox` free plus one `call!`, printed once.
//! - `stress_16_threads` — not a criterion figure: 16 threads, each in a
//!   loop of one `CBox` allocation, one checked `call!` given its pointer
//!   and its free, in mode 2 for 20 s (`FFI_CHECK_BENCH_STRESS_SECS`),
//!   printing the iterations of all threads in each 5-s window: the rate
//!   must hold to the end.
//! - `rss_1M_frees` — not a criterion figure: the resident memory that a
//!   million freed 8-byte `CBox`es (then `Managed`s) add in mode 2, printed
//!   once, against the 256 MiB the mode-2 quarantine is documented to hold.
//!
//! The checks must be compiled in: `cargo bench --features always --bench
//! mode2`. Without them (`cargo bench`), only the raw call is measured.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion};
use ffi_check::{call, set_mode, CBox, Mode, COMPILED_IN};

/// A C function that takes no pointer.
#[inline(never)]
extern "C" fn add(a: i32, b: i32) -> i32 {
    black_box(a.wrapping_add(b))
}

/// A C function that reads the word it is given.
#[inline(never)]
extern "C" fn read_word(p: *const u64) -> u64 {
    // SAFETY: every caller lends a live `u64`.
    black_box(unsafe { p.read() })
}

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn group<'a>(c: &'a mut Criterion, name: &str) -> Group<'a> {
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/mode2/{name}"));
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(300));
    g.sample_size(10);
    g
}

fn one_call() -> i32 {
    call!(add(black_box(1), black_box(2)))
}

/// Benchmarks one outermost call in mode 2 with the write watch
/// (`watch/…`) and with the full scan (`full/…`).
fn both_scans(g: &mut Group<'_>, name: &str) {
    ffi_check::__private::set_write_watch(true);
    g.bench_function(format!("watch/{name}"), |b| b.iter(one_call));
    ffi_check::__private::set_write_watch(false);
    g.bench_function(format!("full/{name}"), |b| b.iter(one_call));
    ffi_check::__private::set_write_watch(true);
}

fn call_vs_tracked(c: &mut Criterion) {
    let mut g = group(c, "call_vs_tracked");
    set_mode(Mode::Check);
    g.bench_function("mode1", |b| b.iter(one_call));
    set_mode(Mode::Full);
    both_scans(&mut g, "nothing");
    let mut sizes = vec![("64KiB", 64usize << 10), ("64MiB", 64 << 20)];
    if std::env::var("FFI_CHECK_BENCH_HUGE").as_deref() == Ok("1") {
        sizes.push(("1GiB", 1 << 30));
    }
    for (name, bytes) in sizes {
        let words = CBox::from_elem(0u64, bytes / 8);
        black_box(&words);
        both_scans(&mut g, name);
        drop(words);
    }
    let blocks: Vec<CBox<u64>> = (0..1_000_000u64).map(CBox::new).collect();
    // The pages the blocks (and their 16-byte guards) touch: what the
    // write watch is asked about, for a cost per page.
    let mut pages: Vec<usize> = blocks
        .iter()
        .flat_map(|b| {
            let p = b.as_ptr() as usize;
            [(p - 16) >> 12, (p + 8 + 16 - 1) >> 12]
        })
        .collect();
    pages.sort_unstable();
    pages.dedup();
    println!(
        "mode2/1M_blocks: the million 8-byte blocks touch {} pages",
        pages.len()
    );
    drop(pages);
    both_scans(&mut g, "1M_blocks");
    drop(blocks);
    set_mode(Mode::Check);
    g.finish();
}

fn after_frees(c: &mut Criterion) {
    let mut g = group(c, "after_frees");
    set_mode(Mode::Full);
    both_scans(&mut g, "before");
    for i in 0..1_000_000u64 {
        drop(CBox::new(i));
    }
    both_scans(&mut g, "after_1M");
    set_mode(Mode::Check);
    g.finish();
}

fn capture(c: &mut Criterion) {
    println!(
        "mode2/capture: event stacks are walked with: {}",
        ffi_check::__private::stack_walker()
    );
    let mut g = group(c, "capture");
    g.bench_function("depot", |b| {
        b.iter(ffi_check::__private::capture_event_stack)
    });
    g.bench_function("backtrace_unresolved", |b| {
        b.iter(ffi_check::__private::capture_unresolved_backtrace)
    });
    g.finish();
}

/// Resident memory, in bytes (`VmRSS` of `/proc/self/status`).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A million freed 8-byte blocks in mode 2: what the quarantine keeps.
fn rss_1m_frees() {
    set_mode(Mode::Full);
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let before = rss();
    for i in 0..1_000_000u64 {
        drop(black_box(CBox::new(i)));
    }
    let cboxes = rss();
    for i in 0..1_000_000u64 {
        drop(black_box(ffi_check::Managed::new(i)));
    }
    let managed = rss();
    set_mode(Mode::Check);
    println!(
        "mode2/rss_1M_frees: RSS {:.0} MiB before; +{:.0} MiB after 1M freed 8-byte CBoxes; +{:.0} MiB after 1M freed 8-byte Managed more (stack depot: {:.0} KiB)",
        mib(before),
        mib(cboxes.saturating_sub(before)),
        mib(managed.saturating_sub(cboxes)),
        ffi_check::__private::stack_depot_bytes() as f64 / 1024.0
    );
}

/// The loop: one `CBox` free and one `call!` per iteration.
fn loop_40k() {
    set_mode(Mode::Full);
    let start = Instant::now();
    for i in 0..40_000u64 {
        drop(black_box(CBox::new(i)));
        black_box(one_call());
    }
    let took = start.elapsed();
    set_mode(Mode::Check);
    println!(
        "mode2/loop_40k: 40000 x (CBox free + call!) in mode 2: {:.2} s ({:.1} us an iteration)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / 40_000.0
    );
}

/// Sixteen threads allocating, calling and freeing in mode 2: the rate of
/// each 5-s window, printed.
fn stress_16_threads() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const THREADS: usize = 16;
    const WINDOW: Duration = Duration::from_secs(5);
    let secs = std::env::var("FFI_CHECK_BENCH_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20)
        .max(5);
    set_mode(Mode::Full);
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (done, count) = (done.clone(), count.clone());
            std::thread::spawn(move || {
                let mut i = t as u64;
                while !done.load(Ordering::Relaxed) {
                    let b = CBox::new(i);
                    black_box(call!(read_word(b.as_ptr())));
                    drop(b);
                    count.fetch_add(1, Ordering::Relaxed);
                    i += THREADS as u64;
                }
            })
        })
        .collect();
    let start = Instant::now();
    let mut windows = Vec::new();
    let mut last = 0;
    for w in 1..=secs / 5 {
        std::thread::sleep((start + WINDOW * w as u32).saturating_duration_since(Instant::now()));
        let now = count.load(Ordering::Relaxed);
        windows.push(now - last);
        last = now;
    }
    done.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    set_mode(Mode::Check);
    let first = windows.first().copied().unwrap_or(0).max(1);
    let worst = windows.iter().copied().min().unwrap_or(0);
    println!(
        "mode2/stress_16_threads: iterations per 5-s window (16 threads, CBox + call! + free, mode 2): {windows:?}; last/first {:.2}, worst/first {:.2}",
        windows.last().copied().unwrap_or(0) as f64 / first as f64,
        worst as f64 / first as f64
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    if !COMPILED_IN {
        let mut g = group(&mut c, "raw");
        g.bench_function("call!", |b| b.iter(one_call));
        g.finish();
        c.final_summary();
        return;
    }
    let only = |name: &str| {
        std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .all(|f| name.contains(&f))
    };
    if only("mode2/rss_1M_frees") {
        rss_1m_frees();
    }
    if only("mode2/loop_40k") {
        loop_40k();
    }
    if only("mode2/stress_16_threads") {
        stress_16_threads();
    }
    capture(&mut c);
    call_vs_tracked(&mut c);
    after_frees(&mut c);
    c.final_summary();
}
