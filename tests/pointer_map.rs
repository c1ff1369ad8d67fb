//! Pointer maps (rule P1 with the type's own statement of where its
//! pointers are): lending a type with a map reads only the words it names,
//! so a pointer field to unpinned managed memory is still reported and an
//! integer field that happens to hold such an address is not; a type with
//! an empty map is never read. A type without a map keeps the conservative
//! scan of every word, shown beside each case by an undeclared twin.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use common::{assert_report_line, only};
use ffi_check::{
    assert_clean, call, capture, strictly, Managed, Pinned, PointerMap, ViolationKind,
};
use ffi_check_derive::{PointerFree, PointerMap};

/// A job with one pointer, between two numbers.
#[derive(PointerMap, Clone, Copy)]
#[repr(C)]
struct Job {
    id: usize,
    data: *const u64,
    tag: usize,
}

/// The same layout, without a map: every word is scanned.
#[derive(Clone, Copy)]
#[repr(C)]
struct UndeclaredJob {
    id: usize,
    data: *const u64,
    tag: usize,
}

/// Eight counters, declared pointer-free.
#[derive(PointerFree, Clone, Copy)]
#[repr(C)]
struct Counts {
    c: [u64; 8],
}

/// The same layout, undeclared.
#[derive(Clone, Copy)]
#[repr(C)]
struct UndeclaredCounts {
    c: [u64; 8],
}

/// A struct of a derived struct, a tuple and an array of pointers.
#[derive(PointerMap)]
#[repr(C)]
struct Batch {
    counts: Counts,
    pair: (u32, *const u64),
    more: [*const u64; 2],
}

/// A generic struct: its map is its fields' for each `T` that has one.
#[derive(PointerMap)]
#[repr(C)]
struct Tagged<T> {
    tag: u64,
    value: T,
}

extern "C" fn take_job(job: *const Job) -> usize {
    // SAFETY: the caller lends one Job.
    unsafe { (*job).tag }
}
extern "C" fn take_jobs(jobs: *const Job, n: usize) -> usize {
    // SAFETY: the caller lends n Jobs.
    unsafe { std::slice::from_raw_parts(jobs, n) }.len()
}
extern "C" fn take_undeclared(job: *const UndeclaredJob) -> usize {
    // SAFETY: the caller lends one UndeclaredJob.
    unsafe { (*job).tag }
}
extern "C" fn take_counts(c: *const Counts) -> u64 {
    // SAFETY: the caller lends one Counts.
    unsafe { (*c).c[0] }
}
extern "C" fn take_undeclared_counts(c: *const UndeclaredCounts) -> u64 {
    // SAFETY: the caller lends one UndeclaredCounts.
    unsafe { (*c).c[0] }
}
extern "C" fn take_batch(b: *const Batch) -> u64 {
    // SAFETY: the caller lends one Batch.
    unsafe { (*b).counts.c[0] }
}
extern "C" fn take_iov(v: *const libc::iovec) -> usize {
    // SAFETY: the caller lends one iovec.
    unsafe { (*v).iov_len }
}
extern "C" fn take_timespec(t: *const libc::timespec) -> libc::c_long {
    // SAFETY: the caller lends one timespec.
    unsafe { (*t).tv_nsec }
}

fn assert_nested_at(v: &ffi_check::Violation, callee: &str, offset: usize, target: usize) {
    assert_report_line(
        v,
        ViolationKind::UnpinnedNested,
        "P1",
        &format!(
            "ffi-check: argument 1 of `{callee}` has managed pointer to unpinned managed pointer"
        ),
    );
    let report = v.to_string();
    assert!(
        report.contains(&format!(
            "the nested pointer is at offset {offset} of the lent memory"
        )),
        "{report}"
    );
    let points_to = v.regions().iter().find(|r| r.role() == "points to");
    assert_eq!(points_to.map(|r| r.addr()), Some(target), "{report}");
}

#[test]
fn the_derived_map_names_the_pointer_fields() {
    assert_eq!(Job::POINTERS.offsets(), Some(&[8][..]));
    assert!(Counts::POINTERS.is_empty());
    // counts: 64 bytes, then the tuple (pointer at 72: after the u32 and
    // its padding), then the array at 80 and 88.
    assert_eq!(Batch::POINTERS.offsets(), Some(&[72, 80, 88][..]));
    assert_eq!(Tagged::<*const u8>::POINTERS.offsets(), Some(&[8][..]));
    assert!(Tagged::<u32>::POINTERS.is_empty());
    assert_eq!(Tagged::<Job>::POINTERS.offsets(), Some(&[16][..]));
}

#[test]
fn a_declared_pointer_field_to_unpinned_managed_memory_is_reported() {
    let target = Managed::new(7u64);
    let job = Managed::new(Job {
        id: 1,
        data: target.as_ptr(),
        tag: 2,
    });
    // Declared managed memory is held to Go's rule whether or not the rules
    // are strict for plain heap blocks.
    for strict in [true, false] {
        let (tag, vs) = capture(|| strictly(strict, || call!(take_job(&job))));
        assert_eq!(tag, 2, "the call is still made");
        assert_nested_at(only(&vs), "take_job", 8, target.addr());
    }
    // A plain reference and a mutable one are read by the same map.
    let mut plain = *job;
    let (_, vs) = capture(|| call!(take_job(&plain)));
    assert_nested_at(only(&vs), "take_job", 8, target.addr());
    let (_, vs) = capture(|| call!(take_job(&mut plain)));
    assert_nested_at(only(&vs), "take_job", 8, target.addr());
    // Pinned, the target is fine.
    let pinned = Pinned::new(7u64);
    let ok = Pinned::new(Job {
        id: 1,
        data: pinned.as_ptr(),
        tag: 3,
    });
    assert_eq!(assert_clean(|| call!(take_job(&ok))), 3);
}

#[test]
fn an_integer_field_holding_a_managed_address_is_not_read() {
    let target = Managed::new(7u64);
    let fields = |id| (id, std::ptr::null::<u64>(), target.addr());
    let (id, data, tag) = fields(target.addr());
    let job = Managed::new(Job { id, data, tag });
    assert_eq!(
        strictly(true, || assert_clean(|| call!(take_job(&job)))),
        target.addr()
    );
    // Without the map, the same words are read: the first is reported.
    let twin = Managed::new(UndeclaredJob { id, data, tag });
    let (_, vs) = capture(|| call!(take_undeclared(&twin)));
    assert_nested_at(only(&vs), "take_undeclared", 0, target.addr());
}

#[test]
fn a_pointer_free_struct_is_never_read() {
    let target = Managed::new(7u64);
    let mut c = [0u64; 8];
    c[3] = target.addr() as u64;
    let counts = Managed::new(Counts { c });
    let mut plain = Counts { c };
    strictly(true, || {
        assert_clean(|| {
            call!(take_counts(&counts));
            call!(take_counts(&plain));
            call!(take_counts(&mut plain));
        })
    });
    let twin = Managed::new(UndeclaredCounts { c });
    let (_, vs) = capture(|| call!(take_undeclared_counts(&twin)));
    assert_nested_at(only(&vs), "take_undeclared_counts", 24, target.addr());
}

#[test]
fn a_slice_of_declared_values_is_read_element_by_element() {
    let target = Managed::new(7u64);
    let mut jobs = vec![
        Job {
            id: target.addr(),
            data: std::ptr::null(),
            tag: target.addr(),
        };
        4
    ];
    let jobs_clean = Managed::from_vec(jobs.clone());
    assert_eq!(assert_clean(|| call!(take_jobs(&jobs_clean, 4))), 4);
    jobs[2].data = target.as_ptr();
    let jobs = Managed::from_vec(jobs);
    let (_, vs) = capture(|| call!(take_jobs(&jobs, 4)));
    let size = std::mem::size_of::<Job>();
    assert_nested_at(only(&vs), "take_jobs", 2 * size + 8, target.addr());
}

#[test]
fn nested_derived_maps_and_tuples_are_followed() {
    let target = Managed::new(7u64);
    let counts = Counts {
        c: [target.addr() as u64; 8],
    };
    let batch = Managed::new(Batch {
        counts,
        pair: (target.addr() as u32, std::ptr::null()),
        more: [std::ptr::null(), target.as_ptr()],
    });
    let (_, vs) = capture(|| call!(take_batch(&batch)));
    assert_nested_at(only(&vs), "take_batch", 88, target.addr());
}

#[test]
fn libc_structures_have_maps() {
    let target = Managed::from_vec(vec![0u64; 4]);
    let iov = libc::iovec {
        iov_base: target.addr() as *mut libc::c_void,
        iov_len: 32,
    };
    let (_, vs) = capture(|| call!(take_iov(&iov)));
    assert_nested_at(only(&vs), "take_iov", 0, target.addr());
    let t = libc::timespec {
        tv_sec: target.addr() as libc::time_t,
        tv_nsec: 5,
    };
    assert_eq!(assert_clean(|| call!(take_timespec(&t))), 5);
}

/// A type declared `PointerFree` by hand (no derive, no map).
#[derive(Clone, Copy)]
#[repr(C)]
struct Sample {
    t: u64,
    v: u64,
}
// SAFETY: two numbers.
unsafe impl ffi_check::PointerFree for Sample {}

extern "C" fn take_samples(s: *const Sample, n: usize) -> u64 {
    // SAFETY: the caller lends n Samples.
    unsafe { std::slice::from_raw_parts(s, n) }
        .iter()
        .map(|s| s.v)
        .sum()
}

#[test]
fn a_type_declared_pointer_free_by_hand_is_never_read() {
    let target = Managed::new(7u64);
    let one = Sample {
        t: target.addr() as u64,
        v: 1,
    };
    let samples = Managed::from_vec(vec![one; 8]);
    let single = Managed::new(one);
    assert_eq!(
        assert_clean(|| call!(take_samples(&samples, 8)) + call!(take_samples(&single, 1))),
        9
    );
    // Bare numbers are not a declaration: the same words as `u64`s are read.
    let words = Managed::from_vec(vec![target.addr() as u64; 2]);
    let (_, vs) = capture(|| call!(take_undeclared_words(&words)));
    assert_eq!(only(&vs).kind(), ViolationKind::UnpinnedNested);
}

extern "C" fn take_undeclared_words(w: *const u64) -> u64 {
    // SAFETY: the caller lends at least one u64.
    unsafe { *w }
}
