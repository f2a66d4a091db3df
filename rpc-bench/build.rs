//! Generates tonic's client and server for the benchmark service from a description in Rust,
//! with prost messages derived by hand in `src/systems/tonic.rs`: no `.proto` file, no protoc.

use tonic_build::manual::{Builder, Method, Service};

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::systems::tonic::{input}"))
            .output_type(format!("crate::systems::tonic::{output}"))
            .codec_path("tonic_prost::ProstCodec")
    };
    let service = Service::builder()
        .name("Bench")
        .package("bench")
        .method(method("add", "Add", "AddRequest", "Number").build())
        .method(method("add_awaiting", "AddAwaiting", "AddRequest", "Number").build())
        .method(method("echo_vec", "EchoVec", "VecMessage", "VecMessage").build())
        .method(method("echo_bytes", "EchoBytes", "BytesMessage", "BytesMessage").build())
        .method(
            method("count", "Count", "Number", "Number")
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[service]);
}
