//! A walk over a bindings file: its foreign functions, what is skipped, and
//! the types and `use` items its signatures name (at the top level only,
//! where the raw path points).

use std::collections::HashMap;

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};
use syn::{Attribute, ForeignItem, ForeignItemFn, Type, UseTree, Visibility};

use crate::{SkipReason, Skipped};

/// What a type name of the bindings file is.
pub(crate) enum TypeDef {
    /// `type Name = Target;`
    Alias(Box<Type>),
    /// A struct (bindgen's opaque types and newtypes included).
    Struct,
    /// A union.
    Union,
    /// A Rust enum (bindgen's rustified enums).
    Enum,
    /// A generic type or alias.
    Generic,
}

/// One foreign function to wrap.
pub(crate) struct ForeignFn {
    /// `doc`, `cfg`, `deprecated` and `must_use` attributes of the item, and
    /// the `cfg` attributes of its block, to be carried over.
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub sig: syn::Signature,
    /// Declared `safe fn` in an `unsafe extern` block: callable without
    /// `unsafe`, and so is its wrapper.
    pub safe: bool,
}

#[derive(Default)]
pub(crate) struct Bindings {
    pub fns: Vec<ForeignFn>,
    pub skipped: Vec<Skipped>,
    pub types: HashMap<String, TypeDef>,
    /// `use` names of the top level, to their full paths.
    pub uses: HashMap<String, Vec<String>>,
    /// Extern blocks at the top level.
    pub blocks: usize,
    /// Extern blocks inside modules.
    pub nested_blocks: usize,
}

pub(crate) fn collect(file: &syn::File) -> Bindings {
    let mut c = Collector {
        module: Vec::new(),
        out: Bindings::default(),
    };
    c.visit_file(file);
    c.out
}

struct Collector {
    module: Vec<String>,
    out: Bindings,
}

impl Collector {
    fn top(&self) -> bool {
        self.module.is_empty()
    }

    fn define(&mut self, name: String, def: TypeDef) {
        if self.top() {
            self.out.types.entry(name).or_insert(def);
        }
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        visit::visit_item_mod(self, m);
        self.module.pop();
    }

    // Function bodies and constant blocks hold no bindings of the file.
    fn visit_block(&mut self, _: &'ast syn::Block) {}

    fn visit_item_foreign_mod(&mut self, block: &'ast syn::ItemForeignMod) {
        if !self.top() {
            self.out.nested_blocks += 1;
            let module = self.module.join("::");
            for item in &block.items {
                if let Some(name) = item_name(item) {
                    self.out.skipped.push(Skipped {
                        name,
                        reason: SkipReason::NestedModule(module.clone()),
                    });
                }
            }
            return;
        }
        self.out.blocks += 1;
        let block_cfg: Vec<Attribute> = block
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .cloned()
            .collect();
        for item in &block.items {
            self.foreign_item(item, &block_cfg);
        }
    }

    fn visit_item_type(&mut self, t: &'ast syn::ItemType) {
        let def = if t.generics.params.is_empty() {
            TypeDef::Alias(t.ty.clone())
        } else {
            TypeDef::Generic
        };
        self.define(t.ident.to_string(), def);
    }

    fn visit_item_struct(&mut self, s: &'ast syn::ItemStruct) {
        let def = if s.generics.params.is_empty() {
            TypeDef::Struct
        } else {
            TypeDef::Generic
        };
        self.define(s.ident.to_string(), def);
    }

    fn visit_item_union(&mut self, u: &'ast syn::ItemUnion) {
        self.define(u.ident.to_string(), TypeDef::Union);
    }

    fn visit_item_enum(&mut self, e: &'ast syn::ItemEnum) {
        self.define(e.ident.to_string(), TypeDef::Enum);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if self.top() {
            let mut prefix = Vec::new();
            if u.leading_colon.is_some() {
                prefix.push(String::new());
            }
            flatten_use(&u.tree, &mut prefix, &mut self.out.uses);
        }
    }
}

impl Collector {
    fn foreign_item(&mut self, item: &ForeignItem, block_cfg: &[Attribute]) {
        let (f, safe) = match item {
            ForeignItem::Fn(f) => (f.clone(), false),
            ForeignItem::Verbatim(tokens) => match safe_fn(tokens) {
                Some(f) => (f, true),
                None => {
                    self.skip(
                        item_name(item).unwrap_or_else(|| "?".into()),
                        SkipReason::Unreadable,
                    );
                    return;
                }
            },
            ForeignItem::Static(s) => return self.skip(s.ident.to_string(), SkipReason::Static),
            ForeignItem::Type(t) => return self.skip(t.ident.to_string(), SkipReason::ForeignType),
            ForeignItem::Macro(m) => {
                let name = m
                    .mac
                    .path
                    .segments
                    .last()
                    .map_or_else(String::new, |s| s.ident.to_string());
                return self.skip(format!("{name}!"), SkipReason::Macro);
            }
            _ => return self.skip("?".into(), SkipReason::Unreadable),
        };
        let name = f.sig.ident.to_string();
        if f.sig.variadic.is_some() {
            return self.skip(name, SkipReason::Variadic);
        }
        let mut attrs: Vec<Attribute> = block_cfg.to_vec();
        attrs.extend(f.attrs.iter().filter(|a| carried(a)).cloned());
        let cfg_of = |attrs: &[Attribute]| -> Vec<String> {
            attrs
                .iter()
                .filter(|a| a.path().is_ident("cfg"))
                .map(|a| quote::ToTokens::to_token_stream(a).to_string())
                .collect()
        };
        let cfg = cfg_of(&attrs);
        let duplicate = self
            .out
            .fns
            .iter()
            .any(|g| g.sig.ident == f.sig.ident && cfg_of(&g.attrs) == cfg);
        if duplicate {
            return self.skip(name, SkipReason::Duplicate);
        }
        self.out.fns.push(ForeignFn {
            attrs,
            vis: f.vis,
            sig: f.sig,
            safe,
        });
    }

    fn skip(&mut self, name: String, reason: SkipReason) {
        self.out.skipped.push(Skipped { name, reason });
    }
}

/// The attributes a wrapper keeps: its documentation, its `cfg`, and what
/// its callers should still be told.
fn carried(a: &Attribute) -> bool {
    ["doc", "cfg", "deprecated", "must_use"]
        .iter()
        .any(|name| a.path().is_ident(name))
}

/// `safe fn f(...);` (an item of an `unsafe extern` block, which syn keeps
/// as tokens): the item without `safe`, parsed as a foreign function.
fn safe_fn(tokens: &TokenStream) -> Option<ForeignItemFn> {
    let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
    let at = trees.windows(2).position(|w| {
        matches!(&w[0], TokenTree::Ident(i) if i == "safe")
            && matches!(&w[1], TokenTree::Ident(i) if i == "fn")
    })?;
    let rest: TokenStream = trees
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != at)
        .map(|(_, t)| t.clone())
        .collect();
    syn::parse2::<ForeignItemFn>(rest).ok()
}

fn item_name(item: &ForeignItem) -> Option<String> {
    match item {
        ForeignItem::Fn(f) => Some(f.sig.ident.to_string()),
        ForeignItem::Static(s) => Some(s.ident.to_string()),
        ForeignItem::Type(t) => Some(t.ident.to_string()),
        ForeignItem::Verbatim(tokens) => safe_fn(tokens).map(|f| f.sig.ident.to_string()),
        _ => None,
    }
}

fn flatten_use(tree: &UseTree, prefix: &mut Vec<String>, out: &mut HashMap<String, Vec<String>>) {
    match tree {
        UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        UseTree::Name(n) if n.ident == "self" => {
            if let Some(last) = prefix.last() {
                out.insert(last.clone(), prefix.clone());
            }
        }
        UseTree::Name(n) => {
            let mut full = prefix.clone();
            full.push(n.ident.to_string());
            out.insert(n.ident.to_string(), full);
        }
        UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            out.insert(r.rename.to_string(), full);
        }
        UseTree::Glob(_) => {}
        UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}
