//! The streaming services of the examples: a log to tail, a file store to upload to, and a chat
//! room.

use std::sync::{Arc, Mutex};

use rpc_core::Streaming;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::broadcast;

/// A log that clients can follow.
#[rpc_core::service]
pub trait LogTail {
    /// Streams every line from `from_line` on: the ones written already, then each new one as it
    /// is written, until the caller drops the stream.
    async fn tail(&self, from_line: u64) -> Streaming<String>;
    /// Streams the lines `from..to` written already; if the log has fewer, says how many it
    /// has instead.
    async fn lines(&self, from: u64, to: u64) -> Result<Streaming<String>, TooFewLines>;
}

/// The log holds fewer lines than were asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TooFewLines {
    /// How many lines it holds.
    pub written: u64,
}

/// An in-memory log. Clones share the same lines.
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<LogInner>,
}

#[derive(Debug)]
struct LogInner {
    lines: Mutex<Vec<String>>,
    written: broadcast::Sender<String>,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            inner: Arc::new(LogInner {
                lines: Mutex::new(Vec::new()),
                written: broadcast::channel(1024).0,
            }),
        }
    }
}

impl Log {
    /// Appends a line, and sends it to every client following the log.
    pub fn write(&self, line: impl Into<String>) {
        let line = line.into();
        let mut lines = self.inner.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.push(line.clone());
        let _ = self.inner.written.send(line);
    }
}

impl LogTail for Log {
    async fn tail(&self, from_line: u64) -> Streaming<String> {
        // Subscribe before reading the backlog, under the same lock as `write`, so that no line
        // is missed or sent twice.
        let (backlog, mut new_lines) = {
            let lines = self.inner.lines.lock().unwrap_or_else(|e| e.into_inner());
            let skip = usize::try_from(from_line).unwrap_or(usize::MAX);
            let backlog = lines.iter().skip(skip).cloned().collect::<Vec<_>>();
            (backlog, self.inner.written.subscribe())
        };
        let (sender, stream) = Streaming::channel(16);
        tokio::spawn(async move {
            for line in backlog {
                if sender.send(line).await.is_err() {
                    return;
                }
            }
            loop {
                let line = match new_lines.recv().await {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let _ = sender
                            .fail(format!("the reader fell {missed} lines behind"))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // Stops as soon as the client drops its stream: the call is cancelled.
                if sender.send(line).await.is_err() {
                    return;
                }
            }
        });
        stream
    }

    async fn lines(&self, from: u64, to: u64) -> Result<Streaming<String>, TooFewLines> {
        let lines = self.inner.lines.lock().unwrap_or_else(|e| e.into_inner());
        let written = lines.len() as u64;
        if to > written {
            return Err(TooFewLines { written });
        }
        let (from, to) = (from.min(to) as usize, to as usize);
        Ok(Streaming::iter(lines[from..to].to_vec()))
    }
}

/// What the file store says about an upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The file's name.
    pub name: String,
    /// How many bytes arrived.
    pub bytes: u64,
    /// In how many chunks.
    pub chunks: u64,
    /// FNV-1a of the bytes, for the client to compare with its own.
    pub checksum: u64,
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadError {
    /// The file is larger than the store accepts.
    TooLarge {
        /// The store's limit in bytes.
        limit: u64,
    },
    /// The upload broke off before its end.
    Interrupted(String),
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::TooLarge { limit } => write!(f, "the file is over the {limit}-byte limit"),
            UploadError::Interrupted(why) => write!(f, "the upload broke off: {why}"),
        }
    }
}

impl std::error::Error for UploadError {}

/// Receives files in chunks.
#[rpc_core::service]
pub trait FileStore {
    /// Stores `name`, sent as a stream of chunks, and says what arrived.
    async fn upload(
        &self,
        name: String,
        chunks: Streaming<ByteBuf>,
    ) -> Result<Receipt, UploadError>;
}

/// A store that checks what it receives and keeps only the receipts.
#[derive(Debug)]
pub struct ChecksumStore {
    /// The largest file accepted, in bytes.
    pub limit: u64,
}

impl FileStore for ChecksumStore {
    async fn upload(
        &self,
        name: String,
        mut chunks: Streaming<ByteBuf>,
    ) -> Result<Receipt, UploadError> {
        let mut receipt = Receipt {
            name,
            bytes: 0,
            chunks: 0,
            checksum: FNV_OFFSET,
        };
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| UploadError::Interrupted(e.to_string()))?;
            receipt.bytes += chunk.len() as u64;
            receipt.chunks += 1;
            if receipt.bytes > self.limit {
                // Returning early drops the stream: the client stops sending.
                return Err(UploadError::TooLarge { limit: self.limit });
            }
            receipt.checksum = fnv1a(receipt.checksum, &chunk);
        }
        Ok(receipt)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a hash over `bytes`; start from `checksum(&[])`.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// FNV-1a of `bytes`, as the store computes it.
pub fn checksum(bytes: &[u8]) -> u64 {
    fnv1a(FNV_OFFSET, bytes)
}

/// One line of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// Who said it.
    pub user: String,
    /// What they said.
    pub text: String,
}

/// A chat room.
#[rpc_core::service]
pub trait ChatRoom {
    /// Joins the room as `user`: what the caller sends is said to the room, and the returned
    /// stream carries everything said in the room from now on, the caller's own lines included.
    async fn chat(&self, user: String, said: Streaming<String>) -> Streaming<ChatLine>;
}

/// A room that relays every line to everyone in it.
#[derive(Debug)]
pub struct Room {
    lines: broadcast::Sender<ChatLine>,
}

impl Default for Room {
    fn default() -> Self {
        Room {
            lines: broadcast::channel(256).0,
        }
    }
}

impl ChatRoom for Room {
    async fn chat(&self, user: String, mut said: Streaming<String>) -> Streaming<ChatLine> {
        let mut heard = self.lines.subscribe();
        let room = self.lines.clone();
        tokio::spawn(async move {
            while let Some(Ok(text)) = said.next().await {
                let _ = room.send(ChatLine {
                    user: user.clone(),
                    text,
                });
            }
        });
        let (sender, stream) = Streaming::channel(16);
        tokio::spawn(async move {
            while let Ok(line) = heard.recv().await {
                if sender.send(line).await.is_err() {
                    return;
                }
            }
        });
        stream
    }
}
