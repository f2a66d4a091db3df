//! Writes the code for a validated service. Everything is named by absolute path and every
//! local the generated code introduces has a mixed-site span, so nothing the user declares can
//! capture or shadow it.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::Ident;
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::bounds::WireTypes;
use crate::parse::{Arg, Method, Service};

pub(crate) fn service(service: &Service) -> TokenStream {
    let wire = WireTypes::of(service);
    let service_trait = service_trait(service);
    let request = request_enum(service, &wire);
    let response = response_enum(service, &wire);
    let client = client(service, &wire);
    let server = server(service, &wire);
    let schema = schema(service, &wire);
    quote! {
        #service_trait
        #request
        #response
        #client
        #server
        #schema
    }
}

/// A name for a generated local that user code cannot see or shadow.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

fn service_trait(service: &Service) -> TokenStream {
    let Service {
        attrs,
        vis,
        ident,
        supertraits,
        methods,
        ..
    } = service;
    let supertraits = supertraits.iter();
    let methods = methods.iter().map(|method| {
        let Method {
            attrs,
            ident,
            args,
            output,
            ..
        } = method;
        let arg_idents = args.iter().map(|arg| &arg.ident);
        let arg_types = args.iter().map(|arg| &arg.ty);
        let future = quote_spanned! {output.span()=>
            impl ::core::future::Future<Output = #output> + ::core::marker::Send
        };
        quote! {
            #(#attrs)*
            fn #ident(&self, #(#arg_idents: #arg_types),*) -> #future;
        }
    });
    quote! {
        #(#attrs)*
        #vis trait #ident: ::core::marker::Send + ::core::marker::Sync + 'static #(+ #supertraits)* {
            #(#methods)*
        }
    }
}

/// A public-facing enum of the service, serializable through rpc-core's own serde.
fn serde_enum(
    service: &Service,
    suffix: &str,
    doc: &str,
    variants: impl Iterator<Item = TokenStream>,
) -> TokenStream {
    let vis = &service.vis;
    let name = format_ident!("{}{suffix}", service.ident);
    quote! {
        #[doc = #doc]
        #[derive(::rpc_core::__private::serde::Serialize, ::rpc_core::__private::serde::Deserialize)]
        #[serde(crate = "::rpc_core::__private::serde")]
        #vis enum #name {
            #(#variants)*
        }
    }
}

/// `FooRequest::Variant { a, b }`, or `FooRequest::Variant` for a method without arguments: the
/// same tokens build the request and match it.
fn request_variant(request: &Ident, method: &Method) -> TokenStream {
    let variant = &method.variant;
    if method.args.is_empty() {
        quote! { #request::#variant }
    } else {
        let idents = method.args.iter().map(|arg| &arg.ident);
        quote! { #request::#variant { #(#idents),* } }
    }
}

fn request_enum(service: &Service, wire: &WireTypes) -> TokenStream {
    let mut bounds = wire.field_bounds();
    let doc = format!(
        "A call of the [`{}`] service: one variant per method, one field per argument.",
        service.ident
    );
    let variants = service.methods.iter().map(|method| {
        let cfgs = &method.cfgs;
        let variant = &method.variant;
        let doc = format!("The arguments of [`{}::{}`].", service.ident, method.ident);
        if method.args.is_empty() {
            return quote! { #(#cfgs)* #[doc = #doc] #variant, };
        }
        let fields = method.args.iter().map(|arg| {
            let (ident, ty) = (&arg.ident, &arg.ty);
            if arg.stream_item.is_some() {
                let doc = format!(
                    "The `{ident}` stream. Not serialized: a deserialized request holds an \
                     empty stream."
                );
                return quote! { #[doc = #doc] #[serde(skip)] #ident: #ty };
            }
            let doc = format!("The `{ident}` argument.");
            let bound = bounds.attribute(method, ty);
            quote! { #[doc = #doc] #bound #ident: #ty }
        });
        quote! { #(#cfgs)* #[doc = #doc] #variant { #(#fields),* }, }
    });
    serde_enum(service, "Request", &doc, variants)
}

fn response_enum(service: &Service, wire: &WireTypes) -> TokenStream {
    let mut bounds = wire.field_bounds();
    let doc = format!(
        "A result of the [`{}`] service: one variant per method, holding its return value.",
        service.ident
    );
    let variants = service.methods.iter().map(|method| {
        let Method {
            cfgs,
            variant,
            output,
            ..
        } = method;
        let doc = format!("What [`{}::{}`] returned.", service.ident, method.ident);
        if method.download_error.is_some() {
            let doc =
                format!("{doc} Not serialized: a deserialized response holds an empty stream.");
            return quote! {
                #(#cfgs)*
                #[doc = #doc]
                #variant(#[serde(skip, default = "::rpc_core::__private::no_stream")] #output),
            };
        }
        if method.download.is_some() {
            let doc =
                format!("{doc} Not serialized: a deserialized response holds an empty stream.");
            return quote! { #(#cfgs)* #[doc = #doc] #variant(#[serde(skip)] #output), };
        }
        let bound = bounds.attribute(method, output);
        quote! { #(#cfgs)* #[doc = #doc] #variant(#bound #output), }
    });
    serde_enum(service, "Response", &doc, variants)
}

fn method_info(method: &Method) -> TokenStream {
    let name = &method.name;
    let idempotent = method.idempotent;
    quote! {
        ::rpc_core::MethodInfo { name: #name, idempotent: #idempotent }
    }
}

/// The name of the function that traces a service's schema, once.
fn schema_fn(service: &Service) -> Ident {
    format_ident!("__rpc_schema_{}", service.ident)
}

/// The function that traces the service's schema the first time it is asked for.
fn schema(service: &Service, wire: &WireTypes) -> TokenStream {
    let bounds = wire.predicates();
    let function = schema_fn(service);
    let name = service.ident.to_string();
    let texts = &service.texts;
    let tracer = local("tracer");
    let methods = service.methods.iter().map(|method| {
        let Method {
            cfgs,
            name,
            idempotent,
            ..
        } = method;
        let opaque = method
            .opaque
            .map(|fingerprint| quote! { .opaque(#fingerprint) });
        let args = method.plain_args().map(|arg| {
            let (ty, name) = (&arg.ty, arg.ident.unraw().to_string());
            quote! { .arg::<#ty>(#name) }
        });
        let upload = method.upload().map(|upload| {
            let (item, name) = (&upload.stream_item, upload.ident.unraw().to_string());
            quote! { .upload::<#item>(#name) }
        });
        let result = match (&method.download, &method.download_error) {
            (Some(item), Some(error)) => quote! { .streams_or_fails::<#item, #error>() },
            (Some(item), None) => quote! { .streams::<#item>() },
            (None, _) => {
                let output = &method.output;
                quote! { .returns::<#output>() }
            }
        };
        quote! {
            #(#cfgs)*
            #tracer.method(#name, #idempotent) #opaque #(#args)* #upload #result;
        }
    });
    quote! {
        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #function() -> &'static ::core::result::Result<
            ::rpc_core::schema::ServiceSchema,
            ::rpc_core::schema::SchemaError,
        >
        where
            #bounds
        {
            static SCHEMA: ::rpc_core::__private::OnceLock<
                ::core::result::Result<
                    ::rpc_core::schema::ServiceSchema,
                    ::rpc_core::schema::SchemaError,
                >,
            > = ::rpc_core::__private::OnceLock::new();
            SCHEMA.get_or_init(|| {
                let mut #tracer = ::rpc_core::schema::ServiceTracer::with_texts(#name, &[#(#texts),*]);
                #(#methods)*
                #tracer.finish()
            })
        }
    }
}

fn service_info(service: &Service) -> TokenStream {
    let name = service.ident.to_string();
    let methods = service.methods.iter().map(|method| {
        let cfgs = &method.cfgs;
        let info = method_info(method);
        quote! { #(#cfgs)* #info }
    });
    let schema = schema_fn(service);
    quote! {
        ::rpc_core::ServiceInfo { name: #name, methods: &[#(#methods),*], schema: #schema }
    }
}

/// An argument as the server's decoder sees it, wrapped when it comes as a byte string.
fn received_form(arg: &Arg) -> TokenStream {
    let ident = &arg.ident;
    if arg.as_bytes {
        quote! { ::rpc_core::__private::ByteVec(#ident) }
    } else {
        quote! { #ident }
    }
}

/// An argument as the client's encoder sees it. A `Vec<u8>` or `ByteBuf` goes as a byte string
/// from its own memory (a `Payload` takes it over without copying), not copied into the frame;
/// the bytes on the wire are the same.
fn sent_form(arg: &Arg) -> TokenStream {
    let ident = &arg.ident;
    if arg.as_bytes {
        quote! { ::rpc_core::__private::outgoing_bytes(#ident) }
    } else {
        quote! { #ident }
    }
}

fn client(service: &Service, wire: &WireTypes) -> TokenStream {
    let bounds = wire.predicates();
    let vis = &service.vis;
    let trait_ident = &service.ident;
    let name = format_ident!("{}Client", service.ident);
    let doc = format!(
        "A client of the [`{trait_ident}`] service: one `async fn` per method, each returning \
         `Result<_, RpcError>`.\n\nCheap to clone; clones share one connection, over which any \
         number of calls may be in flight."
    );
    let info = service_info(service);
    let channel = local("channel");
    let (request, response) = (
        format_ident!("{}Request", service.ident),
        format_ident!("{}Response", service.ident),
    );
    let server = format_ident!("{}Server", service.ident);
    let (answer, value) = (local("answer"), local("value"));
    let methods = service.methods.iter().map(|method| {
        let Method {
            cfgs,
            docs,
            deprecated,
            ident,
            args,
            output,
            ..
        } = method;
        let arg_idents = args.iter().map(|arg| &arg.ident);
        let arg_types = args.iter().map(|arg| &arg.ty);
        let plain: Vec<TokenStream> = method.plain_args().map(sent_form).collect();
        let info = method_info(method);
        let channel_call = |call: TokenStream| quote! { self.#channel.#call.await };
        let fallible = method.download_error.is_some();
        let call = match (method.upload(), method.download.is_some()) {
            // Read into memory of its own when large, a byte string becomes the result as it is.
            (None, false) if method.output_as_bytes => quote! {
                ::rpc_core::__private::call_byte_string(&self.#channel, &#info, &(#(#plain,)*))
                    .await
            },
            (None, false) => channel_call(quote! { call(&#info, &(#(#plain,)*)) }),
            (None, true) if fallible => {
                channel_call(quote! { call_streaming_or_error(&#info, &(#(#plain,)*)) })
            }
            (None, true) => channel_call(quote! { call_streaming(&#info, &(#(#plain,)*)) }),
            (Some(upload), false) => {
                let upload = &upload.ident;
                let call = channel_call(quote! { call_upload(&#info, &(#(#plain,)*), #upload) });
                if method.output_as_bytes {
                    quote! { #call.map(::rpc_core::__private::ByteVec::into_bytes) }
                } else {
                    call
                }
            }
            (Some(upload), true) => {
                let upload = &upload.ident;
                let call = if fallible {
                    quote! { call_bidi_or_error }
                } else {
                    quote! { call_bidi }
                };
                channel_call(quote! { #call(&#info, &(#(#plain,)*), #upload) })
            }
        };
        let name = &method.name;
        let variant = &method.variant;
        let build = request_variant(&request, method);
        let local_value = if fallible {
            let stream = local("stream");
            quote! {
                ::core::result::Result::map(#value, |#stream| {
                    ::rpc_core::__private::local_stream(&self.#channel, &#info, #stream)
                })
            }
        } else if method.download.is_some() {
            quote! { ::rpc_core::__private::local_stream(&self.#channel, &#info, #value) }
        } else {
            quote! { #value }
        };
        quote! {
            #(#cfgs)*
            #(#docs)*
            #(#deprecated)*
            // The trait decides how many arguments there are; a lint belongs there, not here.
            #[allow(clippy::too_many_arguments)]
            #vis async fn #ident(&self, #(#arg_idents: #arg_types),*)
                -> ::core::result::Result<#output, ::rpc_core::RpcError>
            {
                if ::rpc_core::__private::is_local(&self.#channel) {
                    let #answer = ::rpc_core::__private::call_local::<#request, #response>(
                        &self.#channel,
                        &#info,
                        #build,
                    )
                    .await?;
                    // With one method, no other response is possible.
                    #[allow(unreachable_patterns)]
                    return match #answer {
                        #response::#variant(#value) => ::core::result::Result::Ok(#local_value),
                        _ => ::core::result::Result::Err(
                            ::rpc_core::__private::wrong_response(#name),
                        ),
                    };
                }
                #call
            }
        }
    });
    let stream = local("__RpcStream");
    let (client, req) = (local("client"), local("request"));
    let dispatch_arms = service.methods.iter().map(|method| {
        let Method {
            cfgs,
            ident,
            variant,
            args,
            ..
        } = method;
        let idents = args.iter().map(|arg| &arg.ident);
        let pattern = request_variant(&request, method);
        // Called by path: by method syntax, a method named like a trait method that takes `self`
        // by value (`into`) would be that trait's.
        quote! {
            #(#cfgs)*
            #pattern => #name::#ident(&#client, #(#idents),*).await.map(#response::#variant),
        }
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #name {
            #channel: ::rpc_core::Channel,
        }

        impl #name
        where
            #bounds
        {
            /// Connects over TCP to `addr`, with the default settings.
            #vis async fn connect(
                addr: impl ::rpc_core::ServerAddr,
            ) -> ::core::result::Result<Self, ::rpc_core::RpcError> {
                Self::builder().connect(addr).await
            }

            /// Connects over a stream you opened (a Unix socket, an in-memory pipe, TLS), with
            /// the default settings.
            #vis async fn from_stream<#stream>(
                stream: #stream,
            ) -> ::core::result::Result<Self, ::rpc_core::RpcError>
            where
                #stream: ::rpc_core::__private::AsyncRead
                    + ::rpc_core::__private::AsyncWrite
                    + ::core::marker::Send
                    + 'static,
            {
                Self::builder().connect_stream(stream).await
            }

            /// A client that calls `implementation` in this process: no serialization, no
            /// socket, the same deadline, cancellation and `rpc_core::Context` as a remote
            /// call. For settings (deadline, metadata), use `builder().local(...)`.
            #vis fn local<#stream: #trait_ident>(implementation: #stream) -> Self {
                Self::builder().local(#server::new(implementation))
            }

            /// A client of this service over the connections of `other`, a client of another
            /// service: for a server of several services (`rpc_core::Services`), clients of
            /// each share one connection. See `rpc_core::Channel::client`.
            #vis fn sharing(other: &impl ::rpc_core::ServiceClient) -> Self {
                ::rpc_core::ServiceClient::channel(other).client()
            }

            /// Settings for a new connection: default deadline and metadata, frame limit,
            /// timeouts, keep-alive.
            #vis fn builder() -> ::rpc_core::ClientBuilder<Self> {
                ::rpc_core::ClientBuilder::new()
            }

            /// The same connection, with calls that fail with `RpcError::DeadlineExceeded` if
            /// not answered within `deadline`. The server drops the handler then too.
            #[must_use]
            #vis fn with_deadline(&self, deadline: ::core::time::Duration) -> Self {
                Self { #channel: self.#channel.with_deadline(deadline) }
            }

            /// The same connection, with `key` set to `value` in the metadata of every call; the
            /// handler reads it through `rpc_core::Context::current().metadata()`.
            #[must_use]
            #vis fn with_metadata(
                &self,
                key: impl ::core::convert::AsRef<::core::primitive::str>,
                value: impl ::core::convert::AsRef<[::core::primitive::u8]>,
            ) -> Self {
                Self { #channel: self.#channel.with_metadata(key, value) }
            }

            #(#methods)*
        }

        impl ::rpc_core::ServiceClient for #name
        where
            #bounds
        {
            const INFO: ::rpc_core::ServiceInfo = #info;
            type Request = #request;
            type Response = #response;

            // A deprecated method is still served and dispatched; its callers are warned.
            #[allow(deprecated)]
            fn dispatch(
                &self,
                #req: #request,
            ) -> ::rpc_core::__private::BoxFuture<
                ::core::result::Result<#response, ::rpc_core::RpcError>,
            > {
                let #client = ::core::clone::Clone::clone(self);
                ::rpc_core::__private::box_future(async move {
                    match #req {
                        #(#dispatch_arms)*
                    }
                })
            }

            fn from_channel(channel: ::rpc_core::Channel) -> Self {
                Self { #channel: channel }
            }

            fn channel(&self) -> &::rpc_core::Channel {
                &self.#channel
            }
        }

        ::rpc_core::__tower_client!(#name where #bounds);
    }
}

fn server(service: &Service, wire: &WireTypes) -> TokenStream {
    let bounds = wire.predicates();
    let vis = &service.vis;
    let trait_ident = &service.ident;
    let name = format_ident!("{}Server", service.ident);
    let request = format_ident!("{}Request", service.ident);
    let response = format_ident!("{}Response", service.ident);
    let doc = format!(
        "Serves an implementation of [`{trait_ident}`]: decodes each request, calls the \
         implementation, encodes the result. Give it to `rpc_core::Server::serve`.\n\nCheap to \
         clone; clones share the implementation."
    );
    let info = service_info(service);
    let implementation = local("implementation");
    let imp = local("__RpcImpl");
    let (method, args, streams, req, resp, out, value) = (
        local("method"),
        local("args"),
        // Unused when no method streams an argument, or every method streams its result.
        local("_streams"),
        local("request"),
        local("response"),
        local("_out"),
        local("value"),
    );

    let decode_arms = service.methods.iter().map(|method| {
        let Method { cfgs, name, .. } = method;
        let idents = method.plain_args().map(received_form);
        let types = method.plain_args().map(|arg| {
            if arg.as_bytes {
                quote! { ::rpc_core::__private::ByteVec }
            } else {
                arg.ty.to_token_stream()
            }
        });
        let build = request_variant(&request, method);
        let byte_strings = method.plain_args().filter(|arg| arg.as_bytes).map(|arg| {
            let ident = &arg.ident;
            quote! { let #ident = ::rpc_core::__private::ByteString::from_bytes(#ident); }
        });
        let attach = method.upload().map(|upload| {
            let (ident, item) = (&upload.ident, &upload.stream_item);
            quote! { let #ident = #streams.stream::<#item>(#name); }
        });
        quote! {
            #(#cfgs)*
            #name => ::rpc_core::__private::decode_args::<(#(#types,)*)>(#args)
                .map(|(#(#idents,)*)| {
                    #(#byte_strings)*
                    #attach
                    #build
                }),
        }
    });
    let byte_string_arms: Vec<TokenStream> = service
        .methods
        .iter()
        .filter(|method| method.ends_in_byte_string())
        .map(|method| {
            let Method { cfgs, name, .. } = method;
            quote! { #(#cfgs)* #name => true, }
        })
        .collect();
    // Most services have no such method: the provided `false` stands.
    let ends_in_byte_string = (!byte_string_arms.is_empty()).then(|| {
        quote! {
            fn ends_in_byte_string(#method: &::core::primitive::str) -> bool {
                match #method {
                    #(#byte_string_arms)*
                    _ => false,
                }
            }
        }
    });
    let name_arms = service.methods.iter().map(|method| {
        let Method {
            cfgs,
            name,
            variant,
            ..
        } = method;
        quote! { #(#cfgs)* #request::#variant { .. } => #name, }
    });
    let call_arms = service.methods.iter().map(|method| {
        let Method {
            cfgs,
            ident,
            variant,
            args: params,
            ..
        } = method;
        let idents = params.iter().map(|arg| &arg.ident);
        let pattern = request_variant(&request, method);
        quote! {
            #(#cfgs)*
            #pattern => #response::#variant(
                <#imp as #trait_ident>::#ident(&#implementation, #(#idents),*).await
            ),
        }
    });
    let encode_arms = service.methods.iter().map(|method| {
        let Method { cfgs, variant, .. } = method;
        let encode = if method.download_error.is_some() {
            quote! { ::rpc_core::__private::encode_stream_or_error(#value, #out) }
        } else if method.download.is_some() {
            quote! { ::rpc_core::__private::encode_stream(#value) }
        } else if method.output_as_bytes {
            quote! {
                ::rpc_core::__private::encode_value(
                    &::rpc_core::__private::outgoing_bytes(#value),
                    #out,
                )
            }
        } else {
            quote! { ::rpc_core::__private::encode_value(&#value, #out) }
        };
        quote! {
            #(#cfgs)*
            #response::#variant(#value) => #encode,
        }
    });

    quote! {
        #[doc = #doc]
        #vis struct #name<T> {
            #implementation: ::rpc_core::__private::Arc<T>,
        }

        impl<#imp: #trait_ident> #name<#imp> {
            /// Wraps the implementation that every connection and call will share.
            #vis fn new(implementation: #imp) -> Self {
                Self { #implementation: ::rpc_core::__private::Arc::new(implementation) }
            }
        }

        impl<#imp> ::core::clone::Clone for #name<#imp> {
            fn clone(&self) -> Self {
                Self { #implementation: ::core::clone::Clone::clone(&self.#implementation) }
            }
        }

        impl<#imp> ::core::fmt::Debug for #name<#imp> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#name)).finish_non_exhaustive()
            }
        }

        impl<#imp: #trait_ident> ::rpc_core::Service for #name<#imp>
        where
            #bounds
        {
            const INFO: ::rpc_core::ServiceInfo = #info;
            type Request = #request;
            type Response = #response;

            fn decode_request(
                #method: &::core::primitive::str,
                #args: &[::core::primitive::u8],
                #streams: &mut ::rpc_core::__private::InboundSlot<'_>,
            ) -> ::core::result::Result<#request, ::rpc_core::DecodeError> {
                match #method {
                    #(#decode_arms)*
                    _ => ::core::result::Result::Err(::rpc_core::DecodeError::UnknownMethod),
                }
            }

            #ends_in_byte_string

            fn method_name(#req: &#request) -> &'static ::core::primitive::str {
                match #req {
                    #(#name_arms)*
                }
            }

            #[allow(deprecated)]
            fn call(
                &self,
                #req: #request,
            ) -> impl ::core::future::Future<Output = #response> + ::core::marker::Send + 'static {
                let #implementation = ::core::clone::Clone::clone(&self.#implementation);
                async move {
                    match #req {
                        #(#call_arms)*
                    }
                }
            }

            fn encode_response(
                #resp: #response,
                #out: &mut ::rpc_core::__private::Vec<::core::primitive::u8>,
            ) -> ::core::result::Result<
                ::core::option::Option<::rpc_core::__private::Outbound>,
                ::rpc_core::CodecError,
            > {
                match #resp {
                    #(#encode_arms)*
                }
            }
        }
    }
}
