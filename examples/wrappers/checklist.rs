//! What `examples/zlib.rs` and `examples/sqlite.rs` share: run each correct
//! pattern (it must not be reported) and each mistake (it must be reported
//! as the kinds expected), print the reports, and exit non-zero when one
//! expectation failed.

#![allow(dead_code)]

use ffi_check::{capture, LeakCheck, LeakReport, Mode, Violation, ViolationKind};

/// Whether the example can show anything: the checks must be compiled in
/// (debug build, or the `always` feature) and on.
pub fn checks_ready(example: &str) -> bool {
    if !ffi_check::COMPILED_IN {
        println!(
            "{example}: the checks are compiled out of this build (release without the \
             `always` feature); run `cargo run --example {example}` in a debug build"
        );
        return false;
    }
    if ffi_check::mode() == Mode::Off {
        println!("{example}: FFI_CHECK=0 turned the checks off; the example turns them back on");
        ffi_check::set_mode(Mode::Check);
    }
    true
}

/// The running tally of an example.
pub struct Checklist {
    name: &'static str,
    correct: usize,
    mistakes: usize,
    problems: Vec<String>,
}

impl Checklist {
    /// A fresh checklist for the example `name`.
    pub fn new(name: &'static str) -> Checklist {
        Checklist {
            name,
            correct: 0,
            mistakes: 0,
            problems: Vec::new(),
        }
    }

    /// A section heading.
    pub fn section(&self, title: &str) {
        println!("\n==== {title}\n");
    }

    /// Runs a correct pattern: no violation and no leak may come of it.
    pub fn ok<R>(&mut self, what: &str, f: impl FnOnce() -> R) -> R {
        self.correct += 1;
        let scope = LeakCheck::start();
        let (r, violations) = capture(f);
        let leaks = scope.finish();
        if violations.is_empty() && leaks.is_empty() {
            println!("ok: {what}");
        } else {
            println!("NOT OK: {what} was reported:");
            for v in &violations {
                println!("{v}\n");
            }
            if !leaks.is_empty() {
                println!("{leaks}\n");
            }
            self.problems
                .push(format!("correct pattern reported: {what}"));
        }
        r
    }

    /// Makes a mistake inside `capture`, prints its reports, and checks that
    /// they are exactly of the `expected` kinds, each at least once.
    pub fn mistake<R>(
        &mut self,
        what: &str,
        expected: &[ViolationKind],
        f: impl FnOnce() -> R,
    ) -> R {
        println!("\nmistake: {what}\n");
        let (r, violations) = capture(f);
        for v in &violations {
            println!("{v}\n");
        }
        self.expect(what, expected, &violations);
        r
    }

    /// Makes a mistake that leaks, prints the leak report, and checks that
    /// it has a leak at the line of `file` that `f` returns (the line of the
    /// call that allocated).
    pub fn leak(&mut self, what: &str, file: &str, f: impl FnOnce() -> u32) {
        println!("\nmistake: {what}\n");
        let scope = LeakCheck::start();
        let (line, violations) = capture(f);
        let report = scope.finish();
        println!("{report}\n");
        self.mistakes += 1;
        for v in &violations {
            self.problems
                .push(format!("{what}: unexpected {} report", v.kind()));
        }
        if !has_leak_at(&report, file, line) {
            self.problems
                .push(format!("{what}: no leak reported at {file}:{line}"));
        }
    }

    fn expect(&mut self, what: &str, expected: &[ViolationKind], violations: &[Violation]) {
        self.mistakes += 1;
        for v in violations {
            if !expected.contains(&v.kind()) {
                self.problems
                    .push(format!("{what}: unexpected {} report", v.kind()));
            }
        }
        for kind in expected {
            if !violations.iter().any(|v| v.kind() == *kind) {
                self.problems
                    .push(format!("{what}: expected {kind} was not reported"));
            }
        }
    }

    /// Prints the summary; returns the exit code.
    pub fn finish(self) -> i32 {
        println!();
        if self.problems.is_empty() {
            println!(
                "{}: {} correct patterns silent, {} mistakes reported, all as expected",
                self.name, self.correct, self.mistakes
            );
            0
        } else {
            for p in &self.problems {
                eprintln!("{}: FAILED: {p}", self.name);
            }
            1
        }
    }
}

fn has_leak_at(report: &LeakReport, file: &str, line: u32) -> bool {
    report
        .groups()
        .iter()
        .filter_map(|g| g.site())
        .any(|s| s.file() == file && s.line() == line)
}
