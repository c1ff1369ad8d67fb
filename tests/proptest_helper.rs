//! The `proptest` feature: `ffi_check::proptest::check` turns a broken rule
//! (or a leak) inside a property-test case into a failing case, so proptest
//! shrinks a failing FFI call sequence to the smallest one. Run with
//! `cargo test --features proptest`.
#![cfg(all(feature = "proptest", any(debug_assertions, feature = "always")))]

mod common;

use common::fixtures;
use ffi_check::{call, CBox, Managed};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

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
