//! The `#[service]` attribute. Use it through `rpc_core::service`; its documentation here is
//! the attribute's whole manual.
//!
//! The work is split by phase: `parse` turns the trait into a plain model and reports every
//! shape it cannot serve, `validate` checks the rules between methods, `expand` writes the
//! code. Every error is spanned at the token that breaks the rule.

mod bounds;
mod expand;
mod fingerprint;
mod names;
mod parse;
mod validate;

use proc_macro::TokenStream;

/// Turns a trait into a remotely callable service: a client, a server dispatcher, and two enums
/// of its calls, generated beside it.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// pub struct DivideByZero;
///
/// #[rpc_core::service]
/// pub trait Calc {
///     /// Adds two numbers.
///     async fn add(&self, a: i64, b: i64) -> i64;
///     /// Divides; an application error is just a return type.
///     async fn div(&self, a: i64, b: i64) -> Result<i64, DivideByZero>;
/// }
///
/// struct MyCalc;
///
/// impl Calc for MyCalc {
///     async fn add(&self, a: i64, b: i64) -> i64 {
///         a + b
///     }
///     async fn div(&self, a: i64, b: i64) -> Result<i64, DivideByZero> {
///         a.checked_div(b).ok_or(DivideByZero)
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let server = rpc_core::Server::bind("127.0.0.1:0").await?;
///     let addr = server.local_addr()?;
///     tokio::spawn(server.serve(CalcServer::new(MyCalc)));
///
///     let client = CalcClient::connect(addr).await?;
///     assert_eq!(client.add(2, 3).await?, 5);
///     assert_eq!(client.div(1, 0).await?, Err(DivideByZero));
///     Ok(())
/// }
/// ```
///
/// # What it generates
///
/// For `pub trait Calc`, with the trait's visibility:
///
/// - **the trait**, each `async fn` declared as returning a `Send` future, with
///   `Send + Sync + 'static` as supertraits: implement it with plain `async fn`s, and the server
///   runs them on any thread;
/// - **`CalcRequest`**: an enum with one variant per method, in UpperCamelCase (`Add { a, b }`),
///   its fields named after the arguments;
/// - **`CalcResponse`**: an enum with one variant per method holding its return value
///   (`Add(i64)`);
/// - **`CalcClient`**, cheap to clone (clones share one connection, or a pool):
///   - `CalcClient::connect(addr)`, `CalcClient::from_stream(io)`, `CalcClient::builder()` (a
///     `rpc_core::ClientBuilder`: deadline, metadata, TLS, balancing...), and
///     `CalcClient::local(implementation)`, which calls an implementation in this process, and
///     `CalcClient::sharing(&other_client)`, a client over another service's connection to a
///     server of several services (`rpc_core::Services`);
///   - one `async fn` per method, with the trait method's doc comments and `#[deprecated]`
///     (the server still serves a deprecated method without a warning), returning
///     `Result<T, rpc_core::RpcError>`;
///   - `with_deadline(duration)` and `with_metadata(key, value)`: the same connection, with
///     calls that carry another deadline, or an entry more of metadata:
///
///     ```
///     # #[rpc_core::service] pub trait Calc { async fn add(&self, a: i64, b: i64) -> i64; }
///     # async fn run(client: CalcClient) -> Result<(), rpc_core::RpcError> {
///     use std::time::Duration;
///
///     let sum = client.with_deadline(Duration::from_millis(100)).add(2, 3).await?;
///     let traced = client.with_metadata("trace-id", "4bf92f35").add(2, 3).await?;
///     # Ok(()) }
///     ```
///   - with rpc-core's `tower` feature, it is a `tower::Service<CalcRequest>`;
/// - **`CalcServer<T: Calc>`**: `CalcServer::new(implementation)`, the `rpc_core::Service` a
///   `rpc_core::Server` serves.
///
/// Arguments and results are any types that implement serde's `Serialize` and
/// `DeserializeOwned`; a type that lacks one gets a compile error at the type, naming the missing
/// trait, and the generated items list such types in their where clauses. Each method's types get a schema, read from those implementations, and a
/// fingerprint of it that client and server compare before a call is sent.
///
/// # Method options
///
/// - `#[rpc(idempotent)]`: running the method twice does no harm, so a balancing client makes a
///   call whose connection was lost again on another server, within its deadline and retry
///   budget. Without it, such a call fails with `RpcError::Interrupted`.
/// - `#[rpc(opaque)]`: the method's types have no schema (a type postcard cannot carry, or whose
///   `Deserialize` refuses every made-up value); it is sent with a fingerprint of its
///   signature's text instead, and reflection shows its types by name only.
///
/// ```
/// #[rpc_core::service]
/// pub trait Jobs {
///     #[rpc(idempotent)]
///     async fn status(&self, job: u64) -> String;
///     async fn submit(&self, command: String) -> u64;
/// }
/// ```
///
/// # Service options
///
/// - `#[service(texts("SKU-0001", ...))]`: texts that the service's types of a form of their own
///   accept. A method's types get their schema by deserializing made-up values; where a type
///   reads a text, it is offered `""`, `"a"`, then these, then common forms (a date, an address,
///   an email address...). A validated newtype (`#[serde(try_from = "String")]`) that refuses
///   them all leaves the service without a schema (`SchemaProblem::TextRefused`, at serve and at
///   connect) unless one of its texts is named here. The texts change no fingerprint: the type
///   travels as the `String` it reads.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// /// Three capitals, a dash, four digits.
/// #[derive(Clone, Serialize, Deserialize)]
/// #[serde(try_from = "String", into = "String")]
/// pub struct Sku(String);
///
/// impl TryFrom<String> for Sku {
///     type Error = String;
///     fn try_from(text: String) -> Result<Sku, String> {
///         let b = text.as_bytes();
///         let valid = b.len() == 8 && b[..3].iter().all(u8::is_ascii_uppercase) && b[3] == b'-';
///         if valid { Ok(Sku(text)) } else { Err(format!("{text:?} is not a SKU")) }
///     }
/// }
///
/// impl From<Sku> for String {
///     fn from(sku: Sku) -> String {
///         sku.0
///     }
/// }
///
/// #[rpc_core::service(texts("ABC-0001"))]
/// pub trait Shop {
///     async fn price(&self, sku: Sku) -> u64;
/// }
///
/// use rpc_core::ServiceClient;
///
/// let schema = ShopClient::INFO.describe().expect("described with the service's text");
/// assert_eq!(schema.methods[0].args[0].schema, rpc_core::schema::Schema::Str);
/// ```
///
/// # Streams
///
/// A method that returns `rpc_core::Streaming<T>` sends its result item by item; one that takes
/// a `Streaming<T>` argument (at most one) receives it item by item; a method may do both. Items
/// flow under credit, so a slow reader holds back a fast producer, and the call's deadline
/// covers the whole stream. A method that may fail before its stream starts (a file that is not
/// there) returns `Result<Streaming<T>, E>`: the client gets the error, typed, instead of the
/// stream (`Result<Result<Streaming<T>, E>, RpcError>`).
///
/// ```
/// use rpc_core::Streaming;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # pub struct NoSuchFile;
///
/// #[rpc_core::service]
/// pub trait Logs {
///     /// Every line of `file`, then the ones written later.
///     async fn tail(&self, file: String) -> Streaming<String>;
///     /// Stores lines as they come; returns how many.
///     async fn append(&self, file: String, lines: Streaming<String>) -> u64;
///     /// The lines of `file`, or why there are none.
///     async fn read(&self, file: String) -> Result<Streaming<String>, NoSuchFile>;
/// }
/// ```
///
/// # `Vec<u8>`, `ByteBuf` and large binary data
///
/// An argument or return type written `Vec<u8>` (or `std::vec::Vec<u8>`) or `ByteBuf` (or
/// `serde_bytes::ByteBuf`) is sent from its own memory as one byte string, not copied into its
/// frame, and decoded as one, instead of a byte at a time as serde would for a `Vec<u8>`; the
/// bytes on the wire are the same. Only those spellings are recognised, and a type of another
/// crate named `ByteBuf` is refused at the type (write it as an alias to send it through
/// serde). A large one (64 KiB or more) that is the last argument or the result of a method
/// that streams no argument is also received into memory of its own rather than copied out of
/// its frame; `rpc_core::Payload` avoids that copy wherever it is.
///
/// # What it refuses
///
/// Each with an error at the offending token: a method that is not `async`; a receiver other
/// than `&self` (`&mut self`, `self`, a typed `self`); generic methods and generic traits (a
/// service is one name and one schema on the wire); borrowed or `impl Trait` arguments and
/// results; pattern arguments; default bodies; items other than methods; arguments to the
/// attribute; more than one streamed argument; a method name that clashes with the client's own
/// (`connect`, `from_stream`, `local`, `sharing`, `builder`, `with_deadline`, `with_metadata`), or two
/// methods that make the same variant name.
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let input = proc_macro2::TokenStream::from(input);
    match generate(args, input.clone()) {
        Ok(output) => output.into(),
        // Keep the user's trait so that its other uses still resolve, and add the errors.
        Err(error) => {
            let mut output = without_rpc_attributes(input);
            output.extend(error.into_compile_error());
            output.into()
        }
    }
}

/// The trait as written, less the `#[rpc(...)]` attributes only this macro understands.
fn without_rpc_attributes(input: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    let Ok(mut item) = syn::parse2::<syn::ItemTrait>(input.clone()) else {
        return input;
    };
    for trait_item in &mut item.items {
        if let syn::TraitItem::Fn(function) = trait_item {
            function.attrs.retain(|attr| !attr.path().is_ident("rpc"));
        }
    }
    quote::ToTokens::into_token_stream(item)
}

fn generate(
    args: proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
) -> syn::Result<proc_macro2::TokenStream> {
    let item: syn::ItemTrait = syn::parse2(input)?;
    let mut errors = parse::Errors::default();
    let service = parse::service(args, item, &mut errors);
    validate::service(&service, &mut errors);
    errors.finish()?;
    Ok(expand::service(&service))
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn doc_comments_carry_over_to_the_client_method() {
        let output = super::generate(
            quote!(),
            quote! {
                pub trait Calc {
                    /// Adds two numbers.
                    async fn add(&self, a: i64, b: i64) -> i64;
                }
            },
        )
        .expect("expands")
        .to_string();
        assert_eq!(
            output.matches("Adds two numbers.").count(),
            2,
            "once on the trait method, once on the client method: {output}"
        );
    }

    #[test]
    fn every_error_is_reported_in_one_pass() {
        let error = super::generate(
            quote!(),
            quote! {
                pub trait Calc {
                    fn add(&self) -> i64;
                    async fn connect(&self);
                }
            },
        )
        .expect_err("two problems");
        assert_eq!(error.into_iter().count(), 2);
    }
}
