//! The floor: length-prefixed postcard frames over one TCP connection, one call at a time, with
//! no ids, no multiplexing, no handshake. Nothing a framework does can be faster than this.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use super::System;

/// Raw postcard over TCP.
pub struct Raw;

/// One connection; calls take turns.
#[derive(Clone)]
pub struct RawClient(Arc<Mutex<Conn>>);

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    buf: Vec<u8>,
}

/// Requests: a tag byte, then the postcard arguments.
const ADD: u8 = 0;
const ECHO: u8 = 1;

async fn read_frame(reader: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> Option<()> {
    let len = reader.read_u32().await.ok()? as usize;
    buf.resize(len, 0);
    reader.read_exact(buf).await.ok()?;
    Some(())
}

async fn write_frame(writer: &mut BufWriter<OwnedWriteHalf>, tag: Option<u8>, body: &[u8]) {
    let len = body.len() + usize::from(tag.is_some());
    let _ = writer.write_u32(len as u32).await;
    if let Some(tag) = tag {
        let _ = writer.write_u8(tag).await;
    }
    let _ = writer.write_all(body).await;
}

async fn serve_connection(stream: TcpStream) {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::new(write);
    let mut buf = Vec::new();
    while read_frame(&mut reader, &mut buf).await.is_some() {
        let Some((&tag, args)) = buf.split_first() else {
            return;
        };
        let answer = match tag {
            ADD => {
                let Ok((a, b)) = postcard::from_bytes::<(u64, u64)>(args) else {
                    return;
                };
                postcard::to_stdvec(&a.wrapping_add(b)).unwrap_or_default()
            }
            _ => args.to_vec(),
        };
        write_frame(&mut writer, None, &answer).await;
        if reader.buffer().is_empty() {
            let _ = writer.flush().await;
        }
    }
}

impl RawClient {
    async fn call<A: Serialize, R: DeserializeOwned>(&self, tag: u8, args: &A) -> R {
        let mut conn = self.0.lock().await;
        let Conn {
            reader,
            writer,
            buf,
        } = &mut *conn;
        let body = postcard::to_stdvec(args).expect("encodes");
        write_frame(writer, Some(tag), &body).await;
        writer.flush().await.expect("writes");
        read_frame(reader, buf).await.expect("an answer");
        postcard::from_bytes(buf).expect("decodes")
    }
}

impl System for Raw {
    type Client = RawClient;
    type Buf = Bytes;

    async fn serve() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream));
            }
        });
        addr
    }

    async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        let (read, write) = stream.into_split();
        RawClient(Arc::new(Mutex::new(Conn {
            reader: BufReader::new(read),
            writer: BufWriter::new(write),
            buf: Vec::new(),
        })))
    }

    async fn add(client: &RawClient, a: u64, b: u64) -> u64 {
        client.call(ADD, &(a, b)).await
    }

    async fn echo_vec(client: &RawClient, bytes: Vec<u8>) -> Vec<u8> {
        client.call(ECHO, &bytes).await
    }

    async fn echo_bytes(client: &RawClient, bytes: Bytes) -> Bytes {
        client.call(ECHO, &bytes).await
    }
}
