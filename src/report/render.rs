//! How a report reads: the text of a region, a site and a backtrace, and
//! the JSON string escaping of the log. Everything here runs only once a
//! rule is broken.

use std::fmt::Write as _;

use backtrace::Backtrace;

use super::ReportRegion;
use crate::registry::{RegionKind, RegionState};
use crate::site::Site;
use crate::stackdepot::StackId;

pub(super) fn site_plain(s: Site) -> String {
    match s.column() {
        Some(c) => format!("{}:{}:{}", s.file(), s.line(), c),
        None => format!("{}:{}", s.file(), s.line()),
    }
}

pub(super) fn render_region(out: &mut String, r: &ReportRegion) {
    let d = &r.detail;
    let _ = write!(out, "  {}: {:#x}", r.role, d.start);
    let _ = write!(out, " ({} bytes, {} memory", d.size, d.kind);
    if let Some(t) = d.type_name {
        let _ = write!(out, " holding `{t}`");
    }
    let _ = write!(out, ", {}", d.state);
    if d.kind == RegionKind::Managed && d.state == RegionState::Live {
        if d.pins == 0 {
            out.push_str(", unpinned");
        } else {
            let _ = write!(out, ", pinned x{}", d.pins);
        }
    }
    if d.retains > 0 {
        let _ = write!(out, ", retained x{} by C", d.retains);
    }
    if d.kind == RegionKind::C {
        let _ = write!(out, ", from `{}`", crate::family::family_name(d.family));
    }
    out.push_str(")\n");
    let events: [(&str, Option<Site>, Option<StackId>); 4] = [
        ("allocated", d.alloc_site, d.alloc_trace),
        (
            if d.pins == 0 {
                "last pinned (unpinned since)"
            } else {
                "pinned"
            },
            d.pin_site,
            d.pin_trace,
        ),
        ("retained by C", d.retain_site, d.retain_trace),
        ("first freed", d.free_site, d.free_trace),
    ];
    for (what, site, trace) in events {
        if site.is_none() && trace.is_none() {
            continue;
        }
        let _ = write!(out, "      {what} at ");
        match site {
            Some(s) => {
                let _ = writeln!(out, "{s}");
            }
            None => out.push_str("(unknown site)\n"),
        }
        if let Some(id) = trace {
            render_stack(out, id, "          ");
        }
    }
    if let Some(reason) = &d.leak_reason {
        let _ = writeln!(out, "      intended leak: {reason}");
    }
}

/// Resolves (only now, when printing) and writes the frames that belong to
/// the user's code: the checker's own frames and the runtime's are skipped.
pub(crate) fn render_backtrace(out: &mut String, bt: &Backtrace, indent: &str) {
    let mut bt = bt.clone();
    crate::bookkeeping::resolve_backtrace(&mut bt);
    let symbols = bt.frames().iter().flat_map(|frame| {
        frame.symbols().iter().map(|sym| {
            (
                sym.name().map(|n| format!("{n:#}")),
                sym.filename().map(std::path::Path::to_path_buf),
                sym.lineno(),
            )
        })
    });
    render_symbols(out, symbols, indent);
}

/// Resolves (only now, when printing) a stack stored in the depot and
/// writes it as [`render_backtrace`] does.
pub(crate) fn render_stack(out: &mut String, id: StackId, indent: &str) {
    let mut symbols = Vec::new();
    for ip in crate::stackdepot::frames(id) {
        crate::bookkeeping::resolve_address(ip, |name, file, line| {
            symbols.push((name, file, line))
        });
    }
    render_symbols(out, symbols.into_iter(), indent);
}

/// One of the C allocator's entry points that the `interpose` feature
/// defines (`malloc`, `free`, …): unmangled names, told from glibc's by the
/// checker's own source file.
fn interposed_entry(name: &str, file: Option<&std::path::Path>) -> bool {
    const ENTRIES: [&str; 11] = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "malloc_usable_size",
    ];
    ENTRIES.contains(&name)
        && file
            .is_some_and(|f| f.ends_with("src/interpose/mod.rs") || f.ends_with("src/interpose.rs"))
}

/// Writes resolved frames (function name, file, line), innermost first,
/// skipping the checker's and the runtime's.
fn render_symbols(
    out: &mut String,
    symbols: impl Iterator<Item = (Option<String>, Option<std::path::PathBuf>, Option<u32>)>,
    indent: &str,
) {
    // Paths under the working directory print relative to it, as the sites
    // do; others (the standard library, dependencies) print in full.
    let cwd = std::env::current_dir().ok();
    let mut shown = 0;
    let mut started = false;
    for (name, file, line) in symbols {
        {
            let name = name.unwrap_or_else(|| "<unknown>".into());
            if !started {
                // Everything up to the first frame of the user's code: the
                // capture machinery, the checker (Rust and C API), and the
                // std/core adapters they call through.
                if name.contains("backtrace::")
                    || name.contains("ffi_check::")
                    // The C API's symbols (`ffi_check_free_at`), not
                    // Rust crates whose name starts the same way.
                    || (name.starts_with("ffi_check_") && !name.contains("::"))
                    || name.contains("catch_unwind")
                    || name.contains("__rust_try")
                    || name.contains("__rust_dealloc")
                    || name.contains("__rust_realloc")
                    || name.contains("__rust_alloc")
                    || name.contains("__rustc::")
                    || name.starts_with("core::")
                    || name.starts_with("<core::")
                    || name.starts_with("std::")
                    || name.starts_with("<std::")
                    || name.starts_with("alloc::")
                    || name.starts_with("<alloc::")
                    || interposed_entry(&name, file.as_deref())
                {
                    continue;
                }
                started = true;
            }
            // Further down, the checker's own frames (`capture`, a callback
            // wrapper) and closure-call adapters say nothing to the reader.
            if name.contains("core::ops::function")
                || name.contains("ffi_check::")
                || name.contains("catch_unwind")
                || name.contains("__rust_try")
            {
                continue;
            }
            if name.starts_with("std::rt::lang_start")
                || name.starts_with("test::run_test")
                || name.starts_with("test::__rust_begin_short_backtrace")
                || name.starts_with("std::sys::backtrace::__rust_begin_short_backtrace")
                || name.starts_with("std::sys_common::backtrace::__rust_begin_short_backtrace")
            {
                return;
            }
            if shown >= 12 {
                let _ = writeln!(out, "{indent}...");
                return;
            }
            let _ = write!(out, "{indent}{shown}: {name}");
            if let (Some(file), Some(line)) = (file.as_deref(), line) {
                let file = cwd
                    .as_deref()
                    .and_then(|cwd| file.strip_prefix(cwd).ok())
                    .unwrap_or(file);
                let _ = write!(out, "\n{indent}       at {}:{line}", file.display());
            }
            out.push('\n');
            shown += 1;
        }
    }
}

pub(super) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn current_thread_name() -> String {
    // `thread::current` can fail while a thread's locals are being torn
    // down; a report must still be made then.
    std::panic::catch_unwind(|| {
        let t = std::thread::current();
        match t.name() {
            Some(n) => n.to_owned(),
            None => format!("{:?}", t.id()),
        }
    })
    .unwrap_or_else(|_| "<exiting thread>".to_owned())
}
