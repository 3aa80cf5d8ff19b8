//! Message bodies: the one body type every answer has ([`ReplyBody`]: a small JSON text or an application's
//! stream), and a request body that is either read whole or streams once ([`RequestBody`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// Any error a body stream can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every answer's body: built in full, or streamed from the application or another node.
pub type ReplyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body held whole.
pub fn full(bytes: impl Into<Bytes>) -> ReplyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Any body, boxed.
pub fn boxed<B>(body: B) -> ReplyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A client's request body. Small bodies are read before the request runs, so it can be sent again (to
/// another node after a failed forward, to the app on a second attempt); a larger one streams once.
pub enum RequestBody {
    /// Read whole.
    Read(Bytes),
    /// Streams once: the part already read, then the rest; `None` once taken.
    Streaming(Mutex<Option<ReplyBody>>),
}

impl RequestBody {
    /// The body to send: a copy of a read body, or the stream the first time. `None` when the stream was
    /// already sent once.
    pub fn take(&self) -> Option<ReplyBody> {
        match self {
            RequestBody::Read(b) => Some(full(b.clone())),
            RequestBody::Streaming(s) => s.lock().unwrap_or_else(|p| p.into_inner()).take(),
        }
    }

    /// Whether this is a stream already sent once: it cannot be sent again.
    pub fn spent(&self) -> bool {
        match self {
            RequestBody::Read(_) => false,
            RequestBody::Streaming(s) => s.lock().unwrap_or_else(|p| p.into_inner()).is_none(),
        }
    }

    /// The whole body when it was read whole.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            RequestBody::Read(b) => Some(b),
            RequestBody::Streaming(_) => None,
        }
    }
}

/// How reading a body up to a limit ended.
pub enum Read {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Over the limit: what was read, and the rest still to come, as one stream.
    Over(ReplyBody),
    /// The stream failed (the peer reset, a timeout, a size limit): why.
    Failed(BoxError),
}

/// Reads `body` until it ends or passes `limit` bytes.
pub async fn read_up_to<B>(mut body: B, limit: usize) -> Read
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Read::Failed(e.into()),
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Read::Over(boxed(Prefixed {
                    prefix: Some(buf.freeze()),
                    rest: body,
                }));
            }
        }
    }
    Read::Whole(buf.freeze())
}

/// Why a client's body could not be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over the size limit.
    TooLarge,
    /// The client stopped sending it (reset, or timed out).
    BrokeOff,
}

/// A client body as the front hands it on: read whole up to `buffer` bytes, streamed beyond; a stream that
/// passes `limit` bytes fails there (the app sees a broken upload, the node's memory is not at stake).
///
/// # Errors
/// [`BodyError`] when the part read first is over `limit` or broke off.
pub async fn request_body(
    body: Incoming,
    buffer: usize,
    limit: usize,
) -> Result<RequestBody, BodyError> {
    match read_up_to(Capped::new(body, limit), buffer).await {
        Read::Whole(b) => Ok(RequestBody::Read(b)),
        Read::Over(s) => Ok(RequestBody::Streaming(Mutex::new(Some(s)))),
        Read::Failed(e) if e.is::<OverLimit>() => Err(BodyError::TooLarge),
        Read::Failed(_) => Err(BodyError::BrokeOff),
    }
}

/// The error a [`Capped`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the body is over its {0}-byte limit")]
pub struct OverLimit(usize);

/// A body that fails once it passes `limit` bytes, but first reads on and drops the rest (up to 8× the limit),
/// so the client is not reset in mid-upload and reads the 413 it gets.
struct Capped<B> {
    inner: B,
    limit: usize,
    seen: usize,
}

impl<B> Capped<B> {
    fn new(inner: B, limit: usize) -> Capped<B> {
        Capped {
            inner,
            limit,
            seen: 0,
        }
    }
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) if self.seen > self.limit => {
                    return Poll::Ready(Some(Err(Box::new(OverLimit(self.limit)))))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(f))) => f,
            };
            self.seen += frame.data_ref().map_or(0, Bytes::len);
            if self.seen <= self.limit {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.seen > self.limit.saturating_mul(8) {
                return Poll::Ready(Some(Err(Box::new(OverLimit(self.limit)))));
            }
            // Over the limit: drop what comes until the client is done (or far over), then fail.
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Bytes already read, then the rest of the body.
struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let h = self.rest.size_hint();
        let mut out = SizeHint::new();
        out.set_lower(h.lower() + extra);
        if let Some(u) = h.upper() {
            out.set_upper(u + extra);
        }
        out
    }
}

/// A body that fails when no chunk comes for `idle`: an application that stalls mid-answer does not hold the
/// client's connection forever.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleTimeout<B> {
    /// `inner`, failing after `idle` without a chunk.
    pub fn new(inner: B, idle: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// The error an [`IdleTimeout`] body ends with.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct Stalled(pub Duration);

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                let deadline = tokio::time::Instant::now() + self.idle;
                self.timer.as_mut().reset(deadline);
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(self.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        match read_up_to(full("hello"), 5).await {
            Read::Whole(b) => assert_eq!(&b[..], b"hello"),
            _ => panic!("expected the whole body"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_on_with_nothing_lost() {
        let Read::Over(rest) = read_up_to(full("hello world"), 4).await else {
            panic!("expected a stream");
        };
        let all = rest.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"hello world");
    }

    #[tokio::test]
    async fn a_capped_body_passes_within_its_limit_and_fails_past_it_after_reading_on() {
        let ok = Capped::new(full("12345"), 5)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&ok[..], b"12345");
        let err = Capped::new(full("123456"), 5)
            .collect()
            .await
            .expect_err("over");
        assert!(err.is::<OverLimit>(), "{err}");
    }

    #[tokio::test]
    async fn a_streaming_request_body_is_taken_once_and_a_read_one_every_time() {
        let read = RequestBody::Read(Bytes::from_static(b"x"));
        assert!(read.take().is_some() && read.take().is_some());
        let once = RequestBody::Streaming(Mutex::new(Some(full("y"))));
        assert!(once.take().is_some());
        assert!(once.take().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_its_idle_time() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = http_body_util::StreamBody::new(ReceiverStream(rx));
        let body = IdleTimeout::new(stream, Duration::from_secs(3));
        let err = body.collect().await.expect_err("stalls");
        assert!(err.to_string().contains("no body data"), "{err}");
    }

    struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

    impl<T> futures_util::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
