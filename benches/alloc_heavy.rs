//! An allocation-heavy workload with the tracking allocator installed, in
//! mode 1 and in mode 2 (event backtraces on, mode 2's default) in the same
//! run: what mode 2 costs code that allocates the way a parser's or a regex
//! engine's tests do, with a few calls into C among the allocations.
//!
//! One iteration tokenises a text into `String`s, builds a syntax tree of
//! boxed nodes with `Vec`s of children, renders it back into a `String`
//! and drops it all (about 1,100 allocations and as many frees), and makes
//! two `call!`s: one lends a token's bytes, one lends the rendered text.
//!
//! - `alloc_heavy/mode0` — the checks off (`Mode::Off`): the allocator's
//!   own cost.
//! - `alloc_heavy/mode1` — mode 1, the baseline of the 3× target.
//! - `alloc_heavy/mode2` — mode 2 with event backtraces (cached unwind
//!   rules).
//! - `alloc_heavy/mode2_platform_unwinder` — mode 2 with every event
//!   backtrace walked by the platform unwinder, as before the cached rules.
//! - `alloc_heavy/mode2_no_backtraces` — mode 2 without event backtraces
//!   (`FFI_CHECK_BACKTRACE=0`).
//!
//! Run: `cargo bench --features always --bench alloc_heavy`.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use ffi_check::{call, set_event_backtraces, set_mode, Mode, TrackingAllocator, COMPILED_IN};

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

/// A C function that sums the bytes it is lent.
#[inline(never)]
extern "C" fn byte_sum(p: *const u8, len: usize) -> usize {
    // SAFETY: every caller lends `len` readable bytes.
    unsafe { std::slice::from_raw_parts(p, len) }
        .iter()
        .map(|&b| b as usize)
        .sum()
}

const TEXT: &str = "let total = (alpha + beta) * gamma - delta / 2; \
    if total > limit { emit(total, \"over\"); } else { rest.push(total); } \
    for item in items.iter().filter(|x| x.ok) { sum += item.value * weight; } ";

// The boxes are the point: one small allocation a node, as a parser's tree
// has.
#[allow(clippy::vec_box)]
enum Node {
    Leaf(String),
    List(Vec<Box<Node>>),
}

fn tokens(text: &str, i: u32) -> Vec<String> {
    let mut out = Vec::new();
    for (n, word) in text.split_whitespace().enumerate() {
        out.push(word.to_owned());
        if n % 4 == 0 {
            out.push(format!("#{i}:{n}"));
        }
    }
    out
}

fn tree(tokens: &[String]) -> Node {
    Node::List(
        tokens
            .chunks(3)
            .map(|c| {
                Box::new(Node::List(
                    c.iter().map(|t| Box::new(Node::Leaf(t.clone()))).collect(),
                ))
            })
            .collect(),
    )
}

fn render(node: &Node, out: &mut String) {
    match node {
        Node::Leaf(s) => {
            out.push_str(s);
            out.push(' ');
        }
        Node::List(children) => {
            out.push('(');
            for c in children {
                render(c, out);
            }
            out.push(')');
        }
    }
}

/// One iteration: about 1,100 allocations and frees, two `call!`s.
fn iteration(i: u32) -> usize {
    let mut total = 0;
    for round in 0..4 {
        let toks = tokens(TEXT, i.wrapping_add(round));
        let t = tree(&toks);
        let mut text = String::new();
        render(&t, &mut text);
        total += text.len() + toks.len();
        if round == 0 {
            let first = toks[0].as_bytes();
            total += call!(byte_sum(first.as_ptr(), first.len()));
        }
        if round == 3 {
            total += call!(byte_sum(text.as_ptr(), text.len()));
        }
    }
    total
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group(format!("COMPILED_IN={COMPILED_IN}/alloc_heavy"));
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let mut i = 0u32;
    type Setting = (&'static str, Mode, Option<bool>, bool);
    let settings: [Setting; 5] = [
        ("mode0", Mode::Off, None, false),
        ("mode1", Mode::Check, None, false),
        ("mode2", Mode::Full, None, false),
        ("mode2_platform_unwinder", Mode::Full, None, true),
        ("mode2_no_backtraces", Mode::Full, Some(false), false),
    ];
    for (name, mode, backtraces, platform) in settings {
        if !COMPILED_IN && mode != Mode::Check {
            continue;
        }
        set_mode(mode);
        set_event_backtraces(backtraces);
        ffi_check::__private::set_platform_unwinder(platform);
        g.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                iteration(black_box(i))
            })
        });
    }
    set_mode(Mode::Check);
    set_event_backtraces(None);
    ffi_check::__private::set_platform_unwinder(false);
    g.finish();
    println!("alloc_heavy: {}", ffi_check::__private::stack_walker());
    c.final_summary();
}
