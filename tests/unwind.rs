//! The stack walk behind every event backtrace (mode 2 takes one at each
//! allocation, pin and free): the cached unwind rules find exactly the
//! return addresses the platform unwinder finds from the same place, through
//! Rust, the standard library and C frames, and the stacks stored from them
//! still name the right functions in reports.

mod common;

use std::os::raw::{c_int, c_void};

use common::fixtures;
use ffi_check::__private::{fast_stack, platform_stack};
use ffi_check::{call, set_event_backtraces, Managed, ViolationKind};

const N: usize = 64;

/// Both walks from this function: the callers of `both_walks`, by the
/// cached rules and by `_Unwind_Backtrace`.
#[inline(never)]
fn both_walks() -> (Vec<usize>, Vec<usize>) {
    let (mut fast, mut slow) = ([0usize; N], [0usize; N]);
    let nf = fast_stack(&mut fast).expect("the cached rules follow every frame here");
    let ns = platform_stack(&mut slow);
    (fast[..nf].to_vec(), slow[..ns].to_vec())
}

fn assert_same((fast, slow): (Vec<usize>, Vec<usize>)) {
    assert!(fast.len() >= 3, "a few callers at least: {fast:x?}");
    assert_eq!(fast, slow, "the cached rules find the unwinder's callers");
}

#[inline(never)]
fn outer(depth: u32) -> (Vec<usize>, Vec<usize>) {
    std::hint::black_box(middle(depth))
}

#[inline(never)]
fn middle(depth: u32) -> (Vec<usize>, Vec<usize>) {
    if depth > 0 {
        return std::hint::black_box(outer(depth - 1));
    }
    std::hint::black_box(both_walks())
}

#[test]
fn the_cached_rules_find_the_unwinders_callers() {
    assert_same(outer(4));
}

#[test]
fn through_a_scoped_thread_and_iterator_adapters() {
    let data = [1u32, 2, 3];
    let found = std::thread::scope(|s| {
        s.spawn(|| {
            data.iter()
                .map(|&d| outer(d))
                .filter(|(f, _)| !f.is_empty())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
    });
    assert_eq!(found.len(), 3);
    for pair in found {
        // The whole stack of a new thread: it ends at the thread's start.
        assert!(
            pair.0.len() < N,
            "the walk reached the thread's first frame"
        );
        assert_same(pair);
    }
}

unsafe extern "C" fn visit(user: *mut c_void, item: c_int) -> c_int {
    // SAFETY: `user` is the `Vec` `through_a_c_frame` lends for the call.
    let out = unsafe { &mut *user.cast::<Vec<(Vec<usize>, Vec<usize>)>>() };
    out.push(outer(item as u32));
    0
}

#[test]
fn through_a_c_frame() {
    // A callback called from C (`fx_for_each`): the walk goes through the
    // C function's frame to the Rust that called it.
    let items = [0 as c_int, 2];
    let mut found: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
    let user = std::ptr::addr_of_mut!(found).cast::<c_void>();
    // SAFETY: the callback and its user data match `fx_for_each`'s contract.
    let calls = unsafe { fixtures::fx_for_each(items.as_ptr(), items.len(), Some(visit), user) };
    assert_eq!(calls, 2);
    assert_eq!(found.len(), 2);
    for pair in found {
        let this_test = through_a_c_frame as *const () as usize;
        // The walk went past the C frame into this test's own frame: one
        // return address lies in this function's first few KiB.
        assert!(
            pair.0
                .iter()
                .any(|&ip| ip > this_test && ip < this_test + 4096),
            "the walk reached the Rust caller of the C function: {:x?}",
            pair.0
        );
        assert_same(pair);
    }
}

#[test]
fn a_thread_with_a_small_stack() {
    let pair = std::thread::Builder::new()
        .stack_size(32 * 1024)
        .spawn(|| outer(3))
        .unwrap()
        .join()
        .unwrap();
    assert!(pair.0.len() < N);
    assert_same(pair);
}

#[inline(never)]
fn recurse(depth: u32, cut: &mut [usize; 32]) -> usize {
    if depth > 0 {
        return std::hint::black_box(recurse(depth - 1, cut));
    }
    let n = fast_stack(cut).unwrap();
    let mut slow = [0usize; 32];
    assert_eq!(platform_stack(&mut slow), 32);
    assert_eq!(*cut, slow);
    n
}

#[test]
fn a_deep_stack_is_cut_at_the_buffer() {
    let mut cut = [0usize; 32];
    assert_eq!(recurse(100, &mut cut), 32);
    // Every return address is the one into `recurse` itself.
    assert!(cut.iter().all(|&ip| ip == cut[0]));
}

#[inline(never)]
fn allocate_here() -> Managed<u64> {
    Managed::new(7)
}

/// Frees `m` in a frame of its own. The `black_box` after the drop keeps
/// the drop a call: a bare `drop(m)` as the last statement is compiled, in
/// an optimised build, as a jump to the deallocation (a sibling call), which
/// leaves no frame of this function on the stack for any unwinder to find.
#[inline(never)]
fn free_here(m: Managed<u64>) -> usize {
    drop(m);
    std::hint::black_box(0)
}

extern "C" fn read_word(p: *const u64) -> u64 {
    // SAFETY: the caller lends one readable word (or, in this test, one
    // already freed: the checker reports the call before it is made).
    unsafe { *p }
}

/// The test's body, in a function that keeps its own name in an optimised
/// build: a `#[test]` function's body is inlined into the harness's
/// `FnOnce::call_once` shim, which is what its symbol then says (release
/// builds carry no debug information to name inlined functions with).
#[inline(never)]
fn use_after_free_with_event_stacks() -> Vec<ffi_check::Violation> {
    let m = allocate_here();
    let p = m.as_ptr();
    std::hint::black_box(free_here(m));
    let (_, v) = ffi_check::capture(|| call!(read_word(p)));
    std::hint::black_box(v)
}

#[test]
fn a_report_names_the_allocating_and_freeing_functions() {
    // With event backtraces on (mode 2's default, asked for here in either
    // mode), a use after free names where the block was allocated and
    // freed, through the stacks walked by the cached rules.
    set_event_backtraces(Some(true));
    let v = use_after_free_with_event_stacks();
    set_event_backtraces(None);
    let v = common::only(&v);
    assert_eq!(v.kind(), ViolationKind::UseAfterFree);
    let text = v.to_string();
    let section = |what: &str| -> String {
        text.lines()
            .skip_while(|l| !l.trim_start().starts_with(what))
            .skip(1)
            .take_while(|l| l.starts_with("          "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let allocated = section("allocated at");
    let freed = section("first freed at");
    let first_function = |stack: &str| stack.lines().next().unwrap_or("").to_owned();
    assert!(
        first_function(&allocated).contains("unwind::allocate_here"),
        "{text}"
    );
    assert!(
        first_function(&freed).contains("unwind::free_here"),
        "{text}"
    );
    // Both stacks go on into their caller.
    for stack in [&allocated, &freed] {
        assert!(
            stack.contains("unwind::use_after_free_with_event_stacks"),
            "{text}"
        );
    }
}
