//! # ffi-check-bindgen: checked bindings, generated
//!
//! Reads a Rust bindings file — bindgen's output, or hand-written
//! declarations — and writes a Rust file with, for each non-variadic function
//! of its `extern` blocks, a function of the same name and signature that
//! makes the call through [`ffi_check::call!`]:
//!
//! ```text
//! #[track_caller]
//! #[inline]
//! pub unsafe fn sqlite3_close(arg1: *mut sqlite3) -> ::std::os::raw::c_int {
//!     unsafe { ::ffi_check::call!(libsqlite3_sys::sqlite3_close(arg1)) }
//! }
//! ```
//!
//! A `-sys` crate includes that file behind a cargo feature in place of its
//! raw functions, and the code that calls them is checked with no edit at
//! its call sites: each report names the line that called the function
//! (`#[track_caller]`), not the generated wrapper.
//!
//! ## In a build script
//!
//! ```no_run
//! // build.rs of a -sys crate, with `ffi-check-bindgen` an optional
//! // build-dependency turned on by the crate's `ffi-check` feature.
//! let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
//! # #[cfg(any())]
//! #[cfg(feature = "ffi-check")]
//! {
//!     let report = ffi_check_bindgen::generate(
//!         "src/bindings.rs".as_ref(), // the pre-generated (or bindgen's) file
//!         "bindings",                 // where lib.rs declares the raw functions
//!         &out.join("checked.rs"),
//!     )
//!     .unwrap_or_else(|e| panic!("{e}"));
//!     for skipped in report.skipped() {
//!         println!("cargo:warning=not checked: {skipped}");
//!     }
//! }
//! # let _ = out;
//! ```
//!
//! and in `lib.rs`, where the wrappers, defined at the crate root, shadow the
//! raw functions the glob re-exports:
//!
//! ```text
//! mod bindings { include!("bindings.rs"); }
//! pub use bindings::*;
//! #[cfg(feature = "ffi-check")]
//! include!(concat!(env!("OUT_DIR"), "/checked.rs"));
//! ```
//!
//! The generated file names the types of the signatures as the bindings
//! file does, so it goes where those names are in scope.
//!
//! ## What goes through `call!`, and what cannot
//!
//! Raw pointers, integers, floats, `bool`, `Option` of a function pointer
//! (bindgen's callbacks) and `extern "C"` function pointers of up to six
//! parameters are arguments `call!` checks or takes as they are. Anything
//! else — a struct, union or enum by value, a reference, an array, a type
//! the bindings file does not define — goes through
//! [`ffi_check::unchecked`], and the generated file says why next to it and
//! in its opening comment. Type aliases of the file (`pub type sqlite3_int64
//! = sqlite_int64;`) and its `use` items are followed to what they name.
//!
//! Variadic functions (`call!` takes a fixed argument list), statics,
//! foreign types, and the extern blocks of nested modules are not wrapped;
//! the opening comment lists them, and so does [`Report::skipped`].
//!
//! [`ffi_check::call!`]: https://docs.rs/ffi-check/latest/ffi_check/macro.call.html
//! [`ffi_check::unchecked`]: https://docs.rs/ffi-check/latest/ffi_check/fn.unchecked.html

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod classify;
mod collect;
mod emit;
mod tokens;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Generates the checked wrappers of the bindings file `bindings_rs` and
/// writes them to `out` (only when its contents change, so that an
/// unchanged file does not rebuild what includes it). `raw_path` is where
/// the raw functions are, as the generated code will name them: a crate
/// (`libsqlite3_sys`) or a module (`bindings`, `crate::ffi`), identifiers
/// joined by `::` with no leading `::`, since `call!` takes such a path.
///
/// The defaults of [`Config`] apply; use it to change them.
pub fn generate(bindings_rs: &Path, raw_path: &str, out: &Path) -> Result<Report, Error> {
    Config::new(raw_path).generate(bindings_rs, out)
}

/// Generates the checked wrappers of the bindings source `source` and
/// returns them, with the report, without touching a file.
pub fn generate_source(source: &str, raw_path: &str) -> Result<Generated, Error> {
    Config::new(raw_path).generate_source(source, "bindings.rs")
}

/// What the generator is told beyond the bindings file.
#[derive(Clone, Debug)]
pub struct Config {
    raw_path: String,
    ffi_check: String,
    plain_types: Vec<String>,
}

impl Config {
    /// The defaults, with the raw functions at `raw_path` (see
    /// [`generate`]).
    pub fn new(raw_path: &str) -> Config {
        Config {
            raw_path: raw_path.to_owned(),
            ffi_check: "::ffi_check".to_owned(),
            plain_types: Vec::new(),
        }
    }

    /// The path the generated code names ffi-check by: `::ffi_check` unless
    /// the crate that includes the file renamed the dependency.
    pub fn ffi_check_path(mut self, path: &str) -> Config {
        path.clone_into(&mut self.ffi_check);
        self
    }

    /// A type that the bindings file uses but does not define, which
    /// `call!` takes as it is (an integer type of another crate, say):
    /// arguments of that type are then passed to `call!` rather than through
    /// `unchecked`. Named as the bindings file writes it (`size_t`,
    /// `libc::off_t`).
    ///
    /// Integer types of `std::os::raw`, `core::ffi` and `libc`
    /// (`c_int`, `size_t`, `uint32_t`, …) are known without this.
    pub fn plain_type(mut self, name: &str) -> Config {
        self.plain_types.push(name.split_whitespace().collect());
        self
    }

    /// As [`generate`], with this configuration.
    pub fn generate(&self, bindings_rs: &Path, out: &Path) -> Result<Report, Error> {
        let source = std::fs::read_to_string(bindings_rs).map_err(|source| Error::Read {
            path: bindings_rs.to_owned(),
            source,
        })?;
        let name = bindings_rs.file_name().map_or_else(
            || bindings_rs.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let generated =
            self.generate_source_named(&source, &name, &bindings_rs.display().to_string())?;
        let unchanged = std::fs::read(out).is_ok_and(|old| old == generated.code.as_bytes());
        if !unchanged {
            std::fs::write(out, &generated.code).map_err(|source| Error::Write {
                path: out.to_owned(),
                source,
            })?;
        }
        Ok(generated.report)
    }

    /// As [`generate_source`], with this configuration. `name` is the
    /// bindings file's name, for the generated file's opening comment and
    /// for errors.
    pub fn generate_source(&self, source: &str, name: &str) -> Result<Generated, Error> {
        self.generate_source_named(source, name, name)
    }

    fn generate_source_named(
        &self,
        source: &str,
        name: &str,
        shown: &str,
    ) -> Result<Generated, Error> {
        check_path(&self.raw_path, "raw path")?;
        check_path(self.ffi_check.trim_start_matches("::"), "ffi-check path")?;
        let file = syn::parse_file(source).map_err(|e| {
            let start = e.span().start();
            Error::Parse {
                file: shown.to_owned(),
                line: start.line,
                column: start.column + 1,
                message: match e.to_string() {
                    // What syn says when the lexer stops.
                    m if m == "cannot parse string into token stream" => {
                        "a character Rust has no token for, or an unbalanced delimiter (the position is where the lexer stopped)".to_owned()
                    }
                    m => m,
                },
            }
        })?;
        let bindings = collect::collect(&file);
        if bindings.blocks == 0 {
            return Err(Error::NoExternBlock {
                file: shown.to_owned(),
                nested: bindings.nested_blocks,
            });
        }
        Ok(emit::emit(&bindings, self, name))
    }
}

/// `path` is identifiers joined by `::` (keywords like `crate` and `super`
/// included, as `call!` matches them), with no leading `::`.
fn check_path(path: &str, what: &'static str) -> Result<(), Error> {
    let bad = |reason: &'static str| Error::Path {
        what,
        path: path.to_owned(),
        reason,
    };
    if path.trim().is_empty() {
        return Err(bad("is empty"));
    }
    if path.trim_start().starts_with("::") {
        return Err(bad(
            "starts with `::`, which `call!` does not take: name the crate without it (`libsqlite3_sys`) or the module from `crate`",
        ));
    }
    for segment in path.split("::") {
        let segment = segment.trim();
        let ident = segment.strip_prefix("r#").unwrap_or(segment);
        let mut chars = ident.chars();
        let first_ok = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic());
        if !first_ok || ident == "_" || !chars.all(|c| c == '_' || c.is_alphanumeric()) {
            return Err(bad("is not identifiers joined by `::`"));
        }
    }
    Ok(())
}

/// The generated file and what went into it.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The Rust source of the checked wrappers.
    pub code: String,
    /// What was wrapped, skipped and passed unchecked.
    pub report: Report,
}

/// What the generator did with a bindings file.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub(crate) wrapped: Vec<String>,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) unchecked: Vec<UncheckedArg>,
}

impl Report {
    /// The functions wrapped, in the order of the bindings file.
    pub fn wrapped(&self) -> &[String] {
        &self.wrapped
    }
    /// The foreign items not wrapped, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
    /// The arguments of wrapped functions that go through
    /// `ffi_check::unchecked`, and why.
    pub fn unchecked(&self) -> &[UncheckedArg] {
        &self.unchecked
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} functions wrapped, {} items skipped, {} arguments unchecked",
            self.wrapped.len(),
            self.skipped.len(),
            self.unchecked.len()
        )
    }
}

/// A foreign item that was not wrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its name.
    pub name: String,
    /// Why it was not wrapped.
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.name, self.reason)
    }
}

/// Why a foreign item was not wrapped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A variadic function: `call!` takes a fixed list of arguments.
    Variadic,
    /// A static, not a function.
    Static,
    /// A foreign type (`type Opaque;`), not a function.
    ForeignType,
    /// A macro invocation inside the extern block.
    Macro,
    /// An item of the extern block that the generator cannot read.
    Unreadable,
    /// A function of an extern block inside a module of the bindings file
    /// (named here): the raw path names one place only.
    NestedModule(String),
    /// A second declaration of a name already wrapped (under the same
    /// `cfg`).
    Duplicate,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Variadic => f.write_str("variadic (`call!` takes a fixed list of arguments)"),
            SkipReason::Static => f.write_str("a static, not a function"),
            SkipReason::ForeignType => f.write_str("a foreign type, not a function"),
            SkipReason::Macro => f.write_str("a macro invocation in the extern block"),
            SkipReason::Unreadable => f.write_str("an item of the extern block the generator cannot read"),
            SkipReason::NestedModule(m) => write!(
                f,
                "in an extern block of module `{m}` (generate for that module with its own raw path)"
            ),
            SkipReason::Duplicate => f.write_str("declared again under the same `cfg`; wrapped once"),
        }
    }
}

/// An argument of a wrapped function that goes through
/// `ffi_check::unchecked`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UncheckedArg {
    /// The function.
    pub function: String,
    /// The parameter's name in the wrapper.
    pub param: String,
    /// Its type, as written.
    pub ty: String,
    /// Why `call!` cannot take it as it is.
    pub reason: String,
}

impl fmt::Display for UncheckedArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}({})`: {}", self.function, self.param, self.reason)
    }
}

/// Why the generator could not do its work.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The bindings file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The generated file could not be written.
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The bindings file is not Rust that `syn` parses.
    Parse {
        /// The file.
        file: String,
        /// The line of the error (1-based).
        line: usize,
        /// Its column (1-based).
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The bindings file has no `extern` block at its top level.
    NoExternBlock {
        /// The file.
        file: String,
        /// Extern blocks found inside modules of the file, not wrapped.
        nested: usize,
    },
    /// The raw path or the ffi-check path is not a path `call!` takes.
    Path {
        /// Which path.
        what: &'static str,
        /// The path given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read { path, source } => write!(
                f,
                "ffi-check-bindgen: cannot read the bindings file {}: {source}",
                path.display()
            ),
            Error::Write { path, source } => write!(
                f,
                "ffi-check-bindgen: cannot write the checked bindings to {}: {source}",
                path.display()
            ),
            Error::Parse {
                file,
                line,
                column,
                message,
            } => write!(
                f,
                "ffi-check-bindgen: {file}:{line}:{column}: the bindings file does not parse as Rust: {message}"
            ),
            Error::NoExternBlock { file, nested: 0 } => write!(
                f,
                "ffi-check-bindgen: {file} has no `extern` block, so no function to wrap (is it the bindings file?)"
            ),
            Error::NoExternBlock { file, nested } => write!(
                f,
                "ffi-check-bindgen: {file} has no `extern` block at its top level ({nested} inside modules, which are not wrapped: generate from the module's own file with its raw path)"
            ),
            Error::Path { what, path, reason } => {
                write!(f, "ffi-check-bindgen: the {what} `{path}` {reason}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read { source, .. } | Error::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}
