//! The serde bounds of the types a service sends, written so that a type lacking `Serialize` or
//! `Deserialize` gets its error at the type, once.
//!
//! Every generated item that encodes or decodes a type carries `Type: Serialize +
//! DeserializeOwned` in its where clause, spanned at the type where the trait first names it.
//! Inside such an item the bound is assumed, so its body raises no error of its own; the one
//! error per missing trait comes from the where clause, and rustc reports an unsatisfied
//! predicate once per span, however many items repeat it. Without this, the same omission showed
//! as several errors at the attribute, through serde's and rpc-core's internals.
//!
//! Types that are serde types by construction (integers, `String`, `Vec` and `Option` of them)
//! get no bound, to keep the generated documentation free of noise.

use std::collections::HashSet;

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote_spanned};
use syn::spanned::Spanned;
use syn::{LitStr, Type};

use crate::parse::{Method, Service};

/// The distinct types a service sends, each with the span of its first appearance.
pub(crate) struct WireTypes {
    types: Vec<(String, TokenStream, Span)>,
    /// The types sent as byte strings from their own memory (`ByteBuf` arguments and results),
    /// which must be `rpc_core::__private::ByteString`: a type of another crate that is only
    /// spelled like one gets that error at the type, once.
    byte_strings: Vec<String>,
}

impl WireTypes {
    pub(crate) fn of(service: &Service) -> Self {
        let mut this = Self {
            types: Vec::new(),
            byte_strings: Vec::new(),
        };
        // A predicate cannot carry `#[cfg]`: a method that may be compiled out keeps its types
        // out of the where clauses, since they may not even exist.
        for method in service
            .methods
            .iter()
            .filter(|method| method.cfgs.is_empty())
        {
            for ty in sent_types(method) {
                this.add(ty);
            }
            let args = method.plain_args().filter(|arg| arg.as_bytes);
            let result = method.output_as_bytes.then_some(&method.output);
            for ty in args.map(|arg| &arg.ty).chain(result) {
                this.byte_strings.push(ty.to_token_stream().to_string());
            }
        }
        this
    }

    fn add(&mut self, ty: &Type) {
        let key = ty.to_token_stream().to_string();
        if is_std_serde(ty) || self.types.iter().any(|(known, ..)| *known == key) {
            return;
        }
        let span = ty.span();
        self.types
            .push((key, respan(ty.to_token_stream(), span), span));
    }

    /// `Type: Serialize + DeserializeOwned,` for each type, to follow `where`, and
    /// `+ ByteString` for those sent as byte strings.
    pub(crate) fn predicates(&self) -> TokenStream {
        self.types
            .iter()
            .map(|(key, ty, span)| {
                let byte_string = self.byte_strings.contains(key).then(|| {
                    quote_spanned! {*span=> + ::rpc_core::__private::ByteString }
                });
                quote_spanned! {*span=>
                    #ty: ::rpc_core::__private::serde::Serialize
                        + ::rpc_core::__private::serde::de::DeserializeOwned
                        #byte_string,
                }
            })
            .collect()
    }

    /// Bounds for the fields of one serde-derived enum: `#[serde(bound(..))]` on the first field
    /// of each type, spanned where the type first appears in the trait. The derive joins field
    /// bounds into its impls' where clauses.
    pub(crate) fn field_bounds(&self) -> FieldBounds<'_> {
        FieldBounds {
            types: self,
            seen: HashSet::new(),
        }
    }
}

/// Hands out each type's serde bound once, to the first field of that type in one enum.
pub(crate) struct FieldBounds<'t> {
    types: &'t WireTypes,
    seen: HashSet<String>,
}

impl FieldBounds<'_> {
    /// The attribute for a field of type `ty` in `method`'s variant, if it is the first of its
    /// type outside the methods that may be compiled out.
    pub(crate) fn attribute(&mut self, method: &Method, ty: &Type) -> Option<TokenStream> {
        if !method.cfgs.is_empty() {
            return None;
        }
        let key = ty.to_token_stream().to_string();
        let (_, tokens, span) = self.types.types.iter().find(|(known, ..)| *known == key)?;
        if !self.seen.insert(key) {
            return None;
        }
        let bound = |trait_path: &str| LitStr::new(&format!("{tokens}: {trait_path}"), *span);
        let serialize = bound("::rpc_core::__private::serde::Serialize");
        let deserialize = bound("::rpc_core::__private::serde::de::DeserializeOwned");
        Some(quote_spanned! {*span=>
            #[serde(bound(serialize = #serialize, deserialize = #deserialize))]
        })
    }
}

/// The types a method encodes or decodes: its plain arguments, its result, its stream items,
/// the error that may come instead of its streamed result.
fn sent_types(method: &Method) -> impl Iterator<Item = &Type> {
    let args = method
        .args
        .iter()
        .map(|arg| arg.stream_item.as_ref().unwrap_or(&arg.ty));
    let result = method.download.as_ref().unwrap_or(&method.output);
    args.chain(std::iter::once(result))
        .chain(method.download_error.as_ref())
}

/// All of `tokens` at `span`, so that every bound on a type has the same span: the one serde
/// gives the bound it parses from a string.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// Whether `ty` is built only of primitives, `String`, `Vec`, `Option`, `Box`, tuples of up to
/// 16 items and arrays of up to 32, spelled by their plain names: serde types whatever the user
/// declared. serde implements its traits for tuples and arrays only up to those sizes: a larger
/// one gets its bound, and so its error at the type.
fn is_std_serde(ty: &Type) -> bool {
    const PRIMITIVES: &[&str] = &[
        "bool", "char", "f32", "f64", "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16",
        "u32", "u64", "u128", "usize", "String",
    ];
    const CONTAINERS: &[&str] = &["Vec", "Option", "Box"];
    match ty {
        Type::Tuple(tuple) => tuple.elems.len() <= 16 && tuple.elems.iter().all(is_std_serde),
        Type::Array(array) => array_len_at_most(&array.len, 32) && is_std_serde(&array.elem),
        Type::Group(group) => is_std_serde(&group.elem),
        Type::Paren(paren) => is_std_serde(&paren.elem),
        Type::Path(path) if path.qself.is_none() && path.path.segments.len() == 1 => {
            let segment = &path.path.segments[0];
            let name = segment.ident.to_string();
            match &segment.arguments {
                syn::PathArguments::None => PRIMITIVES.contains(&name.as_str()),
                syn::PathArguments::AngleBracketed(generics) => {
                    CONTAINERS.contains(&name.as_str())
                        && generics.args.len() == 1
                        && matches!(
                            &generics.args[0],
                            syn::GenericArgument::Type(inner) if is_std_serde(inner)
                        )
                }
                syn::PathArguments::Parenthesized(_) => false,
            }
        }
        _ => false,
    }
}

/// Whether an array's length is written as a number no greater than `most`.
fn array_len_at_most(len: &syn::Expr, most: usize) -> bool {
    match len {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(int),
            ..
        }) => int.base10_parse::<usize>().is_ok_and(|len| len <= most),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_types_need_no_bound_and_others_do() {
        for plain in [
            "i64",
            "String",
            "Vec<u8>",
            "Option<(u32, [u8; 4])>",
            "()",
            "(u8)",
            "[u8; 32]",
            "(u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8)",
        ] {
            let ty: Type = syn::parse_str(plain).expect("a type");
            assert!(is_std_serde(&ty), "{plain}");
        }
        // A type a `macro_rules!` macro passed on, in a group of no delimiters.
        let grouped = Type::Group(syn::TypeGroup {
            group_token: Default::default(),
            elem: Box::new(syn::parse_str("u64").expect("a type")),
        });
        assert!(is_std_serde(&grouped));
        let others = [
            "Point",
            "Vec<Point>",
            "Result<i64, E>",
            "std::string::String",
            "Box<str>",
            // Named like a standard type, but another's.
            "<T>::String",
            "u32::Alias",
            // Past what serde implements its traits for.
            "[u8; 33]",
            "[u8; N]",
            "(u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8)",
        ];
        for user in others {
            let ty: Type = syn::parse_str(user).expect("a type");
            assert!(!is_std_serde(&ty), "{user}");
        }
    }

    /// One predicate for each type that needs one, however often the trait names it.
    #[test]
    fn each_type_is_bound_once_and_standard_types_not_at_all() {
        let item: syn::ItemTrait = syn::parse_quote! {
            trait Plot {
                async fn draw(&self, at: Point, size: u32) -> Point;
                async fn line(&self, from: Point, to: Point) -> Vec<u8>;
            }
        };
        let mut errors = crate::parse::Errors::default();
        let service = crate::parse::service(proc_macro2::TokenStream::new(), item, &mut errors);
        errors.finish().expect("a service");
        let predicates = WireTypes::of(&service).predicates().to_string();
        assert_eq!(
            predicates.matches(": :: rpc_core").count(),
            1,
            "{predicates}"
        );
        assert!(predicates.starts_with("Point :"), "{predicates}");
    }
}
