//! What the integration tests share: the C fixture library's declarations
//! (the workspace crate `ffi-check-fixtures`, as `common::fixtures`), the
//! checks every report must pass, the checks on a report's sites, the lock
//! on the fixtures' one C slot, and the machinery that runs a test of the
//! same binary as a child process (for what is process-wide: the mode, the
//! action, the log file, the report at exit).
//!
//! Each test file declares `mod common;` and uses a subset of this.

#![allow(dead_code)]

pub use ffi_check_fixtures as fixtures;

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use ffi_check::{call, Site, Violation, ViolationKind};

// ---- violations and reports --------------------------------------------------

/// The one violation `vs` must hold.
pub fn only(vs: &[Violation]) -> &Violation {
    assert_eq!(vs.len(), 1, "expected exactly one violation, got {vs:#?}");
    &vs[0]
}

/// The kinds of `vs`, in order.
pub fn kinds(vs: &[Violation]) -> Vec<ViolationKind> {
    vs.iter().map(Violation::kind).collect()
}

/// Checks what every report promises and returns its text: the kind, a
/// first line that starts with `ffi-check: ` and is `first_line()`, and a
/// last line that is the kind's `help:` line.
fn assert_report_shape(v: &Violation, kind: ViolationKind) -> String {
    let text = v.to_string();
    assert_eq!(v.kind(), kind, "{text}");
    let first = text.lines().next().expect("a report has lines");
    assert_eq!(first, v.first_line(), "{text}");
    assert!(first.starts_with("ffi-check: "), "{text}");
    let last = text.lines().last().expect("a report has lines");
    assert!(last.starts_with("help: "), "{text}");
    assert_eq!(last, v.help());
    assert_eq!(last, format!("help: {}", kind.help()));
    text
}

/// A report of `kind` whose first line holds the kind's fixed `phrase`
/// (for kinds whose first line goes on with sizes, sites or names).
pub fn assert_report(v: &Violation, kind: ViolationKind, phrase: &str) {
    let text = assert_report_shape(v, kind);
    let first = text.lines().next().expect("a report has lines");
    assert!(first.contains(phrase), "{first:?} lacks {phrase:?}");
}

/// A report of `kind`, under `rule`, whose first line is exactly
/// `first_line`.
pub fn assert_report_line(v: &Violation, kind: ViolationKind, rule: &str, first_line: &str) {
    let text = assert_report_shape(v, kind);
    assert_eq!(v.rule(), rule, "{text}");
    assert_eq!(text.lines().next(), Some(first_line), "{text}");
}

// ---- sites -------------------------------------------------------------------

/// `site` is in the Rust file `file` (the caller's `file!()`), at `line`.
pub fn assert_rust_site(site: Option<Site>, file: &str, line: u32) {
    let site = site.expect("a site");
    assert_eq!(site.file(), file);
    assert_eq!(site.line(), line, "site {site}");
}

/// `site` is in the C fixture library.
pub fn assert_c_site(site: Option<Site>) {
    let site = site.expect("a site");
    assert!(site.is_c(), "site {site} should be in C");
    assert!(site.file().ends_with("fixtures.c"), "site {site}");
}

// ---- the fixtures' C slot ----------------------------------------------------

/// `fx_keep`/`fx_forget` share one C slot: one test at a time uses it.
static SLOT: Mutex<()> = Mutex::new(());

/// Holds the slot for the caller's test; a test that failed while holding
/// it does not stop the others.
pub fn slot() -> MutexGuard<'static, ()> {
    SLOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Empties the slot (releasing what it held), as a test must before the
/// memory it points to is dropped.
pub fn forget() {
    // SAFETY: fx_forget only clears the global slot.
    unsafe { call!(fixtures::fx_forget()) }
}

// ---- child processes ---------------------------------------------------------

/// The variable that names the one child test a child process runs.
pub const CHILD: &str = "FFI_CHECK_TEST_CHILD";

/// The variables that configure ffi-check; a child starts without them.
const FFI_CHECK_VARS: [&str; 6] = [
    "FFI_CHECK_STRICT",
    "FFI_CHECK",
    "FFI_CHECK_ACTION",
    "FFI_CHECK_LOG",
    "FFI_CHECK_LEAKS",
    "FFI_CHECK_BACKTRACE",
];

/// True in the child process started for `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD).as_deref() == Ok(name)
}

/// Runs the test `name` of this binary alone in a child process, with a
/// clean ffi-check environment plus `env`.
pub fn run_child(name: &str, env: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"]);
    for var in FFI_CHECK_VARS {
        cmd.env_remove(var);
    }
    cmd.env(CHILD, name);
    cmd.envs(env.iter().copied());
    cmd.output().expect("run the test binary as a child")
}

/// A child's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the child test `name` and asserts that it passed (and that the
/// filter selected it, not nothing); returns its stderr.
pub fn child_passes(name: &str, env: &[(&str, &str)]) -> String {
    let out = run_child(name, env);
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "child {name} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "child {name} did not run:\n{stdout}"
    );
    stderr
}

/// For a test that must not share its process with others (it writes a
/// program static that other tests' mode-2 calls scan, or needs a freed
/// block to stay in its quarantine while other tests free theirs): in the
/// parent, runs test `name` alone in a child process, in the parent's
/// `FFI_CHECK` mode, asserts that it passed, and returns false (the parent
/// is done); in that child, returns true (run the body).
pub fn alone_in_child(name: &str) -> bool {
    if is_child(name) {
        return true;
    }
    let mode = std::env::var("FFI_CHECK").ok();
    let env: Vec<(&str, &str)> = mode.iter().map(|m| ("FFI_CHECK", m.as_str())).collect();
    child_passes(name, &env);
    false
}
