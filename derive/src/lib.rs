//! Derives for [`ffi-check`](https://docs.rs/ffi-check)'s pointer maps: a
//! type's statement of where its pointers are, so that lending it to C
//! through `call!` reads only those words (rule P1), and a struct of numbers
//! is never read at all.
//!
//! Add this crate beside `ffi-check` (ffi-check itself never depends on
//! it); the generated code names `::ffi_check`.
//!
//! ```
//! use ffi_check::{call, Managed, PointerMap, PointerWords};
//! use ffi_check_derive::{PointerFree, PointerMap};
//!
//! #[derive(PointerMap)]
//! #[repr(C)]
//! struct Request {
//!     id: u64,
//!     body: *const u8,        // the one pointer word
//!     len: usize,
//! }
//!
//! #[derive(PointerFree, Clone, Copy)]
//! #[repr(C)]
//! struct Stats {
//!     count: [u64; 8],        // never read when lent
//! }
//!
//! assert_eq!(Request::POINTERS.offsets(), Some(&[8][..]));
//! assert!(Stats::POINTERS.is_empty());
//!
//! extern "C" fn first(s: *const Stats) -> u64 {
//!     // SAFETY: the caller lends one `Stats`.
//!     unsafe { (*s).count[0] }
//! }
//! let stats = Managed::new(Stats { count: [3; 8] });
//! assert_eq!(call!(first(&stats)), 3);
//! ```
//!
//! A field whose type declares no map is a compile error:
//!
//! ```compile_fail
//! use ffi_check_derive::PointerMap;
//! #[derive(PointerMap)]
//! struct Holder {
//!     items: Vec<u8>, // error: `Vec<u8>` does not declare where its pointers are
//! }
//! ```
//!
//! and so is a type that is not a struct:
//!
//! ```compile_fail
//! use ffi_check_derive::PointerMap;
//! #[derive(PointerMap)]
//! enum Either { A(u64), B(*const u8) } // error: only a struct has a pointer map
//! ```
//!
//! `PointerFree` wants every field pointer-free:
//!
//! ```compile_fail
//! use ffi_check_derive::PointerFree;
//! #[derive(PointerFree)]
//! struct View { data: *const u8, len: usize } // error: `*const u8` is not pointer-free
//! ```

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Fields, Member};

/// Implements `ffi_check::PointerMap` for a struct: its map is its fields'
/// maps at their offsets, so each field's type must implement `PointerMap`
/// itself (numbers, pointers, arrays, tuples, `libc` structures, other
/// derived types).
#[proc_macro_derive(PointerMap)]
pub fn derive_pointer_map(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input, Kind::Map)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `ffi_check::PointerFree` for a struct whose fields are all
/// pointer-free, and `ffi_check::PointerMap` with an empty map, so that
/// lending it never reads it and a struct holding it can derive
/// `PointerMap`.
#[proc_macro_derive(PointerFree)]
pub fn derive_pointer_free(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input, Kind::Free)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Map,
    Free,
}

fn expand(input: &DeriveInput, kind: Kind) -> syn::Result<TokenStream2> {
    let what = match kind {
        Kind::Map => "PointerMap",
        Kind::Free => "PointerFree",
    };
    let fields = match &input.data {
        Data::Struct(s) => &s.fields,
        Data::Enum(e) => {
            return Err(syn::Error::new(
                e.enum_token.span(),
                format!("`{what}` can be derived only for a struct: an enum's pointers depend on its variant, which the map cannot name"),
            ))
        }
        Data::Union(u) => {
            return Err(syn::Error::new(
                u.union_token.span(),
                format!("`{what}` can be derived only for a struct: a union's pointers depend on which field is in use"),
            ))
        }
    };
    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut predicates: Vec<TokenStream2> = where_clause
        .map(|w| w.predicates.iter().map(|p| quote!(#p)).collect())
        .unwrap_or_default();
    let members: Vec<(Member, &syn::Type)> = match fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| (Member::Named(f.ident.clone().expect("named")), &f.ty))
            .collect(),
        Fields::Unnamed(unnamed) => unnamed
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| (Member::Unnamed(i.into()), &f.ty))
            .collect(),
        Fields::Unit => Vec::new(),
    };
    // Each field's type must have a map (or be pointer-free): a generic
    // struct says so in its impl's bounds; a plain one is checked without a
    // bound on a concrete type (which would add a note about an unstable
    // feature to the error), so the error is the trait's own message at the
    // field.
    let generic = !input.generics.params.is_empty();
    let assert_fields = |tr: TokenStream2| -> TokenStream2 {
        let checks = members.iter().map(|(_, ty)| {
            quote_spanned! {ty.span()=> __ffi_check_field::<#ty>(); }
        });
        quote! {
            const _: () = {
                fn __ffi_check_field<T: ?Sized + #tr>() {}
                #[allow(dead_code)]
                fn __ffi_check_fields() { #(#checks)* }
            };
        }
    };
    match kind {
        Kind::Map => {
            // The bound carries the field's span, so the error points at the
            // field.
            let asserted = TokenStream2::new();
            if generic {
                for (_, ty) in &members {
                    predicates.push(quote_spanned!(ty.span()=> #ty: ::ffi_check::PointerMap));
                }
            }
            // A plain struct needs no bound: the map's own use of each
            // field's map is the check (one error, at the field).
            let adds = members.iter().map(|(member, ty)| {
                quote_spanned! {ty.span()=>
                    .field(
                        ::core::mem::offset_of!(Self, #member),
                        <#ty as ::ffi_check::PointerMap>::POINTERS,
                    )
                }
            });
            Ok(quote! {
                #asserted
                // SAFETY: the map is the fields' own maps at the fields'
                // offsets, and every field's type has one.
                unsafe impl #impl_generics ::ffi_check::PointerMap for #name #ty_generics
                where #(#predicates,)*
                {
                    const POINTERS: ::ffi_check::PointerWords =
                        ::ffi_check::PointerWords::NONE #(#adds)*;
                }
            })
        }
        Kind::Free => {
            let mut asserted = TokenStream2::new();
            if generic {
                for (_, ty) in &members {
                    predicates.push(quote_spanned!(ty.span()=> #ty: ::ffi_check::PointerFree));
                }
            } else {
                asserted = assert_fields(quote!(::ffi_check::PointerFree));
            }
            Ok(quote! {
                #asserted
                // SAFETY: every field's type is pointer-free.
                unsafe impl #impl_generics ::ffi_check::PointerFree for #name #ty_generics
                where #(#predicates,)*
                {}
                // SAFETY: as above: no word of the value holds a pointer.
                unsafe impl #impl_generics ::ffi_check::PointerMap for #name #ty_generics
                where #(#predicates,)*
                {
                    const POINTERS: ::ffi_check::PointerWords = ::ffi_check::PointerWords::NONE;
                }
            })
        }
    }
}
