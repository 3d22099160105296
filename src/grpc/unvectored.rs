//! A gRPC connection whose writes are never vectored, so that h2 writes a batch of answers
//! with one `write`.
//!
//! h2 (0.4) copies each frame into its write buffer, except a DATA payload of 256 bytes or
//! more when the connection says it can write vectored: that payload is chained after the
//! buffer, and nothing more can be queued until it has been written. An allow answer (the
//! identity headers, ≈ 300 bytes) is over that line, so every Check forced a write of its own
//! and its trailers another: 2.2 `writev` calls per Check under load, against 1.07 for the
//! no-op server's 4-byte answer (`perf stat -e syscalls:sys_enter_writev`, `make bench` row
//! g), each a trip through the loopback TCP stack. Without vectored writes h2 chains only
//! payloads of 1 KiB or more, so answers queue up and leave together. The cost is a copy of
//! each answer into h2's buffer, which a write would make anyway.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;

/// The connections of a plain-TCP gRPC listener as mcp-authz serves them: Nagle's algorithm
/// off (a small gRPC frame must not wait 40 ms for a delayed ACK) and writes never vectored,
/// so answers leave in batches. The bench's no-op Check servers are served through it too, so
/// the rows that bound mcp-authz's cost share its transport.
pub fn tcp_connections(
    listener: TcpListener,
) -> impl Stream<Item = std::io::Result<Unvectored<TcpStream>>> {
    tokio_stream::StreamExt::map(
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        |c| c.map(Unvectored),
    )
}

/// `S`, but never vectored on write.
pub struct Unvectored<S>(pub S);

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Unvectored<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Unvectored<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Unvectored<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    // `poll_write_vectored` is the default: the first non-empty slice, through `poll_write`.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both halves of the transport the Check server (and the bench's bounds) rely on: a
    /// connection that said it could write vectored would have h2 write each answer of 256
    /// bytes or more by itself, and one with Nagle's algorithm on would hold small frames back.
    #[tokio::test]
    async fn tcp_connections_are_unvectored_and_without_nagle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = std::pin::pin!(tcp_connections(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let conn = tokio_stream::StreamExt::next(&mut incoming)
            .await
            .unwrap()
            .unwrap();
        assert!(!conn.is_write_vectored());
        assert!(conn.0.nodelay().unwrap());
    }
}
