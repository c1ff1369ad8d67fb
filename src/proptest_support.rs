//! Property tests over FFI code (feature `proptest`).
//!
//! A property test drives an FFI API through random sequences of calls; the
//! checker turns every broken rule into a test failure, and proptest then
//! shrinks the sequence to the smallest one that still breaks a rule. This
//! module is the glue: [`check`] runs one case under a fresh [`LeakCheck`]
//! scope and [`capture`], and turns what they found into a
//! [`TestCaseError`].
//!
//! ```
//! use ffi_check::{call, Managed};
//! use proptest::prelude::*;
//!
//! extern "C" fn total(p: *const u8, n: usize) -> usize {
//!     // SAFETY: the caller lends n readable bytes.
//!     unsafe { std::slice::from_raw_parts(p, n) }.iter().map(|b| *b as usize).sum()
//! }
//!
//! fn lending_bytes_is_clean(bytes: Vec<u8>) -> Result<(), TestCaseError> {
//!     let n = bytes.len();
//!     let sum = ffi_check::proptest::check(|| {
//!         let buf = Managed::from_vec(bytes.clone());
//!         call!(total(&buf, n))
//!     })?;
//!     prop_assert_eq!(sum, bytes.iter().map(|b| *b as usize).sum::<usize>());
//!     Ok(())
//! }
//!
//! // In a test: any broken rule fails the case, and proptest shrinks it.
//! proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..64))| {
//!     lending_bytes_is_clean(bytes)?;
//! });
//! ```

use std::fmt::Write as _;

use ::proptest::test_runner::TestCaseError;

use crate::leak::LeakCheck;
use crate::report::capture;

/// Runs `case` under a fresh leak scope and [`capture`]:
/// `Ok` with its value when no rule was broken and nothing it allocated on
/// this thread leaked, otherwise a failing [`TestCaseError`] whose message
/// holds the full reports (so proptest shrinks toward the smallest case that
/// still breaks a rule, and prints its reports).
///
/// Use it with `?` inside a `proptest!` body.
pub fn check<R>(case: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    let scope = LeakCheck::start();
    let (value, violations) = capture(case);
    let leaks = scope.finish();
    if violations.is_empty() && leaks.is_empty() {
        return Ok(value);
    }
    let mut message = String::new();
    for v in &violations {
        let _ = writeln!(message, "{}", v.first_line());
    }
    for v in leaks.violations() {
        let _ = writeln!(message, "{}", v.first_line());
    }
    let _ = writeln!(message);
    for v in &violations {
        let _ = writeln!(message, "{v}\n");
    }
    if !leaks.is_empty() {
        let _ = writeln!(message, "{leaks}");
    }
    Err(TestCaseError::fail(message))
}
