//! Connections that may begin with a PROXY protocol v2 header (`[node] accept_proxy`): the header is read
//! and checked whole ([`crate::proxy_header`]), and whatever was read past it is handed back to HTTP first.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::proxy_header::{self, HeaderError, Start};

/// Why a connection was closed before its first request.
#[derive(Debug, thiserror::Error)]
pub enum ProxiedError {
    /// The header began but was not one this node accepts.
    #[error("{0}")]
    Header(#[from] HeaderError),
    /// The peer closed or failed before a header was whole.
    #[error("connection ended inside a PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The header did not arrive whole in time.
    #[error("no whole PROXY header within {0:?}")]
    Timeout(Duration),
}

/// Reads an optional PROXY header from the start of `stream`; returns the stream (replaying any bytes read
/// past the header) and the client the header named, if any.
///
/// # Errors
/// [`ProxiedError`] when the connection begins like a header but does not hold a valid one within `timeout`.
pub async fn accept<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> Result<(Prefixed<S>, Option<SocketAddr>), ProxiedError> {
    let mut buf = Vec::with_capacity(proxy_header::FIXED_LEN);
    let read = async {
        loop {
            match proxy_header::parse(&buf)? {
                Start::NotProxy => return Ok::<_, ProxiedError>(None),
                Start::Header { len, client } => return Ok(Some((len, client))),
                Start::Need(n) => {
                    let mut chunk = vec![0u8; n - buf.len()];
                    let got = stream.read(&mut chunk).await?;
                    if got == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    buf.extend_from_slice(&chunk[..got]);
                }
            }
        }
    };
    let found = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxiedError::Timeout(timeout))??;
    let (skip, client) = found.map_or((0, None), |(len, c)| (len, c));
    buf.drain(..skip);
    Ok((
        Prefixed {
            prefix: buf,
            at: 0,
            inner: stream,
        },
        client,
    ))
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner` with nothing read from it yet.
    pub fn plain(inner: S) -> Prefixed<S> {
        Prefixed {
            prefix: Vec::new(),
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const WAIT: Duration = Duration::from_secs(5);

    async fn rest<S: AsyncRead + Unpin>(mut s: S) -> Vec<u8> {
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_header_is_taken_off_and_the_request_behind_it_is_read_whole() {
        let client: SocketAddr = "127.9.8.7:4242".parse().unwrap();
        let mut bytes = proxy_header::encode(client, "127.0.0.1:80".parse().unwrap());
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let (s, from) = accept(&bytes[..], WAIT).await.unwrap();
        assert_eq!(from, Some(client));
        assert_eq!(rest(s).await, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_connection_without_a_header_loses_no_byte() {
        let (s, from) = accept(&b"GET /x HTTP/1.1\r\n\r\n"[..], WAIT).await.unwrap();
        assert_eq!(from, None);
        assert_eq!(rest(s).await, b"GET /x HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_header_trickling_in_byte_by_byte_is_still_read() {
        let (mut w, r) = tokio::io::duplex(4);
        let bytes = proxy_header::encode("[::1]:9".parse().unwrap(), "[::1]:80".parse().unwrap());
        tokio::spawn(async move {
            for b in bytes {
                w.write_all(&[b]).await.unwrap();
            }
            w.write_all(b"HEAD").await.unwrap();
        });
        let (s, from) = accept(r, WAIT).await.unwrap();
        assert_eq!(from, Some("[::1]:9".parse().unwrap()));
        assert_eq!(rest(s).await, b"HEAD");
    }

    #[tokio::test]
    async fn a_broken_header_a_cut_one_and_a_slow_one_are_refused() {
        let mut bad = proxy_header::encode(
            "127.0.0.2:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        bad[12] = 0x11;
        assert!(matches!(
            accept(&bad[..], WAIT).await,
            Err(ProxiedError::Header(_))
        ));
        assert!(matches!(
            accept(&proxy_header::SIGNATURE[..8], WAIT).await,
            Err(ProxiedError::Io(_))
        ));
        tokio::time::pause();
        let (_w, r) = tokio::io::duplex(4);
        assert!(matches!(
            accept(r, Duration::from_secs(1)).await,
            Err(ProxiedError::Timeout(_))
        ));
    }
}
