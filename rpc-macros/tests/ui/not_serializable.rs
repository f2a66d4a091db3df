pub struct Point {
    pub x: i64,
}

#[rpc_core::service]
pub trait Plot {
    async fn draw(&self, point: Point);
}

fn main() {}
