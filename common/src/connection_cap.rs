//! A cap on concurrent connections for any server listener (the hub's API, the agent's
//! socket and TCP port): past the cap a connection is answered `503` with a JSON error
//! and closed at once, so a flood of idle or slow clients costs the server a counter, not
//! memory, descriptors and tasks without end. The permit travels with the connection and is
//! returned when it closes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The cap's counters, for `/metrics`.
#[derive(Debug)]
pub struct ConnectionCap {
    limit: usize,
    permits: Arc<Semaphore>,
    refused: AtomicU64,
}

impl ConnectionCap {
    pub fn new(limit: usize) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap {
            limit,
            permits: Arc::new(Semaphore::new(limit)),
            refused: AtomicU64::new(0),
        })
    }
    pub fn limit(&self) -> usize {
        self.limit
    }
    /// Connections open now.
    pub fn open(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
    /// Connections refused at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The cap in Prometheus exposition format, as `{prefix}_connections_open`,
    /// `_connections_limit` and `_connections_refused_total`.
    pub fn exposition(&self, prefix: &str) -> String {
        format!(
            "# HELP {prefix}_connections_open Connections open now.\n# TYPE {prefix}_connections_open gauge\n{prefix}_connections_open {}\n\
             # HELP {prefix}_connections_limit Connections allowed open at once.\n# TYPE {prefix}_connections_limit gauge\n{prefix}_connections_limit {}\n\
             # HELP {prefix}_connections_refused_total Connections refused with 503 at the limit.\n# TYPE {prefix}_connections_refused_total counter\n{prefix}_connections_refused_total {}\n",
            self.open(),
            self.limit,
            self.refused()
        )
    }
}

/// The answer a connection past the cap gets before it is closed.
pub fn refusal(limit: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "error": format!("the server is at its limit of {limit} open connections; try again shortly")
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `inner`, letting at most `cap.limit()` connections be open at once.
#[derive(Debug)]
pub struct Capped<L> {
    inner: L,
    cap: Arc<ConnectionCap>,
}

impl<L> Capped<L> {
    pub fn new(inner: L, cap: Arc<ConnectionCap>) -> Capped<L> {
        Capped { inner, cap }
    }
}

/// A connection holding its permit.
#[derive(Debug)]
pub struct CappedIo<I> {
    io: I,
    _permit: OwnedSemaphorePermit,
}

impl<L> Listener for Capped<L>
where
    L: Listener,
    L::Addr: std::fmt::Debug,
{
    type Io = CappedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (mut io, address) = self.inner.accept().await;
            match self.cap.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    return (
                        CappedIo {
                            io,
                            _permit: permit,
                        },
                        address,
                    );
                }
                Err(_) => {
                    self.cap.refused.fetch_add(1, Ordering::Relaxed);
                    let answer = refusal(self.cap.limit);
                    // Answered in its own task with a deadline: a client that does not read
                    // must not hold up accepting. The request is read first and the rest
                    // drained after: closing a socket with unread data resets it, and the
                    // reset could destroy the answer before the client reads it.
                    tokio::spawn(async move {
                        let mut scratch = [0u8; 4096];
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_millis(500),
                            io.read(&mut scratch),
                        )
                        .await;
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                            let _ = io.write_all(&answer).await;
                            let _ = io.shutdown().await;
                            while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
                        })
                        .await;
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CappedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CappedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<I> CappedIo<I> {
    /// The connection inside.
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_cap_a_connection_gets_503_and_a_closed_one_frees_its_place() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cap = ConnectionCap::new(1);
        let mut capped = Capped::new(listener, cap.clone());
        let first = tokio::net::TcpStream::connect(address).await.unwrap();
        let (held, _) = capped.accept().await;
        assert_eq!(cap.open(), 1);

        // The second is answered and closed while the first stays open.
        let mut second = tokio::net::TcpStream::connect(address).await.unwrap();
        let accepting = tokio::spawn(async move {
            let accepted = capped.accept().await;
            (capped, accepted)
        });
        let mut answer = String::new();
        second.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("limit of 1 open connections"), "{answer}");
        assert_eq!(cap.refused(), 1);

        // Closing the first frees its place for the next.
        drop(held);
        drop(first);
        assert_eq!(cap.open(), 0);
        let _third = tokio::net::TcpStream::connect(address).await.unwrap();
        let (_capped, (_io, _)) = accepting.await.unwrap();
        assert_eq!(cap.open(), 1);
    }
}
