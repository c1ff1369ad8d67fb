//! The checker's one way to write to the process's standard error: never
//! panicking, so a closed or full stderr cannot crash the host program.
//!
//! Ground floor: it uses no other module, so even the environment reader
//! ([`mode`](crate::mode)) can warn through it.

use std::io::Write;

/// Writes to stderr without ever panicking (a closed stderr must not crash
/// the host program).
pub(crate) fn write_stderr(s: &str) {
    let _ = std::io::stderr().write_all(s.as_bytes());
}
