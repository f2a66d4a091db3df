// A type missing a serde trait gets one error per missing trait, at its first appearance, wherever
// it travels: argument, result or stream item, in one method or several.

#[derive(serde::Serialize)]
pub struct Shape;

pub struct Color;

#[rpc_core::service]
pub trait Paint {
    async fn fill(&self, color: Color) -> Shape;
    async fn outline(&self, shape: Shape, color: Color);
    async fn palette(&self) -> rpc_core::Streaming<Color>;
}

fn main() {}
