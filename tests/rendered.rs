//! What `ServiceSchema::to_rust` writes, which is what `rpc describe` prints, is Rust that
//! compiles, and the client it generates calls the server described: the renderings of two
//! services, one of odd types and one of types that hold themselves, are checked in below
//! `rendered/`, compiled here as they are, and called. After a change to the rendering,
//! `RENDERED=overwrite cargo test -p rpc-tests --test rendered` writes them again.

use std::collections::HashMap;
use std::path::Path;

use rpc_core::schema::ServiceSchema;
use rpc_core::{ServiceClient, Streaming};
use rpc_tests::within;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[allow(dead_code)]
#[rustfmt::skip]
#[path = "rendered/odds.rs"]
mod odds;

#[allow(dead_code)]
#[rustfmt::skip]
#[path = "rendered/nest.rs"]
mod nest;

/// Checks that `file` below `rendered/` holds `schema` rendered, or writes it there when asked.
fn is_current(file: &str, schema: &ServiceSchema) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rendered")
        .join(file);
    let rust = schema.to_rust();
    if std::env::var_os("RENDERED").is_some_and(|asked| asked == "overwrite") {
        std::fs::write(&path, &rust).expect("writes the rendering");
    }
    let checked_in = std::fs::read_to_string(&path).expect("the checked-in rendering");
    assert!(
        checked_in == rust,
        "{} is not what to_rust writes now (RENDERED=overwrite writes it again):\n{rust}",
        path.display()
    );
}

#[test]
fn the_checked_in_renderings_are_current() {
    let schema = |info: &rpc_core::ServiceInfo| info.describe().expect("a schema").clone();
    is_current("odds.rs", &schema(&rpc_tests::odd::OddsClient::INFO));
    is_current("nest.rs", &schema(&rpc_tests::nest::NestClient::INFO));
}

/// `value` as the type `T` of the rendering reads its bytes.
fn read_as<T: DeserializeOwned>(value: &impl Serialize) -> T {
    let bytes = postcard::to_allocvec(value).expect("encodes");
    postcard::from_bytes(&bytes).expect("the rendered type reads the same bytes")
}

#[tokio::test]
async fn the_rendered_client_of_odd_types_calls_the_server() {
    use rpc_tests::odd::Odd;

    let addr = rpc_tests::odd::serve().await;
    let client = within("connecting", odds::OddsClient::connect(addr))
        .await
        .expect("connects: the fingerprints match");
    let sample: odds::Odd = read_as(&Odd::sample());
    assert_eq!(
        client.items(sample.clone()).await.expect("items"),
        Odd::sample().items()
    );
    // `names` is a set, rendered as a vector: the server's set gives it back in its own order.
    let as_set = |mut odd: odds::Odd| {
        odd.names.sort();
        odd
    };
    let echoed = client.echo(sample.clone()).await.expect("echo");
    assert_eq!(as_set(echoed), as_set(sample.clone()));
    let by_key = HashMap::from([
        (odds::Key::Plain, Some(Some(-5))),
        (odds::Key::Numbered(3), Some(None)),
        (odds::Key::Named { at: -2 }, Some(Some(i128::MAX))),
    ]);
    assert_eq!(client.present(by_key).await.expect("present"), 2);
    let sets = vec![vec!["a".to_owned(), "b".to_owned()], vec!["c".to_owned()]];
    let names = client.names(sets, odds::Unit, odds::Empty {});
    assert_eq!(names.await.expect("names"), 3);
    let mut samples = client.samples(3).await.expect("a stream");
    let mut received = 0;
    while let Some(item) = samples.next().await {
        assert_eq!(as_set(item.expect("an item")), as_set(sample.clone()));
        received += 1;
    }
    assert_eq!(received, 3);
    let upload = Streaming::iter([sample.clone(), sample]);
    assert_eq!(
        client.tally(upload).await.expect("tally"),
        2 * Odd::sample().items()
    );
    let mut numbered = client
        .numbered(2)
        .await
        .expect("answered")
        .expect("a stream");
    let mut keys = Vec::new();
    while let Some(key) = numbered.next().await {
        keys.push(key.expect("a key"));
    }
    assert_eq!(keys, [odds::Key::Numbered(0), odds::Key::Numbered(1)]);
    let refused = client.numbered(300).await.expect("answered");
    assert!(
        matches!(refused, Err(odds::Key::Numbered(255))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn the_rendered_client_of_types_that_hold_themselves_calls_the_server() {
    use rpc_tests::nest::{Chain, Tree};

    let addr = rpc_tests::nest::serve().await;
    let client = within("connecting", nest::NestClient::connect(addr))
        .await
        .expect("connects: the fingerprints match");
    let chain: nest::Chain = read_as(&Chain::of(5));
    assert_eq!(client.length(chain).await.expect("length"), 5);
    let made = client.make(3).await.expect("make");
    assert_eq!(made, read_as::<nest::Chain>(&Chain::of(3)));
    let tree = Tree::Node(HashMap::from([
        (1, Tree::Leaf),
        (2, Tree::Node(HashMap::new())),
    ]));
    let size = client.size(read_as(&tree)).await.expect("size");
    assert_eq!(size, tree.size());
    assert_eq!(client.count(vec![(); 4]).await.expect("count"), 4);
    assert_eq!(client.units(2).await.expect("units"), vec![(); 2]);
}
