//! Connected loopback TCP pairs, for the unit tests of code that reads or places sockets.

/// A connected pair of blocking sockets on loopback: the connecting end, and the one accepted.
/// Either can be handed to a runtime later, or to none.
pub(crate) fn blocking_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let connected =
        std::net::TcpStream::connect(listener.local_addr().expect("an address")).expect("connects");
    let (accepted, _) = listener.accept().expect("accepts");
    (connected, accepted)
}

/// A connected pair of tokio sockets on loopback: the connecting end, and the one accepted.
pub(crate) async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    let (connected, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (connected.expect("connects"), accepted.expect("accepts").0)
}
