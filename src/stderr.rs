//! The checker's one way to write to the process's standard error: never
//! panicking, so a closed or full stderr cannot crash the host program.
//!
//! Ground floor: it uses no other module, so even the environment reader
//! ([`mode`](crate::mode)) can warn through it.

/// Writes to stderr without ever panicking (a closed stderr must not crash
/// the host program), and without the standard library's stderr lock: in
/// the child of a `fork`, that lock may be held by a thread that is gone.
/// A report is written whole by one `write` where the kernel allows it.
pub(crate) fn write_stderr(s: &str) {
    let mut rest = s.as_bytes();
    while !rest.is_empty() {
        // SAFETY: `rest` is a readable buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(libc::STDERR_FILENO, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        rest = rest.get(n as usize..).unwrap_or_default();
    }
}
