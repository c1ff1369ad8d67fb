//! Which argument types `ffi_check::call!` takes as they are (its `CArg`
//! implementations), decided from the syntax of the bindings file.
//!
//! `call!` converts each argument with `CArg<P> for P`, `P` the
//! parameter's type, which ffi-check implements for integers, floats,
//! `bool` and `()`, raw pointers (checked: rules C2 and P1), `Option<F>` for
//! any `F: Copy` (bindgen's nullable callbacks), and `extern "C"` function
//! pointers of up to six parameters. Anything else would not compile as a
//! plain argument and goes through `unchecked`. When in doubt (a type the
//! file does not define) the answer is `unchecked`: the wrapper must
//! compile.

use syn::{GenericArgument, PathArguments, Type};

use crate::collect::{Bindings, TypeDef};
use crate::tokens::render;

/// How an argument goes to `call!`.
pub(crate) enum Pass {
    /// As it is: `call!` checks it (pointers) or takes it (numbers).
    Plain,
    /// Through `ffi_check::unchecked`, for this reason.
    Unchecked(String),
}

pub(crate) struct Cx<'a> {
    pub bindings: &'a Bindings,
    pub plain_types: &'a [String],
}

/// Rust's numeric types, `bool`.
const PRIMITIVES: &[&str] = &[
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32",
    "f64", "bool",
];

/// The C number types of `std::os::raw`, `core::ffi`, `std::ffi` and `libc`:
/// aliases of primitives.
const C_NUMBERS: &[&str] = &[
    "c_char",
    "c_schar",
    "c_uchar",
    "c_short",
    "c_ushort",
    "c_int",
    "c_uint",
    "c_long",
    "c_ulong",
    "c_longlong",
    "c_ulonglong",
    "c_float",
    "c_double",
];

/// More number aliases of `libc` (Linux).
const LIBC_NUMBERS: &[&str] = &[
    "size_t",
    "ssize_t",
    "ptrdiff_t",
    "intptr_t",
    "uintptr_t",
    "int8_t",
    "int16_t",
    "int32_t",
    "int64_t",
    "uint8_t",
    "uint16_t",
    "uint32_t",
    "uint64_t",
    "off_t",
    "off64_t",
    "time_t",
    "pid_t",
    "uid_t",
    "gid_t",
    "mode_t",
    "socklen_t",
    "clock_t",
    "dev_t",
    "ino_t",
    "wchar_t",
];

/// Modules whose `c_*` names are the C number types.
const C_NUMBER_MODULES: &[&[&str]] = &[
    &["std", "os", "raw"],
    &["core", "os", "raw"],
    &["std", "ffi"],
    &["core", "ffi"],
    &["libc"],
];

const OPTION_PATHS: &[&[&str]] = &[
    &["Option"],
    &["std", "option", "Option"],
    &["core", "option", "Option"],
];

/// Deep enough for any chain of aliases; a cycle ends here.
const MAX_DEPTH: usize = 32;

pub(crate) fn classify(ty: &Type, cx: &Cx<'_>) -> Pass {
    classify_at(ty, cx, 0)
}

fn classify_at(ty: &Type, cx: &Cx<'_>, depth: usize) -> Pass {
    if depth > MAX_DEPTH {
        return unchecked(ty, "is an alias the generator could not follow to its end");
    }
    match ty {
        Type::Ptr(_) => Pass::Plain,
        Type::Paren(p) => classify_at(&p.elem, cx, depth + 1),
        Type::Group(g) => classify_at(&g.elem, cx, depth + 1),
        Type::Tuple(t) if t.elems.is_empty() => Pass::Plain,
        Type::BareFn(f) => {
            if fn_pointer_takes(f) {
                Pass::Plain
            } else {
                unchecked(
                    ty,
                    "is a function pointer `call!` has no conversion for (it takes `extern \"C\"` ones of up to six parameters, without lifetimes)",
                )
            }
        }
        Type::Path(p) if p.qself.is_none() => classify_path(ty, &p.path, cx, depth),
        Type::Reference(_) => unchecked(
            ty,
            "is a reference: `call!` takes raw pointers and ffi-check's wrappers, so what it points to is not checked",
        ),
        Type::Array(_) => unchecked(ty, "is an array passed by value"),
        _ => unchecked(ty, "is not a type `call!` is known to take"),
    }
}

fn classify_path(ty: &Type, path: &syn::Path, cx: &Cx<'_>, depth: usize) -> Pass {
    let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    let last = path.segments.last().expect("a path has a segment");
    if !matches!(last.arguments, PathArguments::None) {
        if path_is(&segments, OPTION_PATHS) {
            if let PathArguments::AngleBracketed(args) = &last.arguments {
                if let [GenericArgument::Type(inner)] = args.args.iter().collect::<Vec<_>>()[..] {
                    if is_copy(inner, cx, depth + 1) {
                        return Pass::Plain;
                    }
                }
            }
            return unchecked(
                ty,
                "is an `Option` of a type the generator does not know to be `Copy` (`call!` takes `Option<F>` for `F: Copy`)",
            );
        }
        return unchecked(ty, "is a generic type `call!` has no conversion for");
    }
    if path.leading_colon.is_none() && segments.len() == 1 {
        let name = &segments[0];
        if let Some(def) = cx.bindings.types.get(name) {
            return match def {
                TypeDef::Alias(target) => match classify_at(target, cx, depth + 1) {
                    Pass::Unchecked(why) if depth == 0 => {
                        Pass::Unchecked(format!("`{name}`, an alias: {why}"))
                    }
                    pass => pass,
                },
                TypeDef::Struct => unchecked(
                    ty,
                    "is a struct passed by value, which `call!` has no check for",
                ),
                TypeDef::Union => unchecked(
                    ty,
                    "is a union passed by value, which `call!` has no check for",
                ),
                TypeDef::Enum => unchecked(
                    ty,
                    "is an enum passed by value, which `call!` has no check for",
                ),
                TypeDef::Generic => {
                    unchecked(ty, "is a generic type `call!` has no conversion for")
                }
            };
        }
        if PRIMITIVES.contains(&name.as_str()) {
            return Pass::Plain;
        }
        if let Some(full) = cx.bindings.uses.get(name) {
            return classify_foreign(ty, full, cx);
        }
    }
    classify_foreign(ty, &segments, cx)
}

/// A path to a type the bindings file does not define.
fn classify_foreign(ty: &Type, segments: &[String], cx: &Cx<'_>) -> Pass {
    let segments: Vec<&str> = segments
        .iter()
        .map(String::as_str)
        .skip_while(|s| s.is_empty())
        .collect();
    let written = render(ty).split_whitespace().collect::<String>();
    let joined = segments.join("::");
    if cx
        .plain_types
        .iter()
        .any(|p| *p == written || *p == joined || p.trim_start_matches("::") == joined)
    {
        return Pass::Plain;
    }
    if let Some((last, module)) = segments.split_last() {
        if module.is_empty() && PRIMITIVES.contains(last) {
            return Pass::Plain;
        }
        if C_NUMBERS.contains(last) && C_NUMBER_MODULES.contains(&module) {
            return Pass::Plain;
        }
        if LIBC_NUMBERS.contains(last) && module == ["libc"] {
            return Pass::Plain;
        }
        if module == ["std", "primitive"] || module == ["core", "primitive"] {
            return Pass::Plain;
        }
    }
    unchecked(
        ty,
        "is not defined in the bindings file, so the generator cannot tell whether `call!` takes it (`Config::plain_type` says it does)",
    )
}

/// Whether `Option<ty>` gets `call!`'s `Option<F: Copy>` conversion:
/// function pointers, raw pointers, shared references, `NonNull`, numbers,
/// and aliases of those.
fn is_copy(ty: &Type, cx: &Cx<'_>, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match ty {
        Type::BareFn(_) | Type::Ptr(_) => true,
        Type::Reference(r) => r.mutability.is_none(),
        Type::Paren(p) => is_copy(&p.elem, cx, depth + 1),
        Type::Group(g) => is_copy(&g.elem, cx, depth + 1),
        Type::Path(p) if p.qself.is_none() => {
            let segments: Vec<String> = p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            let last = &segments[segments.len() - 1];
            if last == "NonNull" {
                return true;
            }
            if p.path.leading_colon.is_none() && segments.len() == 1 {
                if let Some(TypeDef::Alias(target)) = cx.bindings.types.get(last) {
                    return is_copy(target, cx, depth + 1);
                }
            }
            matches!(classify_at(ty, cx, depth + 1), Pass::Plain)
        }
        _ => false,
    }
}

/// Whether a bare function pointer type has `call!`'s conversion.
fn fn_pointer_takes(f: &syn::TypeBareFn) -> bool {
    let c_abi = f
        .abi
        .as_ref()
        .is_some_and(|abi| abi.name.as_ref().map_or(true, |n| n.value() == "C"));
    c_abi
        && f.variadic.is_none()
        && f.lifetimes.is_none()
        && f.inputs.len() <= 6
        && !quote::ToTokens::to_token_stream(f)
            .into_iter()
            .any(|t| has_lifetime_or_ref(&t))
}

fn has_lifetime_or_ref(t: &proc_macro2::TokenTree) -> bool {
    match t {
        proc_macro2::TokenTree::Punct(p) => p.as_char() == '&' || p.as_char() == '\'',
        proc_macro2::TokenTree::Group(g) => g.stream().into_iter().any(|t| has_lifetime_or_ref(&t)),
        _ => false,
    }
}

fn path_is(segments: &[String], candidates: &[&[&str]]) -> bool {
    let segments: Vec<&str> = segments
        .iter()
        .map(String::as_str)
        .skip_while(|s| s.is_empty())
        .collect();
    candidates.contains(&segments.as_slice())
}

fn unchecked(ty: &Type, why: &str) -> Pass {
    Pass::Unchecked(format!("`{}` {why}", render(ty)))
}
