//! From the trait as written to a plain model of the service, refusing every shape the runtime
//! cannot serve. All problems are reported at once, each at its own token.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::visit::Visit;
use syn::{
    Attribute, FnArg, Ident, ItemTrait, LitStr, Pat, ReturnType, Signature, Token, TraitItem,
    TraitItemFn, Type, TypeParamBound, Visibility,
};

use crate::{fingerprint, names};

/// A service trait.
pub(crate) struct Service {
    /// The trait's attributes, kept on the trait.
    pub(crate) attrs: Vec<Attribute>,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) supertraits: Punctuated<TypeParamBound, Token![+]>,
    pub(crate) methods: Vec<Method>,
    /// `#[service(texts("..."))]`: texts the service's types that parse a form of their own
    /// accept, offered to them when their schema is traced.
    pub(crate) texts: Vec<LitStr>,
}

/// One `async fn` of the trait.
pub(crate) struct Method {
    /// Every attribute, kept on the trait method.
    pub(crate) attrs: Vec<Attribute>,
    /// The `#[cfg]` attributes, repeated on every item generated for the method.
    pub(crate) cfgs: Vec<Attribute>,
    /// The doc comments, repeated on the client method.
    pub(crate) docs: Vec<Attribute>,
    /// `#[deprecated]`, repeated on the client method, so that its callers are told too.
    pub(crate) deprecated: Vec<Attribute>,
    pub(crate) ident: Ident,
    /// The name on the wire: the identifier without `r#`.
    pub(crate) name: String,
    /// The request and response variant.
    pub(crate) variant: Ident,
    pub(crate) args: Vec<Arg>,
    /// The return type; `()` when none is written.
    pub(crate) output: Type,
    /// The item type, when the method returns `Streaming<T>` or `Result<Streaming<T>, E>`.
    pub(crate) download: Option<Type>,
    /// The error type, when the method returns `Result<Streaming<T>, E>`: an error that comes
    /// instead of the stream.
    pub(crate) download_error: Option<Type>,
    /// The return type is written `Vec<u8>` or `ByteBuf`: sent as one byte string from its own
    /// memory, see [`is_byte_string`]. Never for a streamed result, spelled `Streaming<T>`.
    pub(crate) output_as_bytes: bool,
    /// `#[rpc(opaque)]`: sent without a schema, with this fingerprint of its signature's text.
    pub(crate) opaque: Option<u64>,
    /// `#[rpc(idempotent)]`: running it twice does no harm, so a lost call may be made again.
    pub(crate) idempotent: bool,
}

impl Method {
    /// The argument the client streams, if any.
    pub(crate) fn upload(&self) -> Option<&Arg> {
        self.args.iter().find(|arg| arg.stream_item.is_some())
    }

    /// The arguments sent together in the request, in order.
    pub(crate) fn plain_args(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|arg| arg.stream_item.is_none())
    }

    /// Whether the request's arguments end in a byte string and nothing is streamed in: the
    /// server may read a large one into memory of its own and take it without a copy.
    pub(crate) fn ends_in_byte_string(&self) -> bool {
        self.upload().is_none() && self.plain_args().last().is_some_and(|arg| arg.as_bytes)
    }
}

/// One argument after `&self`.
pub(crate) struct Arg {
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
    /// The item type, when the argument is `Streaming<T>`.
    pub(crate) stream_item: Option<Type>,
    /// The type is written `Vec<u8>` or `ByteBuf`: sent as one byte string from its own memory,
    /// see [`is_byte_string`].
    pub(crate) as_bytes: bool,
}

/// Collects errors so that one compile shows them all.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Builds the model, adding to `errors` every shape that cannot be served. The model is
/// complete either way, so that [`crate::validate`] can report its own findings too.
pub(crate) fn service(args: TokenStream, item: ItemTrait, errors: &mut Errors) -> Service {
    let texts = service_options(args, errors);
    if let Some(unsafety) = &item.unsafety {
        errors.spanned(unsafety, "a service trait cannot be `unsafe`");
    }
    if let Some(auto) = &item.auto_token {
        errors.spanned(auto, "a service trait cannot be an `auto` trait");
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(
            &item.generics,
            "generic service traits are not supported; both sides must agree on concrete types",
        );
    }
    let mut methods = Vec::new();
    for trait_item in item.items {
        match trait_item {
            TraitItem::Fn(function) => methods.push(method(function, errors)),
            other => errors.spanned(other, "a service trait may contain only `async fn` methods"),
        }
    }
    Service {
        attrs: item.attrs,
        vis: item.vis,
        ident: item.ident,
        supertraits: item.supertraits,
        methods,
        texts,
    }
}

/// The attributes of `attrs` named `name` (`#[cfg]`, `#[doc]`...), to repeat on generated items.
fn named(attrs: &[Attribute], name: &str) -> Vec<Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident(name))
        .cloned()
        .collect()
}

/// The attribute's own options, `#[service(texts("SKU-0001", ...))]`: the texts given.
fn service_options(args: TokenStream, errors: &mut Errors) -> Vec<LitStr> {
    let mut texts = Vec::new();
    let options = syn::meta::parser(|option| {
        if !option.path.is_ident("texts") {
            return Err(option.error(
                "unknown service option; the one there is: `texts(\"...\", ...)`, texts the \
                 service's types that parse a form of their own accept",
            ));
        }
        let list;
        syn::parenthesized!(list in option.input);
        let given = list.parse_terminated(<LitStr as syn::parse::Parse>::parse, Token![,])?;
        if given.is_empty() {
            return Err(
                option.error("`texts(...)` names at least one text, as `texts(\"SKU-0001\")`")
            );
        }
        texts.extend(given);
        Ok(())
    });
    if let Err(error) = syn::parse::Parser::parse2(options, args) {
        errors.push(error);
    }
    texts
}

fn method(function: TraitItemFn, errors: &mut Errors) -> Method {
    let TraitItemFn {
        attrs,
        sig,
        default,
        ..
    } = function;
    let (rpc_attrs, attrs): (Vec<Attribute>, Vec<Attribute>) = attrs
        .into_iter()
        .partition(|attr| attr.path().is_ident("rpc"));
    let mut idempotent = false;
    let mut opaque = false;
    for attr in &rpc_attrs {
        let parsed = attr.parse_nested_meta(|option| {
            if option.path.is_ident("idempotent") {
                idempotent = true;
                Ok(())
            } else if option.path.is_ident("opaque") {
                opaque = true;
                Ok(())
            } else {
                Err(option.error("unknown rpc option; the ones there are: `idempotent`, `opaque`"))
            }
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    if let Some(body) = &default {
        errors.spanned(
            body,
            "rpc methods cannot have a default body; implement them in the `impl` block",
        );
    }
    // `fn f(&self) -> impl Future<Output = T>` written by hand: one error, saying what to write.
    let hand_written = sig
        .asyncness
        .is_none()
        .then(|| future_output(&sig.output))
        .flatten();
    if let Some(output) = &hand_written {
        errors.spanned(
            &sig.output,
            format!(
                "write `async fn {}(...) -> {}` instead of returning `impl Future`: the macro \
                 declares the `Send` future the server needs",
                sig.ident.unraw(),
                output.to_token_stream()
            ),
        );
    }
    check_qualifiers(&sig, errors, hand_written.is_none());
    check_receiver(&sig, errors);
    let args = arguments(&sig, errors);
    let output = match (&sig.output, hand_written) {
        (_, Some(output)) => output,
        (ReturnType::Default, None) => syn::parse_quote!(()),
        (ReturnType::Type(_, ty), None) => {
            check_owned(ty, "return types", errors);
            (**ty).clone()
        }
    };
    let (download, download_error) = download(&output, errors);
    let mut streamed = args.iter().filter(|arg| arg.stream_item.is_some());
    if let (Some(_), Some(second)) = (streamed.next(), streamed.next()) {
        errors.spanned(
            &second.ty,
            "a method can stream at most one argument; send the others in one stream of a \
             struct or enum",
        );
    }

    let name = sig.ident.unraw().to_string();
    let variant = format_ident!("{}", names::upper_camel(&name), span = sig.ident.span());
    let arg_types: Vec<TokenStream> = args.iter().map(|arg| arg.ty.to_token_stream()).collect();
    // Only an opaque method's fingerprint comes from its text; any other's, from its schema.
    let opaque = opaque.then(|| fingerprint::method(&name, &arg_types, &output.to_token_stream()));
    Method {
        cfgs: named(&attrs, "cfg"),
        docs: named(&attrs, "doc"),
        deprecated: named(&attrs, "deprecated"),
        attrs,
        ident: sig.ident,
        name,
        variant,
        args,
        output_as_bytes: is_byte_string(&output),
        output,
        download,
        download_error,
        opaque,
        idempotent,
    }
}

/// `T`, for a return type written `impl Future<Output = T>` (or `impl Future<Output = T> + Send`).
fn future_output(output: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::ImplTrait(impl_trait) = &**ty else {
        return None;
    };
    impl_trait.bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let segment = bound.path.segments.last()?;
        if segment.ident != "Future" {
            return None;
        }
        let syn::PathArguments::AngleBracketed(arguments) = &segment.arguments else {
            return Some(syn::parse_quote!(()));
        };
        arguments.args.iter().find_map(|argument| match argument {
            syn::GenericArgument::AssocType(assoc) if assoc.ident == "Output" => {
                Some(assoc.ty.clone())
            }
            _ => None,
        })
    })
}

fn check_qualifiers(sig: &Signature, errors: &mut Errors, check_async: bool) {
    if check_async && sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "rpc methods must be `async fn`: a remote call always waits for the network",
        );
    }
    if let Some(constness) = &sig.constness {
        errors.spanned(constness, "rpc methods cannot be `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.spanned(unsafety, "rpc methods cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "rpc methods cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.spanned(
            &sig.generics,
            "generic rpc methods are not supported; both sides must agree on concrete types",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "rpc methods cannot be variadic");
    }
}

fn check_receiver(sig: &Signature, errors: &mut Errors) {
    const TAKE_REF_SELF: &str = "rpc methods take `&self` as their first argument";
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            if receiver.colon_token.is_some() {
                errors.spanned(
                    receiver,
                    "rpc methods take plain `&self`, not `self` with a type: the server owns \
                     the implementation",
                );
            } else if receiver.reference.is_none() {
                errors.spanned(
                    receiver,
                    "`self` by value is not supported: the server calls one shared \
                     implementation; take `&self`",
                );
            } else if receiver.mutability.is_some() {
                errors.spanned(
                    receiver,
                    "`&mut self` is not supported: calls run concurrently on one shared \
                     implementation; take `&self` and use interior mutability",
                );
            } else if let Some((_, Some(lifetime))) = &receiver.reference {
                errors.spanned(
                    lifetime,
                    "rpc methods take plain `&self`, without a lifetime",
                );
            }
        }
        Some(FnArg::Typed(first)) => errors.spanned(first, TAKE_REF_SELF),
        None => errors.push(syn::Error::new(sig.paren_token.span.join(), TAKE_REF_SELF)),
    }
}

fn arguments(sig: &Signature, errors: &mut Errors) -> Vec<Arg> {
    let mut args = Vec::new();
    for input in sig.inputs.iter().skip(1) {
        let FnArg::Typed(typed) = input else {
            continue; // a second `self` is rejected by the compiler itself
        };
        check_owned(&typed.ty, "arguments", errors);
        match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => args.push(Arg {
                ident: pat.ident.clone(),
                ty: (*typed.ty).clone(),
                stream_item: streaming_item(&typed.ty, errors),
                as_bytes: is_byte_string(&typed.ty),
            }),
            other => errors.spanned(
                other,
                "rpc arguments must be plain names, like `a: i64`: the name becomes a field of \
                 the request",
            ),
        }
    }
    args
}

/// The item type of `Streaming<T>`, when `ty` is that; refuses `Streaming` anywhere else in
/// `ty`, where the runtime could not stream it.
fn streaming_item(ty: &Type, errors: &mut Errors) -> Option<Type> {
    struct Nested<'e> {
        errors: &'e mut Errors,
        message: &'static str,
    }
    impl<'ast> Visit<'ast> for Nested<'_> {
        fn visit_path_segment(&mut self, segment: &'ast syn::PathSegment) {
            if segment.ident == "Streaming" {
                self.errors.spanned(segment, self.message);
            }
            syn::visit::visit_path_segment(self, segment);
        }
    }
    let top = last_segment(ty);
    match top {
        Some(segment) if segment.ident == "Streaming" => {
            let syn::PathArguments::AngleBracketed(generics) = &segment.arguments else {
                errors.spanned(segment, "`Streaming` takes the item type: `Streaming<T>`");
                return None;
            };
            let mut types = generics.args.iter().filter_map(|arg| match arg {
                syn::GenericArgument::Type(item) => Some(item),
                _ => None,
            });
            match (types.next(), types.next(), generics.args.len()) {
                (Some(item), None, 1) => {
                    let message = NESTED_STREAM;
                    Nested { errors, message }.visit_type(item);
                    Some(item.clone())
                }
                _ => {
                    errors.spanned(generics, "`Streaming` takes one item type: `Streaming<T>`");
                    None
                }
            }
        }
        _ => {
            let message = NESTED_STREAM;
            Nested { errors, message }.visit_type(ty);
            None
        }
    }
}

/// What a method's result streams: the item type of `Streaming<T>`, and the error type too of
/// `Result<Streaming<T>, E>`, whose error comes instead of the stream.
fn download(output: &Type, errors: &mut Errors) -> (Option<Type>, Option<Type>) {
    let Some(segment) = last_segment(output).filter(|segment| segment.ident == "Result") else {
        return (streaming_item(output, errors), None);
    };
    let syn::PathArguments::AngleBracketed(generics) = &segment.arguments else {
        return (streaming_item(output, errors), None);
    };
    let types: Vec<&Type> = generics
        .args
        .iter()
        .filter_map(|arg| match arg {
            syn::GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    let first_streams = types
        .first()
        .and_then(|first| last_segment(first))
        .is_some_and(|first| first.ident == "Streaming");
    match types[..] {
        [items, error] if first_streams => {
            let item = streaming_item(items, errors);
            if streaming_item(error, errors).is_some() {
                errors.spanned(
                    error,
                    "the error that comes instead of a stream is no stream",
                );
            }
            // Only with its items known is the method one that streams, or may fail instead.
            let error = item.as_ref().map(|_| error.clone());
            (item, error)
        }
        _ if first_streams => {
            errors.spanned(
                generics,
                "write the error type out, `Result<Streaming<T>, E>`: the error that comes \
                 instead of the stream is sent as that type",
            );
            (None, None)
        }
        _ => (streaming_item(output, errors), None),
    }
}

/// What is said of `Streaming` found inside another type.
const NESTED_STREAM: &str = "`Streaming` must be an argument's whole type or the whole return \
                             type, not part of another type";

/// The last segment of `ty`'s path, if it is a path (`Streaming` of `rpc_core::Streaming<T>`).
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    }
}

/// Whether `ty` is spelled `Vec<u8>` (or `std::vec::Vec<u8>`, `alloc::vec::Vec<u8>`, with `u8`
/// possibly `core::primitive::u8`) or `ByteBuf` (or `serde_bytes::ByteBuf`). serde sees a
/// `Vec<u8>` as a sequence and encodes it a byte at a time, and a `ByteBuf` is copied into its
/// frame and out of it; the generated code sends either from its own memory as one byte string
/// and decodes it as one, which postcard writes identically. Only the spelling can tell: a
/// macro sees no types, so an alias is not caught (and costs speed, not correctness), and a
/// type of another crate named `ByteBuf` is refused by the compiler, as not
/// `rpc_core::__private::ByteString`.
fn is_byte_string(ty: &Type) -> bool {
    fn path_is(path: &syn::Path, std_paths: &[&[&str]]) -> bool {
        let idents: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        // The name alone, or its whole path from the crate root.
        std_paths
            .iter()
            .any(|full| idents[..] == full[full.len() - 1..] || idents[..] == full[..])
    }
    fn plain_path(ty: &Type) -> Option<&syn::Path> {
        match ty {
            Type::Path(path) if path.qself.is_none() => Some(&path.path),
            Type::Group(group) => plain_path(&group.elem),
            Type::Paren(paren) => plain_path(&paren.elem),
            _ => None,
        }
    }
    let Some(path) = plain_path(ty) else {
        return false;
    };
    if path.segments.iter().all(|s| s.arguments.is_none())
        && path_is(path, &[&["serde_bytes", "ByteBuf"]])
    {
        return true;
    }
    let vec_paths: &[&[&str]] = &[&["std", "vec", "Vec"], &["alloc", "vec", "Vec"]];
    let u8_paths: &[&[&str]] = &[&["core", "primitive", "u8"], &["std", "primitive", "u8"]];
    let Some(last) = path.segments.last() else {
        return false;
    };
    let syn::PathArguments::AngleBracketed(generics) = &last.arguments else {
        return false;
    };
    let mut bare = path.clone();
    if let Some(segment) = bare.segments.last_mut() {
        segment.arguments = syn::PathArguments::None;
    }
    let item = match generics.args.first() {
        Some(syn::GenericArgument::Type(item)) if generics.args.len() == 1 => item,
        _ => return false,
    };
    path_is(&bare, vec_paths)
        && plain_path(item).is_some_and(|item| {
            item.segments.iter().all(|s| s.arguments.is_none()) && path_is(item, u8_paths)
        })
}

/// Refuses `impl Trait` and borrowed types, in arguments or return types (`what`).
fn check_owned(ty: &Type, what: &str, errors: &mut Errors) {
    struct Finder<'e> {
        what: &'e str,
        errors: &'e mut Errors,
    }
    impl<'ast> Visit<'ast> for Finder<'_> {
        fn visit_type_impl_trait(&mut self, node: &'ast syn::TypeImplTrait) {
            self.errors.spanned(
                node,
                format!(
                    "`impl Trait` {} are not supported; name a concrete type",
                    self.what
                ),
            );
        }
        fn visit_type_reference(&mut self, node: &'ast syn::TypeReference) {
            self.errors.spanned(
                node,
                format!(
                    "borrowed {} are not supported: values cross the network; use an owned \
                     type such as `String` or `Vec<T>`",
                    self.what
                ),
            );
        }
        fn visit_lifetime(&mut self, node: &'ast syn::Lifetime) {
            if node.ident != "static" {
                self.errors.spanned(
                    node,
                    format!("{} cannot borrow: use owned types", self.what),
                );
            }
        }
    }
    Finder { what, errors }.visit_type(ty);
}

#[cfg(test)]
mod tests {
    use quote::ToTokens;
    use syn::parse_quote;

    use super::{
        Errors, ItemTrait, Service, Type, check_owned, download, is_byte_string, service,
        streaming_item,
    };

    /// The service `item` makes, or the errors it gets, as text.
    fn parsed(item: ItemTrait) -> Result<Service, String> {
        let mut errors = Errors::default();
        let parsed = service(proc_macro2::TokenStream::new(), item, &mut errors);
        match errors.finish() {
            Ok(()) => Ok(parsed),
            Err(error) => Err(error.into_iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn arguments_are_plain_names() {
        for item in [
            parse_quote!(
                trait T {
                    async fn f(&self, ref a: u8);
                }
            ),
            parse_quote!(
                trait T {
                    async fn f(&self, a @ _: u8);
                }
            ),
        ] {
            let refused = parsed(item).err().expect("refused");
            assert!(
                refused.starts_with("rpc arguments must be plain names"),
                "{refused}"
            );
        }
        let service = parsed(parse_quote!(
            trait T {
                async fn f(&self, a: u8);
            }
        ))
        .expect("a service");
        assert_eq!(service.methods[0].args[0].ident, "a");
    }

    /// A hand-written `impl Future` is refused, saying what to write: its `Output`, whatever
    /// else its bounds name.
    #[test]
    fn a_future_s_output_is_what_to_write() {
        let refused = parsed(parse_quote!(
            trait T {
                fn f(&self) -> impl Future<Other = u8, Output = u16> + Send;
            }
        ))
        .err()
        .expect("refused");
        assert!(
            refused.starts_with("write `async fn f(...) -> u16`"),
            "{refused}"
        );
    }

    #[test]
    fn only_static_lifetimes_are_owned() {
        let mut errors = Errors::default();
        check_owned(&parse_quote!(Cow<'static, str>), "arguments", &mut errors);
        assert!(errors.finish().is_ok());
        let mut errors = Errors::default();
        check_owned(&parse_quote!(Cow<'a, str>), "arguments", &mut errors);
        let refused = errors.finish().expect_err("borrows").to_string();
        assert_eq!(refused, "arguments cannot borrow: use owned types");
    }

    #[test]
    fn only_a_plain_path_named_streaming_streams() {
        let mut errors = Errors::default();
        let item = streaming_item(&parse_quote!(Streaming<u8>), &mut errors);
        assert_eq!(
            item.map(|ty| ty.to_token_stream().to_string()),
            Some("u8".to_owned())
        );
        let mut errors = Errors::default();
        assert!(streaming_item(&parse_quote!(<X>::Streaming<u8>), &mut errors).is_none());
    }

    /// What a return type streams, as text: the items, the error, and whether it was refused.
    fn downloads(output: Type) -> (Option<String>, Option<String>, bool) {
        let mut errors = Errors::default();
        let text = |ty: Type| ty.to_token_stream().to_string();
        let (items, error) = download(&output, &mut errors);
        (items.map(text), error.map(text), errors.finish().is_err())
    }

    #[test]
    fn a_result_of_a_stream_streams_its_items_or_sends_its_error() {
        let some = |text: &str| Some(text.to_owned());
        let fallible = downloads(parse_quote!(Result<Streaming<u8>, String>));
        assert_eq!(fallible, (some("u8"), some("String"), false));
        let qualified = downloads(parse_quote!(std::result::Result<Streaming<u8>, E>));
        assert_eq!(qualified, (some("u8"), some("E"), false));
        assert_eq!(
            downloads(parse_quote!(Streaming<u8>)),
            (some("u8"), None, false)
        );
        assert_eq!(
            downloads(parse_quote!(Result<u8, String>)),
            (None, None, false)
        );
        for refused in [
            parse_quote!(io::Result<Streaming<u8>>),
            parse_quote!(Result<Streaming<u8>, Streaming<u8>>),
            parse_quote!(Result<Streaming, String>),
            parse_quote!(Result<Option<Streaming<u8>>, String>),
        ] {
            let (items, error, failed) = downloads(refused);
            assert!(failed, "refused");
            assert!(error.is_none() || items.is_some(), "no error without items");
        }
    }

    #[test]
    fn byte_strings_are_recognised_in_every_standard_spelling() {
        assert!(is_byte_string(&parse_quote!(Vec<u8>)));
        assert!(is_byte_string(&parse_quote!(std::vec::Vec<u8>)));
        assert!(is_byte_string(&parse_quote!(
            ::std::vec::Vec<::core::primitive::u8>
        )));
        assert!(is_byte_string(&parse_quote!(
            alloc::vec::Vec<std::primitive::u8>
        )));
        assert!(is_byte_string(&parse_quote!(ByteBuf)));
        assert!(is_byte_string(&parse_quote!(serde_bytes::ByteBuf)));
        assert!(is_byte_string(&parse_quote!(::serde_bytes::ByteBuf)));
        assert!(is_byte_string(&parse_quote!((Vec<u8>))));
        // A type a `macro_rules!` macro passed on, in a group of no delimiters.
        let grouped = Type::Group(syn::TypeGroup {
            group_token: Default::default(),
            elem: Box::new(parse_quote!(ByteBuf)),
        });
        assert!(is_byte_string(&grouped));
    }

    #[test]
    fn other_types_keep_serdes_encoding() {
        assert!(!is_byte_string(&parse_quote!(Vec<u16>)));
        assert!(!is_byte_string(&parse_quote!(Vec<i8>)));
        assert!(!is_byte_string(&parse_quote!(Option<Vec<u8>>)));
        // A stream of byte strings is a stream: its items go through serde, one frame each.
        assert!(!is_byte_string(&parse_quote!(Streaming<Vec<u8>>)));
        assert!(!is_byte_string(&parse_quote!(rpc_core::Streaming<ByteBuf>)));
        assert!(!is_byte_string(&parse_quote!(mine::Vec<u8>)));
        assert!(!is_byte_string(&parse_quote!(Vec<mine::u8>)));
        assert!(!is_byte_string(&parse_quote!(Vec<u8, Global>)));
        assert!(!is_byte_string(&parse_quote!(VecDeque<u8>)));
        assert!(!is_byte_string(&parse_quote!([u8; 4])));
        assert!(!is_byte_string(&parse_quote!(Vec)));
        assert!(!is_byte_string(&parse_quote!(mine::ByteBuf)));
        assert!(!is_byte_string(&parse_quote!(serde_bytes::Bytes)));
        assert!(!is_byte_string(&parse_quote!(ByteBuf<u8>)));
        assert!(!is_byte_string(&parse_quote!(Option<ByteBuf>)));
        assert!(!is_byte_string(&parse_quote!(<X>::ByteBuf)));
    }
}
