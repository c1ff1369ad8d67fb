//! The interposed C allocator (feature `interpose`): a C `malloc`+`free`
//! pair of 32 bytes through it in mode 1 (outside any call, and inside a
//! `call!` where C code allocates), beside glibc's own pair
//! (`__libc_malloc`/`__libc_free`) and the tracking allocator's
//! (`TrackingAllocator::alloc`/`dealloc`), all in one run.
//!
//! Then SQLite inserting 100,000 rows (one prepared statement, one
//! transaction) with its memory from the interposed `malloc`, against the
//! same on glibc's allocator directly (`SQLITE_CONFIG_MALLOC` with
//! `__libc_malloc` methods), in the same run, with plain calls and with
//! every call through `call!`.
//!
//! Run: `cargo bench --features always,interpose --bench interpose` (the
//! checks must be compiled into the optimised build).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::{call, set_mode, Mode, TrackingAllocator};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
}

/// Not the global allocator: its pair is measured by calling it.
static TRACKING: TrackingAllocator = TrackingAllocator::new();

const SIZE: usize = 32;

extern "C" fn c_pair(n: usize) -> usize {
    // SAFETY: plain malloc/free pairs, each block freed once.
    unsafe {
        for _ in 0..n {
            let p = libc::malloc(SIZE);
            black_box(p);
            libc::free(p);
        }
    }
    n
}

fn pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("c_malloc_free_32");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    set_mode(Mode::Check);
    g.bench_function("glibc (__libc_malloc/__libc_free)", |b| {
        b.iter(|| {
            // SAFETY: a plain glibc allocation, freed once.
            unsafe {
                let p = __libc_malloc(SIZE);
                black_box(p);
                __libc_free(p);
            }
        })
    });
    g.bench_function("interposed malloc/free, mode 1", |b| {
        b.iter(|| {
            // SAFETY: as above, through the interposed allocator.
            unsafe {
                let p = libc::malloc(SIZE);
                black_box(p);
                libc::free(p);
            }
        })
    });
    g.bench_function(
        "interposed malloc/free, mode 1, 1000 pairs inside one call!",
        |b| b.iter(|| call!(c_pair(1000))),
    );
    let layout = Layout::from_size_align(SIZE, 8).expect("a valid layout");
    g.bench_function("TrackingAllocator alloc/dealloc, mode 1", |b| {
        b.iter(|| {
            // SAFETY: a block of `layout`, freed once with it.
            unsafe {
                let p = TRACKING.alloc(layout);
                black_box(p);
                TRACKING.dealloc(p, layout);
            }
        })
    });
    set_mode(Mode::Off);
    g.bench_function("interposed malloc/free, mode 0", |b| {
        b.iter(|| {
            // SAFETY: as above.
            unsafe {
                let p = libc::malloc(SIZE);
                black_box(p);
                libc::free(p);
            }
        })
    });
    set_mode(Mode::Check);
    g.finish();
}

mod sqlite {
    use super::*;
    use libsqlite3_sys as ffi;
    use std::os::raw::c_int;

    extern "C" {
        fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    }

    // glibc's allocator for SQLite, with the size kept in front of each
    // block (as SQLite's own `mem1.c` does without `malloc_usable_size`).
    unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
        // SAFETY: a fresh glibc block with room for the size word.
        unsafe {
            let p = __libc_malloc(n as usize + 8).cast::<u64>();
            if p.is_null() {
                return p.cast();
            }
            *p = n as u64;
            p.add(1).cast()
        }
    }
    unsafe extern "C" fn x_free(p: *mut c_void) {
        if !p.is_null() {
            // SAFETY: p came from x_malloc/x_realloc.
            unsafe { __libc_free(p.cast::<u64>().sub(1).cast()) }
        }
    }
    unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
        // SAFETY: p came from x_malloc/x_realloc (SQLite never passes NULL).
        unsafe {
            let q = __libc_realloc(p.cast::<u64>().sub(1).cast(), n as usize + 8).cast::<u64>();
            if q.is_null() {
                return q.cast();
            }
            *q = n as u64;
            q.add(1).cast()
        }
    }
    unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
        // SAFETY: p came from x_malloc/x_realloc.
        unsafe { *p.cast::<u64>().sub(1) as c_int }
    }
    unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
        (n + 7) & !7
    }
    unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
        0
    }
    unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

    const GLIBC: ffi::sqlite3_mem_methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };

    /// Switches SQLite's allocator: `None` is its default (`malloc`, the
    /// interposed one), `Some` the methods given.
    fn use_methods(m: Option<&ffi::sqlite3_mem_methods>, default: &ffi::sqlite3_mem_methods) {
        // SAFETY: no connection is open; shutdown, configure, re-initialise.
        unsafe {
            ffi::sqlite3_shutdown();
            let m = m.unwrap_or(default);
            assert_eq!(
                ffi::sqlite3_config(
                    ffi::SQLITE_CONFIG_MALLOC,
                    m as *const ffi::sqlite3_mem_methods
                ),
                ffi::SQLITE_OK
            );
            assert_eq!(ffi::sqlite3_initialize(), ffi::SQLITE_OK);
        }
    }

    pub const ROWS: c_int = 100_000;

    macro_rules! insert_rows {
        ($via:ident) => {{
            // SAFETY: SQLite's documented sequence on a fresh in-memory
            // database; every object is finalised and closed once.
            unsafe {
                let mut db = std::ptr::null_mut();
                assert_eq!($via!(ffi::sqlite3_open(c":memory:".as_ptr(), &mut db)), 0);
                let sql = c"CREATE TABLE t(a INTEGER, b TEXT); BEGIN;";
                $via!(ffi::sqlite3_exec(
                    db,
                    sql.as_ptr(),
                    None,
                    std::ptr::null_mut(),
                    std::ptr::null_mut()
                ));
                let mut st = std::ptr::null_mut();
                let ins = c"INSERT INTO t VALUES(?1, ?2)";
                $via!(ffi::sqlite3_prepare_v2(
                    db,
                    ins.as_ptr(),
                    -1,
                    &mut st,
                    std::ptr::null_mut()
                ));
                let text = c"some row text of a moderate length";
                for i in 0..ROWS {
                    $via!(ffi::sqlite3_bind_int(st, 1, i));
                    $via!(ffi::sqlite3_bind_text(
                        st,
                        2,
                        text.as_ptr(),
                        -1,
                        ffi::SQLITE_TRANSIENT()
                    ));
                    $via!(ffi::sqlite3_step(st));
                    $via!(ffi::sqlite3_reset(st));
                }
                $via!(ffi::sqlite3_finalize(st));
                $via!(ffi::sqlite3_exec(
                    db,
                    c"COMMIT".as_ptr(),
                    None,
                    std::ptr::null_mut(),
                    std::ptr::null_mut()
                ));
                $via!(ffi::sqlite3_close(db));
            }
        }};
    }
    macro_rules! plain {
        ($e:expr) => {
            $e
        };
    }

    pub fn bench(c: &mut Criterion) {
        let mut default = GLIBC;
        // SAFETY: reads SQLite's current methods into `default`.
        unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_GETMALLOC,
                &mut default as *mut ffi::sqlite3_mem_methods,
            )
        };
        let mut g = c.benchmark_group("sqlite_insert_100k_rows");
        g.measurement_time(Duration::from_secs(10))
            .warm_up_time(Duration::from_secs(1))
            .sample_size(10);
        set_mode(Mode::Check);
        use_methods(Some(&GLIBC), &default);
        g.bench_function(
            "glibc's allocator (SQLITE_CONFIG_MALLOC), plain calls",
            |b| b.iter(|| insert_rows!(plain)),
        );
        use_methods(None, &default);
        g.bench_function("interposed malloc, mode 1, plain calls", |b| {
            b.iter(|| insert_rows!(plain))
        });
        g.bench_function("interposed malloc, mode 1, every call through call!", |b| {
            b.iter(|| insert_rows!(call))
        });
        g.finish();
    }
}

/// The quarantine's bound in RSS: 256 MiB of 4 KiB C blocks allocated and
/// freed inside checked calls, from one thread (one quarantine shard: 4 MiB
/// and 4096 blocks at most), with the resident set before and after.
fn quarantine_rss(_: &mut Criterion) {
    fn rss_kib() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
    extern "C" fn churn(n: usize) -> usize {
        // SAFETY: plain malloc/free of 4 KiB blocks, each touched and freed once.
        unsafe {
            for _ in 0..n {
                let p = black_box(libc::malloc(4096).cast::<u8>());
                std::ptr::write_bytes(p, 1, 4096);
                libc::free(black_box(p).cast());
            }
        }
        n
    }
    set_mode(Mode::Check);
    let before = rss_kib();
    for _ in 0..64 {
        call!(churn(1024));
    }
    let after = rss_kib();
    println!(
        "quarantine_rss: 256 MiB of 4 KiB C blocks freed; VmRSS {before} KiB before, {after} KiB after (+{} KiB; bound: 4 MiB per shard)",
        after.saturating_sub(before)
    );
}

/// A C function that takes a pointer and does nothing with it.
#[inline(never)]
extern "C" fn take(p: *const u8) -> usize {
    black_box(p) as usize
}

/// One `call!` (mode 1) whose argument points into a live C block of 4 KiB
/// (its start, 16 bytes in, 2 KiB in; and 2 KiB into one of two blocks in
/// turn, which defeats the per-thread memory of the last block found),
/// beside a pointer into a `Vec` and no pointer at all: what the
/// boundary's look for a freed C block around an argument costs an
/// argument nothing else knows.
fn calls(c: &mut Criterion) {
    let mut g = c.benchmark_group("call_with_c_pointer");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    set_mode(Mode::Check);
    // SAFETY: a plain C block, freed at the end.
    let block = unsafe { libc::malloc(4096) }.cast::<u8>().cast_const();
    let rust = vec![1u8; 4096];
    g.bench_function("no pointer (null)", |b| {
        b.iter(|| call!(take(black_box(std::ptr::null()))))
    });
    for (name, offset) in [
        ("start of a live C block", 0),
        ("16 bytes into a live C block", 16),
        ("2 KiB into a live 4 KiB C block", 2048),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| call!(take(black_box(block.wrapping_add(offset)))))
        });
    }
    // SAFETY: a second plain C block, freed at the end.
    let other = unsafe { libc::malloc(4096) }.cast::<u8>().cast_const();
    let mut flip = false;
    g.bench_function("2 KiB into one of two live C blocks, alternately", |b| {
        b.iter(|| {
            flip = !flip;
            let base = if flip { block } else { other };
            call!(take(black_box(base.wrapping_add(2048))))
        })
    });
    g.bench_function("2 KiB into a Vec of 4 KiB", |b| {
        b.iter(|| call!(take(black_box(rust.as_ptr().wrapping_add(2048)))))
    });
    g.finish();
    // SAFETY: allocated above, each freed once.
    unsafe {
        libc::free(block.cast_mut().cast());
        libc::free(other.cast_mut().cast());
    }
}

criterion_group!(benches, quarantine_rss, pairs, calls, sqlite::bench);
criterion_main!(benches);
