//! Generated code survives hostile surroundings: names that shadow the prelude, no prelude at
//! all, arguments named like the generated code's own locals, raw identifiers, and `#[cfg]` on
//! methods. Each service is then called end to end over an in-memory pipe.

#![allow(unreachable_pub)]

/// Everything here shadows a name a careless expansion would use unqualified.
#[allow(dead_code, non_camel_case_types)]
mod shadowing {
    use ::serde::{Deserialize, Serialize};

    pub type Result<T> = ::core::result::Result<T, ()>;
    pub type Option = ();
    pub struct Vec;
    pub struct Arc;
    pub struct Box;
    pub struct String;
    pub trait Send {}
    pub trait Sync {}
    pub trait Future {}
    pub trait Clone {}
    pub mod core {}
    pub mod std {}
    pub mod serde {}

    /// A user type named like the server's type parameter.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct T(pub u8);

    #[rpc_core::service]
    pub trait Shadowed {
        /// Arguments named like the generated code's locals.
        #[allow(clippy::too_many_arguments)]
        async fn locals(
            &self,
            implementation: u8,
            request: u8,
            channel: u8,
            method: u8,
            args: u8,
            out: u8,
            value: u8,
            response: u8,
        ) -> u32;
        async fn wrap(&self, t: T) -> T;
        async fn r#type(&self, r#in: u32) -> u32;
        #[cfg(any())]
        async fn compiled_out(&self, missing: DoesNotExist);
        #[cfg(test)]
        async fn compiled_in(&self);
    }

    pub struct Impl;

    impl Shadowed for Impl {
        #[allow(clippy::too_many_arguments)]
        async fn locals(
            &self,
            implementation: u8,
            request: u8,
            channel: u8,
            method: u8,
            args: u8,
            out: u8,
            value: u8,
            response: u8,
        ) -> u32 {
            [
                implementation,
                request,
                channel,
                method,
                args,
                out,
                value,
                response,
            ]
            .iter()
            .map(|&x| u32::from(x))
            .sum()
        }
        async fn wrap(&self, t: T) -> T {
            T(t.0 + 1)
        }
        async fn r#type(&self, r#in: u32) -> u32 {
            r#in * 2
        }
        async fn compiled_in(&self) {}
    }
}

mod no_prelude {
    #![no_implicit_prelude]

    #[::rpc_core::service]
    pub trait Quiet {
        async fn get(&self, key: ::std::string::String) -> ::std::option::Option<u64>;
        async fn nothing(&self);
        async fn reverse(&self, bytes: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8>;
        async fn rotate(&self, bytes: ::serde_bytes::ByteBuf) -> ::serde_bytes::ByteBuf;
    }

    pub struct Impl;

    impl Quiet for Impl {
        async fn get(&self, key: ::std::string::String) -> ::std::option::Option<u64> {
            ::std::option::Option::Some(key.len() as u64)
        }
        async fn nothing(&self) {}
        async fn reverse(&self, mut bytes: ::std::vec::Vec<u8>) -> ::std::vec::Vec<u8> {
            bytes.reverse();
            bytes
        }
        async fn rotate(&self, mut bytes: ::serde_bytes::ByteBuf) -> ::serde_bytes::ByteBuf {
            bytes.rotate_left(1);
            bytes
        }
    }
}

/// Traits named as generic parameters usually are.
mod one_letter {
    #[rpc_core::service]
    pub trait S {
        async fn twice(&self, n: u32) -> u32;
    }

    #[rpc_core::service]
    pub trait T {
        async fn thrice(&self, n: u32) -> u32;
    }

    pub struct Impl;

    impl S for Impl {
        async fn twice(&self, n: u32) -> u32 {
            n * 2
        }
    }

    impl T for Impl {
        async fn thrice(&self, n: u32) -> u32 {
            n * 3
        }
    }
}

/// Methods named like methods of traits every type has.
mod common_method_names {
    #[rpc_core::service]
    pub trait Conversions {
        async fn into(&self) -> u8;
        async fn clone(&self) -> u8;
        async fn to_owned(&self) -> u8;
    }

    pub struct Impl;

    impl Conversions for Impl {
        async fn into(&self) -> u8 {
            1
        }
        async fn clone(&self) -> u8 {
            2
        }
        async fn to_owned(&self) -> u8 {
            3
        }
    }
}

use rpc_core::{Service, ServiceClient};
use shadowing::{ShadowedClient, ShadowedRequest, ShadowedServer, T};

async fn shadowed_client() -> ShadowedClient {
    let (client_end, server_end) = tokio::io::duplex(4096);
    tokio::spawn(rpc_core::serve_connection(
        server_end,
        ShadowedServer::new(shadowing::Impl),
    ));
    ShadowedClient::from_stream(client_end)
        .await
        .expect("handshake")
}

#[tokio::test]
async fn shadowed_names_do_not_break_the_expansion() {
    let client = shadowed_client().await;
    assert_eq!(
        client.locals(1, 2, 3, 4, 5, 6, 7, 8).await.expect("locals"),
        36
    );
    assert_eq!(client.wrap(T(1)).await.expect("wrap"), T(2));
    client.compiled_in().await.expect("compiled_in");
}

#[tokio::test]
async fn raw_identifiers_keep_their_meaning_and_lose_the_prefix_on_the_wire() {
    let client = shadowed_client().await;
    assert_eq!(client.r#type(21).await.expect("r#type"), 42);
    let request = ShadowedRequest::Type { r#in: 1 };
    assert!(matches!(request, ShadowedRequest::Type { r#in: 1 }));
    let names: Vec<&str> = ShadowedClient::INFO
        .methods
        .iter()
        .map(|m| m.name)
        .collect();
    assert!(names.contains(&"type"), "{names:?}");
}

#[tokio::test]
async fn cfg_on_a_method_applies_to_everything_generated_for_it() {
    let names: Vec<&str> = <ShadowedServer<shadowing::Impl> as Service>::INFO
        .methods
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["locals", "wrap", "type", "compiled_in"]);
}

#[tokio::test]
async fn no_implicit_prelude_is_fine() {
    let (client_end, server_end) = tokio::io::duplex(4096);
    tokio::spawn(rpc_core::serve_connection(
        server_end,
        no_prelude::QuietServer::new(no_prelude::Impl),
    ));
    let client = no_prelude::QuietClient::from_stream(client_end)
        .await
        .expect("handshake");
    assert_eq!(client.get("four".into()).await.expect("get"), Some(4));
    client.nothing().await.expect("nothing");
    assert_eq!(
        client.reverse(vec![1, 2, 3]).await.expect("reverse"),
        [3, 2, 1]
    );
    let rotated = client.rotate(vec![1, 2, 3].into()).await.expect("rotate");
    assert_eq!(rotated.into_vec(), [2, 3, 1]);
}

#[tokio::test]
async fn traits_named_like_generic_parameters_are_fine() {
    let (client_end, server_end) = tokio::io::duplex(4096);
    tokio::spawn(rpc_core::serve_connection(
        server_end,
        one_letter::SServer::new(one_letter::Impl),
    ));
    let client = one_letter::SClient::from_stream(client_end)
        .await
        .expect("handshake");
    assert_eq!(client.twice(2).await.expect("twice"), 4);
    let local = one_letter::TClient::local(one_letter::Impl);
    assert_eq!(local.thrice(2).await.expect("thrice"), 6);
}

#[tokio::test]
async fn methods_named_like_common_trait_methods_are_the_services() {
    use common_method_names::{ConversionsClient, ConversionsRequest, ConversionsResponse, Impl};
    let client = ConversionsClient::local(Impl);
    // The client's own dispatch, as its tower service runs a request, reaches each of them.
    let requests = [
        ConversionsRequest::Into,
        ConversionsRequest::Clone,
        ConversionsRequest::ToOwned,
    ];
    let mut answers = Vec::new();
    for request in requests {
        answers.push(match client.dispatch(request).await.expect("answered") {
            ConversionsResponse::Into(n) => ("into", n),
            ConversionsResponse::Clone(n) => ("clone", n),
            ConversionsResponse::ToOwned(n) => ("to_owned", n),
        });
    }
    assert_eq!(answers, [("into", 1), ("clone", 2), ("to_owned", 3)]);
    assert_eq!(ConversionsClient::into(&client).await.expect("into"), 1);
}

#[test]
fn the_request_and_response_enums_are_serde_types() {
    let request = no_prelude::QuietRequest::Get { key: "k".into() };
    let bytes = postcard_bytes(&request);
    assert_eq!(bytes, [0, 1, b'k'], "variant 0, then the field");
    let response = no_prelude::QuietResponse::Get(Some(7));
    assert_eq!(postcard_bytes(&response), [0, 1, 7]);
    let unit = no_prelude::QuietRequest::Nothing;
    assert_eq!(postcard_bytes(&unit), [1]);
}

fn postcard_bytes<V: serde::Serialize>(value: &V) -> Vec<u8> {
    // The enums' serde encoding, through the same serializer the runtime uses.
    let mut out = Vec::new();
    rpc_core::__private::encode_value(value, &mut out).expect("encodes");
    out
}
