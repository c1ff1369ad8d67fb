//! The generator over small hand-written bindings: what it wraps, how, what
//! it skips and why, and its errors. Every generated text is also parsed
//! back as Rust. (That the output compiles and runs is `shapes.rs` and
//! `sqlite.rs`.)

use ffi_check_bindgen::{generate, generate_source, Config, Error, Generated, SkipReason};

fn gen(source: &str) -> Generated {
    let g = generate_source(source, "raw").unwrap_or_else(|e| panic!("{e}"));
    syn::parse_file(&g.code)
        .unwrap_or_else(|e| panic!("generated code does not parse: {e}\n{}", g.code));
    g
}

/// The generated function `name`, from its attributes to its closing brace.
fn function<'a>(code: &'a str, name: &str) -> &'a str {
    let at = code
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no `fn {name}(` in\n{code}"));
    let start = code[..at].rfind("\n\n").map_or(0, |i| i + 2);
    let end = at + code[at..].find("\n}\n").expect("a closing brace") + 2;
    &code[start..end]
}

#[test]
fn a_function_keeps_its_name_signature_and_documentation() {
    let g = gen(r#"
        extern "C" {
            /// Adds two numbers.
            ///
            /// Never fails.
            pub fn add(a: ::std::os::raw::c_int, b: ::std::os::raw::c_int) -> ::std::os::raw::c_int;
        }
    "#);
    let f = function(&g.code, "add");
    assert!(
        f.contains("#[doc = \" Adds two numbers.\"]\n#[doc = \"\"]\n#[doc = \" Never fails.\"]\n"),
        "{f}"
    );
    assert!(f.contains("#[track_caller]\n#[inline]\n"), "{f}");
    assert!(
        f.contains(
            "pub unsafe fn add(a: ::std::os::raw::c_int, b: ::std::os::raw::c_int) -> ::std::os::raw::c_int {"
        ),
        "{f}"
    );
    assert!(
        f.contains("unsafe { ::ffi_check::call!(raw::add(a, b)) }"),
        "{f}"
    );
    assert!(f.contains("// SAFETY: "), "{f}");
    assert_eq!(g.report.wrapped(), ["add"]);
    assert!(g.report.skipped().is_empty());
    assert!(g.report.unchecked().is_empty());
}

#[test]
fn unnamed_parameters_get_names_that_collide_with_none() {
    let g = gen(r#"
        extern "C" {
            pub fn f(_: i32, _: *const u8);
            pub fn g(arg2: i32, _: i32, _: i32);
            pub fn h(x: i32, x: i32);
        }
    "#);
    assert!(
        g.code
            .contains("pub unsafe fn f(arg1: i32, arg2: *const u8) {"),
        "{}",
        g.code
    );
    assert!(g.code.contains("call!(raw::f(arg1, arg2))"));
    assert!(
        g.code
            .contains("pub unsafe fn g(arg2: i32, arg2_: i32, arg3: i32) {"),
        "{}",
        g.code
    );
    assert!(g.code.contains("call!(raw::g(arg2, arg2_, arg3))"));
    assert!(
        g.code.contains("pub unsafe fn h(x: i32, arg2: i32) {"),
        "{}",
        g.code
    );
}

#[test]
fn variadic_functions_and_statics_are_listed_not_wrapped() {
    let g = gen(r#"
        extern "C" {
            pub fn printf(format: *const ::std::os::raw::c_char, ...) -> ::std::os::raw::c_int;
            pub static mut errno_value: ::std::os::raw::c_int;
            pub static VERSION: [u8; 8];
            pub fn puts(s: *const ::std::os::raw::c_char) -> ::std::os::raw::c_int;
        }
    "#);
    assert_eq!(g.report.wrapped(), ["puts"]);
    let skipped: Vec<(&str, &SkipReason)> = g
        .report
        .skipped()
        .iter()
        .map(|s| (s.name.as_str(), &s.reason))
        .collect();
    assert_eq!(
        skipped,
        [
            ("printf", &SkipReason::Variadic),
            ("errno_value", &SkipReason::Static),
            ("VERSION", &SkipReason::Static),
        ]
    );
    let header: String = g
        .code
        .lines()
        .take_while(|l| l.starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        header.contains("Wrapped: 1 functions. Not wrapped: 3 items."),
        "{header}"
    );
    assert!(
        header.contains("// - `printf`: variadic (`call!` takes a fixed list of arguments)"),
        "{header}"
    );
    assert!(
        header.contains("// - `errno_value`: a static, not a function"),
        "{header}"
    );
    assert!(!g.code.contains("fn printf("));
}

#[test]
fn callbacks_numbers_and_pointers_go_to_call_as_they_are() {
    let g = gen(r#"
        pub type visit_fn = ::std::option::Option<
            unsafe extern "C" fn(user: *mut ::std::os::raw::c_void, item: ::std::os::raw::c_int) -> ::std::os::raw::c_int,
        >;
        pub type size = usize;
        pub type len_t = size;
        extern "C" {
            pub fn each(
                items: *const ::std::os::raw::c_int,
                n: len_t,
                cb: visit_fn,
                inline_cb: Option<extern "C" fn(i32)>,
                plain_cb: unsafe extern "C" fn(*mut u8) -> i32,
                user: *mut ::std::os::raw::c_void,
                scale: f64,
                flag: bool,
                byte: libc::c_uchar,
                count: libc::size_t,
            ) -> ::std::os::raw::c_int;
        }
    "#);
    assert!(
        g.report.unchecked().is_empty(),
        "{:?}",
        g.report.unchecked()
    );
    assert!(
        g.code.contains(
            "call!(raw::each(items, n, cb, inline_cb, plain_cb, user, scale, flag, byte, count))"
        ),
        "{}",
        g.code
    );
    // One parameter a line when the signature is long.
    assert!(g.code.contains(
        "pub unsafe fn each(\n    items: *const ::std::os::raw::c_int,\n    n: len_t,\n"
    ));
}

#[test]
fn what_call_cannot_take_goes_through_unchecked_and_says_why() {
    let g = gen(r#"
        #[repr(C)]
        #[derive(Copy, Clone)]
        pub struct point { pub x: i32, pub y: i32 }
        #[repr(C)]
        #[derive(Copy, Clone)]
        pub union word { pub n: u32, pub b: [u8; 4] }
        pub type point_t = point;
        extern "C" {
            pub fn norm(p: point_t, q: *const point) -> i32;
            pub fn word_of(w: word) -> u32;
            pub fn by_ref(p: &point) -> i32;
            pub fn wide(f: extern "C" fn(i32, i32, i32, i32, i32, i32, i32)) -> i32;
            pub fn elsewhere(t: other_crate::Handle, u: Unknown) -> i32;
        }
    "#);
    let norm = function(&g.code, "norm");
    assert!(
        norm.contains("call!(raw::norm(::ffi_check::unchecked(p), q))"),
        "{norm}"
    );
    assert!(
        norm.contains("// `p` goes through `unchecked`: `point_t`, an alias: `point` is a struct passed by value"),
        "{norm}"
    );
    let why: Vec<String> = g
        .report
        .unchecked()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(why.len(), 6, "{why:#?}");
    assert!(
        why[1].starts_with("`word_of(w)`: `word` is a union passed by value"),
        "{why:#?}"
    );
    assert!(
        why[2].starts_with("`by_ref(p)`: `&point` is a reference"),
        "{why:#?}"
    );
    assert!(why[3].starts_with(
        "`wide(f)`: `extern \"C\" fn(i32, i32, i32, i32, i32, i32, i32)` is a function pointer"
    ));
    assert!(why[4]
        .starts_with("`elsewhere(t)`: `other_crate::Handle` is not defined in the bindings file"));
    assert!(why[5].starts_with("`elsewhere(u)`: `Unknown` is not defined"));
    assert!(g
        .code
        .contains("// Passed through `::ffi_check::unchecked`"));

    // A type the caller vouches for is passed as it is.
    let g = Config::new("raw")
        .plain_type("other_crate::Handle")
        .plain_type("Unknown")
        .generate_source(
            "extern \"C\" { pub fn elsewhere(t: other_crate::Handle, u: Unknown) -> i32; }",
            "b.rs",
        )
        .unwrap();
    assert!(g.code.contains("call!(raw::elsewhere(t, u))"), "{}", g.code);
}

#[test]
fn imported_names_are_written_as_the_paths_they_import() {
    let g = gen(r#"
        use std::os::raw::{c_char, c_int as int};
        use super::Local;
        extern "C" {
            pub fn f(s: *const c_char, n: int, l: *mut Local) -> int;
        }
    "#);
    assert!(
        g.code.contains(
            "pub unsafe fn f(\n    s: *const std::os::raw::c_char,\n    n: std::os::raw::c_int,\n    l: *mut Local,\n) -> std::os::raw::c_int {"
        ),
        "{}",
        g.code
    );
    assert!(g.report.unchecked().is_empty());
}

#[test]
fn attributes_link_cfg_deprecated_and_unsafe_extern() {
    let g = gen(r#"
        #[link(name = "z")]
        #[cfg(unix)]
        unsafe extern "C" {
            #[link_name = "real_name"]
            #[deprecated(note = "use g")]
            pub fn f() -> i32;
            #[cfg(target_os = "linux")]
            pub fn os() -> i32;
            #[cfg(not(target_os = "linux"))]
            pub fn os() -> i32;
            pub fn os() -> i32;
            pub fn os() -> i32;
            pub safe fn abs(x: i32) -> i32;
            pub unsafe fn free(p: *mut u8);
        }
    "#);
    let f = function(&g.code, "f");
    assert!(
        f.starts_with("#[cfg(unix)]\n#[deprecated(note = \"use g\")]\n#[track_caller]"),
        "{f}"
    );
    assert!(!f.contains("link_name") && !f.contains("link("), "{f}");
    assert_eq!(g.code.matches("fn os(").count(), 3, "{}", g.code);
    assert!(g
        .code
        .contains("#[cfg(unix)]\n#[cfg(not(target_os = \"linux\"))]\n"));
    assert_eq!(
        g.report
            .skipped()
            .iter()
            .map(|s| &s.reason)
            .collect::<Vec<_>>(),
        [&SkipReason::Duplicate]
    );
    let abs = function(&g.code, "abs");
    assert!(
        abs.contains("pub fn abs(x: i32) -> i32 {\n    ::ffi_check::call!(raw::abs(x))\n}"),
        "{abs}"
    );
    assert!(
        !abs.contains("unsafe fn") && !abs.contains("unsafe {"),
        "{abs}"
    );
    let free = function(&g.code, "free");
    assert!(free.contains("pub unsafe fn free(p: *mut u8) {"), "{free}");
}

#[test]
fn raw_path_and_ffi_check_path_are_used_as_given() {
    let g = Config::new("crate::sys::raw")
        .ffi_check_path("::checker")
        .generate_source(
            "extern \"C\" { fn private(p: *mut u8, s: S); pub(crate) fn mine(); } pub struct S;",
            "x.rs",
        )
        .unwrap();
    assert!(
        g.code.contains("\nunsafe fn private(p: *mut u8, s: S) {"),
        "{}",
        g.code
    );
    assert!(g
        .code
        .contains("::checker::call!(crate::sys::raw::private(p, ::checker::unchecked(s)))"));
    assert!(g.code.contains("pub(crate) unsafe fn mine() {"));
}

#[test]
fn extern_blocks_of_nested_modules_are_listed() {
    let g = gen(r#"
        extern "C" { pub fn top(); }
        pub mod root { pub mod inner { extern "C" { pub fn deep(); } } }
        pub fn with_body() { extern "C" { fn local(); } }
    "#);
    assert_eq!(g.report.wrapped(), ["top"]);
    assert_eq!(g.report.skipped().len(), 1);
    assert_eq!(
        g.report.skipped()[0].reason,
        SkipReason::NestedModule("root::inner".into())
    );
    assert!(g
        .code
        .contains("// - `deep`: in an extern block of module `root::inner`"));
}

#[test]
fn errors_say_what_is_wrong() {
    let e = generate_source("extern \"C\" {\n    pub fn f(x: );\n}\n", "raw").unwrap_err();
    assert!(matches!(e, Error::Parse { line: 2, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("ffi-check-bindgen: bindings.rs:2:"),
        "{msg}"
    );
    assert!(msg.contains("does not parse as Rust"), "{msg}");
    let e = generate_source("extern \"C\" {\n    pub fn f(;\n}\n", "raw").unwrap_err();
    assert!(e.to_string().contains("an unbalanced delimiter"), "{e}");

    let e = generate_source("pub struct S;", "raw").unwrap_err();
    assert!(matches!(e, Error::NoExternBlock { nested: 0, .. }));
    assert_eq!(
        e.to_string(),
        "ffi-check-bindgen: bindings.rs has no `extern` block, so no function to wrap (is it the bindings file?)"
    );
    let e = generate_source("mod m { extern \"C\" { fn f(); } }", "raw").unwrap_err();
    assert!(matches!(e, Error::NoExternBlock { nested: 1, .. }));
    assert!(e.to_string().contains("1 inside modules"), "{e}");

    for bad in ["::libsqlite3_sys", "", "a::", "a b", "a::_::b", "1x"] {
        let e = generate_source("extern \"C\" { fn f(); }", bad).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Path {
                    what: "raw path",
                    ..
                }
            ),
            "{bad:?}: {e:?}"
        );
    }
    let e = generate_source("extern \"C\" { fn f(); }", "::libsqlite3_sys").unwrap_err();
    assert!(
        e.to_string()
            .contains("starts with `::`, which `call!` does not take"),
        "{e}"
    );
    for good in [
        "libsqlite3_sys",
        "crate::ffi",
        "super::raw",
        "self::raw",
        "r#type",
    ] {
        assert!(
            generate_source("extern \"C\" { fn f(); }", good).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn files_are_read_and_written_and_their_errors_are_values() {
    let dir = std::env::temp_dir().join(format!("ffi-check-bindgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("bindings.rs");
    let output = dir.join("checked.rs");
    std::fs::write(&input, "extern \"C\" { pub fn f(x: i32) -> i32; }").unwrap();
    let report = generate(&input, "raw", &output).unwrap();
    assert_eq!(report.wrapped(), ["f"]);
    assert_eq!(
        report.to_string(),
        "1 functions wrapped, 0 items skipped, 0 arguments unchecked"
    );
    let written = std::fs::read_to_string(&output).unwrap();
    assert!(written.starts_with("// Checked bindings of `bindings.rs`"));
    assert!(written.contains("pub unsafe fn f(x: i32) -> i32 {"));

    let missing = dir.join("missing.rs");
    let e = generate(&missing, "raw", &output).unwrap_err();
    assert!(matches!(e, Error::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("ffi-check-bindgen: cannot read the bindings file "),
        "{e}"
    );
    assert!(std::error::Error::source(&e).is_some());

    let e = generate(&input, "raw", &dir.join("no-such-dir").join("out.rs")).unwrap_err();
    assert!(matches!(e, Error::Write { .. }), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
