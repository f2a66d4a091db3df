//! Bidirectional streaming: a chat room. Each member sends a stream of lines and receives a
//! stream of everything said in the room.
//!
//! ```text
//! cargo run -p rpc-examples --bin chat
//! ```

use rpc_core::{Server, Streaming};
use rpc_examples::streams::{ChatLine, ChatRoomClient, ChatRoomServer, Room};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr()?;
    tokio::spawn(server.serve(ChatRoomServer::new(Room::default())));

    let (alice_says, alice_lines) = Streaming::channel(8);
    let (bob_says, bob_lines) = Streaming::channel(8);
    let alice = ChatRoomClient::connect(addr).await?;
    let bob = ChatRoomClient::connect(addr).await?;
    let mut alice_hears = alice.chat("alice".into(), alice_lines).await?;
    let mut bob_hears = bob.chat("bob".into(), bob_lines).await?;

    // A conversation, each line sent once the previous one has been heard by both.
    let script = [
        (&alice_says, "hi bob"),
        (&bob_says, "hi alice, streaming works"),
        (&alice_says, "both ways, on one call each"),
    ];
    for (speaker, text) in script {
        speaker.send(text.to_owned()).await?;
        let heard_by_alice = next_line(&mut alice_hears).await?;
        let heard_by_bob = next_line(&mut bob_hears).await?;
        assert_eq!(heard_by_alice, heard_by_bob);
        println!("chat: {}: {}", heard_by_alice.user, heard_by_alice.text);
    }
    println!("chat: both members heard all 3 lines");
    Ok(())
}

async fn next_line(
    heard: &mut Streaming<ChatLine>,
) -> Result<ChatLine, Box<dyn std::error::Error>> {
    Ok(heard.next().await.ok_or("the room closed")??)
}
