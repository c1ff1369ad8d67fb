//! Types and attributes as text a person reads: `*mut *mut sqlite3`, not
//! the `* mut * mut sqlite3` of a token stream's `to_string`.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;

/// `node` as Rust source on one line.
pub(crate) fn render<T: ToTokens>(node: &T) -> String {
    let mut out = String::new();
    write_stream(node.to_token_stream(), &mut out);
    out
}

/// A piece of the output and what spacing it wants around it.
enum Atom {
    /// An identifier or a literal.
    Word(String),
    /// `'a`.
    Lifetime(String),
    /// Punctuation, joint pieces together (`::`, `->`).
    Op(String),
    /// A delimited group, already rendered.
    Group(Delimiter, String),
}

fn atoms(stream: TokenStream) -> Vec<Atom> {
    let trees: Vec<TokenTree> = stream.into_iter().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < trees.len() {
        match &trees[i] {
            TokenTree::Ident(id) => out.push(Atom::Word(id.to_string())),
            TokenTree::Literal(l) => out.push(Atom::Word(l.to_string())),
            TokenTree::Group(g) => {
                let mut inner = String::new();
                // A tuple keeps the comma of `(T,)`; a parameter list (after
                // `fn`) needs none.
                let after_fn = matches!(out.last(), Some(Atom::Word(w)) if w == "fn");
                let in_parens = g.delimiter() == Delimiter::Parenthesis && !after_fn;
                write_atoms(&atoms(g.stream()), &mut inner, in_parens);
                out.push(Atom::Group(g.delimiter(), inner));
            }
            TokenTree::Punct(p) if p.as_char() == '\'' => {
                if let Some(TokenTree::Ident(id)) = trees.get(i + 1) {
                    out.push(Atom::Lifetime(format!("'{id}")));
                    i += 1;
                } else {
                    out.push(Atom::Op("'".into()));
                }
            }
            TokenTree::Punct(p) => {
                let mut op = p.as_char().to_string();
                let mut spacing = p.spacing();
                while spacing == Spacing::Joint {
                    match trees.get(i + 1) {
                        Some(TokenTree::Punct(next)) if next.as_char() != '\'' => {
                            op.push(next.as_char());
                            spacing = next.spacing();
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(Atom::Op(op));
            }
        }
        i += 1;
    }
    out
}

/// Operators written with a space on each side.
fn spaced(op: &str) -> bool {
    matches!(
        op,
        "->" | "=" | "=>" | "+" | "==" | "!=" | "|" | "||" | "&&"
    )
}

/// Keywords that a path may follow (`*mut ::std::…`).
const KEYWORDS: &[&str] = &[
    "mut", "const", "dyn", "impl", "as", "unsafe", "extern", "in", "for",
];

/// Whether `atoms[i]`, a comma, is a trailing one to leave out: before a
/// closing `>`, or at the end of a group, but not the comma of a one-element
/// tuple `(T,)` (`in_parens`: the group is a tuple's parentheses).
fn trailing_comma(atoms: &[Atom], i: usize, in_parens: bool) -> bool {
    match atoms.get(i + 1) {
        Some(Atom::Op(op)) => op.starts_with('>'),
        Some(_) => false,
        None => {
            let commas = atoms
                .iter()
                .filter(|a| matches!(a, Atom::Op(op) if op == ","))
                .count();
            !(in_parens && commas == 1)
        }
    }
}

fn write_stream(stream: TokenStream, out: &mut String) {
    write_atoms(&atoms(stream), out, false);
}

fn write_atoms(atoms: &[Atom], out: &mut String, in_parens: bool) {
    let mut prev: Option<&Atom> = None;
    for (i, atom) in atoms.iter().enumerate() {
        if matches!(atom, Atom::Op(op) if op == ",") && trailing_comma(atoms, i, in_parens) {
            continue;
        }
        let space = match (prev, atom) {
            (None, _) => false,
            (Some(Atom::Word(w)), Atom::Op(op)) if op == "::" => KEYWORDS.contains(&w.as_str()),
            (_, Atom::Op(op)) if spaced(op) => true,
            (Some(Atom::Op(op)), _) if spaced(op) => true,
            (Some(Atom::Op(op)), _) => matches!(op.as_str(), "," | ";" | ":"),
            (_, Atom::Op(op)) => {
                matches!(op.as_str(), "*" | "&" | "#" | "!" | "'")
                    && matches!(prev, Some(Atom::Word(_) | Atom::Lifetime(_)))
            }
            (_, Atom::Group(Delimiter::Brace, _)) => true,
            (_, Atom::Group(..)) => false,
            (
                Some(Atom::Word(_) | Atom::Lifetime(_) | Atom::Group(..)),
                Atom::Word(_) | Atom::Lifetime(_),
            ) => true,
        };
        if space {
            out.push(' ');
        }
        match atom {
            Atom::Word(w) | Atom::Lifetime(w) | Atom::Op(w) => out.push_str(w),
            Atom::Group(delimiter, inner) => {
                let (open, close) = match delimiter {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{ ", " }"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                out.push_str(inner);
                out.push_str(close);
            }
        }
        prev = Some(atom);
    }
}

#[cfg(test)]
mod tests {
    use super::render;

    fn ty(s: &str) -> String {
        render(&syn::parse_str::<syn::Type>(s).unwrap())
    }

    #[test]
    fn types_read_as_written() {
        for t in [
            "*mut *mut sqlite3",
            "*const ::std::os::raw::c_char",
            "::std::option::Option<unsafe extern \"C\" fn(arg1: *mut ::std::os::raw::c_void, arg2: ::std::os::raw::c_int) -> ::std::os::raw::c_int>",
            "[u8; 4]",
            "&'a mut T",
            "()",
            "Option<extern \"C\" fn()>",
            "*const *const i32",
            "*mut ::std::os::raw::c_char",
            "(T,)",
            "(A, B)",
        ] {
            assert_eq!(ty(t), t);
        }
        for (t, want) in [
            (
                "Option<unsafe extern \"C\" fn(a: i32, b: i32,) -> i32,>",
                "Option<unsafe extern \"C\" fn(a: i32, b: i32) -> i32>",
            ),
            ("Option<fn(T,)>", "Option<fn(T)>"),
        ] {
            assert_eq!(ty(t), want);
        }
    }

    #[test]
    fn attributes_read_as_written() {
        let attrs = syn::parse_str::<syn::ItemFn>(
            "#[doc = \" Opens \\\"x\\\"\"] #[cfg(all(unix, not(feature = \"x\")))] fn f() {}",
        )
        .unwrap()
        .attrs;
        assert_eq!(render(&attrs[0]), "#[doc = \" Opens \\\"x\\\"\"]");
        assert_eq!(render(&attrs[1]), "#[cfg(all(unix, not(feature = \"x\")))]");
    }
}
