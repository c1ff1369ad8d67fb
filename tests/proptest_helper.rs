//! The `proptest` feature: `ffi_check::proptest::check` turns a broken rule
//! (or a leak) inside a property-test case into a failing case, so proptest
//! shrinks a failing FFI call sequence to the smallest one. Run with
//! `cargo test --features proptest`.
#![cfg(all(feature = "proptest", any(debug_assertions, feature = "always")))]

mod common;

#[path = "../examples/wrappers/zlib.rs"]
mod zwrap;

use common::fixtures;
use ffi_check::{call, CBox, Managed, Pinner};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use zwrap::{Deflater, Flush, Inflater};

/// A small safe wrapper over the fixture's checksum: sums `data` chunk by
/// chunk, one C call per chunk. With `seeded_bug`, a chunk of 40 bytes or
/// more is first copied into C memory that is never freed: a leak.
fn checksum_chunks(data: &[u8], chunks: &[usize], seeded_bug: bool) -> u64 {
    let mut total = 0u64;
    let mut at = 0;
    for &len in chunks {
        let chunk = &data[at..at + len];
        at += len;
        let sum = if seeded_bug && len >= 40 {
            let copy = CBox::from_slice(chunk).into_raw();
            // SAFETY: `copy` holds `len` bytes (and is leaked: the bug).
            unsafe { call!(fixtures::fx_checksum(copy, len)) }
        } else {
            let buf = Managed::from_vec(chunk.to_vec());
            // SAFETY: `buf` lends `len` readable bytes for the call.
            unsafe { call!(fixtures::fx_checksum(&buf, len)) }
        };
        total += sum;
    }
    total
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..64, 1..10)
}

fn data_for(chunks: &[usize]) -> Vec<u8> {
    (0..chunks.iter().sum::<usize>())
        .map(|i| (i % 251) as u8)
        .collect()
}

fn property(chunks: Vec<usize>, seeded_bug: bool) -> Result<(), TestCaseError> {
    let data = data_for(&chunks);
    let sum = ffi_check::proptest::check(|| checksum_chunks(&data, &chunks, seeded_bug))?;
    prop_assert_eq!(sum, data.iter().map(|b| u64::from(*b)).sum::<u64>());
    Ok(())
}

#[test]
fn correct_wrapper_passes_every_case() {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&chunks(), |chunks| property(chunks, false))
        .expect("no case breaks a rule");
}

#[test]
fn seeded_leak_is_shrunk_to_the_smallest_failing_sequence() {
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    match runner.run(&chunks(), |chunks| property(chunks, true)) {
        Err(TestError::Fail(reason, minimal)) => {
            // One chunk, of exactly the size that triggers the bug.
            assert_eq!(minimal, vec![40], "shrunk to {minimal:?}");
            let reason = reason.to_string();
            assert!(
                reason.starts_with("ffi-check: leak of C memory: 40 byte(s) in 1 allocation(s)"),
                "{reason}"
            );
            assert!(reason.contains("detected memory leaks"), "{reason}");
        }
        other => panic!("the seeded leak was not found: {other:?}"),
    }
}

// ---- the zlib wrapper ------------------------------------------------------

/// How a stream is cut: each chunk's length and the flush after it (0: none,
/// 1: sync, 2: full).
fn zlib_plans() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((1usize..2000, 0u8..3), 1..8)
}

/// Compresses `data` with the zlib wrapper, chunk by chunk as `plan` says,
/// and decompresses the result in 700-byte pieces. Chunks of 1000 bytes or
/// more take the zero-copy path (`write_lent`), pinned for the call; with
/// `seeded_bug`, that path forgets the pin.
fn zlib_round_trip(data: &[u8], plan: &[(usize, u8)], seeded_bug: bool) -> Vec<u8> {
    let mut d = Deflater::new(6).expect("deflateInit");
    let mut packed = Vec::new();
    let mut at = 0;
    for &(len, flush) in plan {
        let chunk = &data[at..at + len];
        at += len;
        let flush = [Flush::None, Flush::Sync, Flush::Full][usize::from(flush)];
        if len >= 1000 {
            let lent = Managed::from_vec(chunk.to_vec());
            let mut pinner = Pinner::new();
            if !seeded_bug {
                pinner.pin(&lent);
            }
            d.write_lent(&lent, flush, &mut packed).expect("deflate");
        } else {
            d.write(chunk, flush, &mut packed).expect("deflate");
        }
    }
    d.finish(&mut packed).expect("finish");
    let mut i = Inflater::new().expect("inflateInit");
    let mut unpacked = Vec::new();
    for piece in packed.chunks(700) {
        i.write(piece, &mut unpacked).expect("inflate");
    }
    i.finish().expect("inflateEnd");
    unpacked
}

fn zlib_property(plan: Vec<(usize, u8)>, seeded_bug: bool) -> Result<(), TestCaseError> {
    let lens: Vec<usize> = plan.iter().map(|(len, _)| *len).collect();
    let data = data_for(&lens);
    let unpacked = ffi_check::proptest::check(|| zlib_round_trip(&data, &plan, seeded_bug))?;
    prop_assert_eq!(unpacked, data);
    Ok(())
}

#[test]
fn zlib_round_trips_in_any_chunking_are_exact_and_clean() {
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&zlib_plans(), |plan| zlib_property(plan, false))
        .expect("every chunking round-trips, and no case breaks a rule");
}

#[test]
fn zlib_seeded_unpinned_lend_is_shrunk_to_the_smallest_chunking() {
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    match runner.run(&zlib_plans(), |plan| zlib_property(plan, true)) {
        Err(TestError::Fail(reason, minimal)) => {
            // One chunk, of exactly the size that takes the broken path,
            // with the simplest flush.
            assert_eq!(minimal, vec![(1000, 0)], "shrunk to {minimal:?}");
            let reason = reason.to_string();
            assert!(
                reason.starts_with(
                    "ffi-check: argument 1 of `deflate` has managed pointer to unpinned managed pointer"
                ),
                "{reason}"
            );
            assert!(reason.contains("rule P1 (UnpinnedNested)"), "{reason}");
        }
        other => panic!("the seeded mistake was not found: {other:?}"),
    }
}
