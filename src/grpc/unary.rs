//! The Check served in front of tonic's router: the one unary call answered on every request
//! Envoy forwards, read and answered by hand.
//!
//! tonic's generated path (its router, an axum `Router`, then `Grpc::unary`, its streaming
//! decoder and its encode body) spent about a sixth of a warm Check's CPU and a dozen
//! allocations per Check on URL parameters, request extensions, boxed futures and an 8 KiB
//! encode buffer for a ≈ 300-byte answer (perf, `make bench` row g). [`WithCheck`] sits
//! inside tonic's connection stack (its deadline from `grpc-timeout`, its error recovery, the
//! connection's peer info are all still applied) and takes the requests whose path is the
//! Check's; every other call (health, the list filter, xDS) goes on to tonic's router.
//!
//! What it reads is what tonic's unary server reads, and it refuses what tonic refuses:
//! - `grpc-encoding` other than `identity`: `UNIMPLEMENTED` (no compression is offered);
//! - a message marked compressed: `INTERNAL`, as tonic without an encoding;
//! - a message over [`MAX_CHECK_BYTES`]: `RESOURCE_EXHAUSTED`, refused on its length prefix,
//!   before it is read;
//! - no message, or one cut short by the end of the stream: `INTERNAL`;
//! - bytes after the one message: `INVALID_ARGUMENT` (a unary call carries one message;
//!   tonic would have read the first and dropped the rest).
//!
//! The answer is tonic's: `200`, `content-type: application/grpc`, one length-prefixed
//! message, then the trailers `grpc-status: 0`; an error is a trailers-only answer built by
//! [`tonic::Status::into_http`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::{Answer, CheckWire, RequestHeaders, check_input, malformed};
use crate::pipeline::Authorizer;

/// The Check's gRPC method.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The largest CheckRequest read: tonic's default limit for a decoded message, which the
/// Check had while it was served by tonic's generated server.
pub const MAX_CHECK_BYTES: usize = 4 << 20;
/// A gRPC message's prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The layer that serves the Check ahead of tonic's router.
#[derive(Clone)]
pub struct CheckServer {
    authorizer: Arc<Authorizer>,
}

impl CheckServer {
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self { authorizer }
    }
}

impl<S> tower_layer::Layer<S> for CheckServer {
    type Service = WithCheck<S>;

    fn layer(&self, inner: S) -> WithCheck<S> {
        WithCheck {
            authorizer: self.authorizer.clone(),
            inner,
        }
    }
}

/// tonic's router `S`, with the Check answered before it.
#[derive(Clone)]
pub struct WithCheck<S> {
    authorizer: Arc<Authorizer>,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> tonic::codegen::Service<http::Request<tonic::body::Body>> for WithCheck<S>
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = http::Response<GrpcBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() == CHECK_PATH {
            let authorizer = self.authorizer.clone();
            return Box::pin(async move { Ok(serve_check(&authorizer, req).await) });
        }
        let next = self.inner.call(req);
        Box::pin(async move {
            let response = next.await?;
            Ok(response.map(GrpcBody::Other))
        })
    }
}

/// One Check, from the HTTP/2 request to the HTTP/2 answer.
async fn serve_check(
    authorizer: &Authorizer,
    req: http::Request<tonic::body::Body>,
) -> http::Response<GrpcBody> {
    let answer = match check(authorizer, req).await {
        Ok(a) => a,
        Err(status) => return refused(status),
    };
    let mut response = http::Response::new(GrpcBody::answer(&answer));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The Check's answer, or the gRPC status that refuses a request that cannot be read.
async fn check(
    authorizer: &Authorizer,
    req: http::Request<tonic::body::Body>,
) -> Result<Answer, tonic::Status> {
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Err(tonic::Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let message = read_message(req.into_body(), MAX_CHECK_BYTES).await?;
    let wire = CheckWire::decode(message).map_err(malformed)?;
    let headers = RequestHeaders::from_wire(&wire).map_err(malformed)?;
    let input = check_input(&wire, &headers).map_err(malformed)?;
    Ok(Answer::from(authorizer.check(&input).await.verdict))
}

/// A trailers-only answer with `status`, as tonic writes one.
fn refused(status: tonic::Status) -> http::Response<GrpcBody> {
    status.into_http::<tonic::body::Body>().map(GrpcBody::Other)
}

/// What a request body has delivered so far. The first DATA frame is, nearly always, the
/// whole message: it is kept without a copy, and joined with later ones only when they come.
enum Received {
    Nothing,
    One(Bytes),
    Joined(BytesMut),
}

impl Received {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::replace(self, Received::Nothing) {
            Received::Nothing => Received::One(data),
            Received::One(first) => {
                let mut j = BytesMut::with_capacity(first.len() + data.len());
                j.put_slice(&first);
                j.put_slice(&data);
                Received::Joined(j)
            }
            Received::Joined(mut j) => {
                j.put_slice(&data);
                Received::Joined(j)
            }
        };
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Received::Nothing => &[],
            Received::One(b) => b,
            Received::Joined(j) => j,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Received::Nothing => Bytes::new(),
            Received::One(b) => b,
            Received::Joined(j) => j.freeze(),
        }
    }
}

/// Reads the one message of a unary call: its prefix, then exactly the bytes it announces.
async fn read_message<B>(mut body: B, max: usize) -> Result<Bytes, tonic::Status>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut received = Received::Nothing;
    let mut announced: Option<usize> = None;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame =
            frame.map_err(|e| tonic::Status::internal(format!("reading the request: {e}")))?;
        let Ok(data) = frame.into_data() else {
            // Trailers end the request; a unary Check reads none.
            continue;
        };
        if data.is_empty() {
            continue;
        }
        received.push(data);
        let have = received.as_slice();
        if announced.is_none() && have.len() >= PREFIX {
            announced = Some(prefix_length(have, max)?);
        }
        if let Some(len) = announced
            && have.len() > PREFIX + len
        {
            return Err(tonic::Status::invalid_argument(
                "a Check carries one message; more bytes followed it",
            ));
        }
    }
    let Some(len) = announced else {
        return Err(tonic::Status::internal(match received {
            Received::Nothing => "Missing request message.",
            _ => "the request ended inside a message's prefix",
        }));
    };
    let mut all = received.into_bytes();
    if all.len() < PREFIX + len {
        return Err(tonic::Status::internal(
            "the request ended before the message it announced",
        ));
    }
    all.advance(PREFIX);
    Ok(all)
}

/// The message length of a prefix, if the message is one this server reads.
fn prefix_length(prefix: &[u8], max: usize) -> Result<usize, tonic::Status> {
    match prefix[0] {
        0 => {}
        1 => {
            return Err(tonic::Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(tonic::Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1)"
            )));
        }
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > max {
        return Err(tonic::Status::resource_exhausted(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
        )));
    }
    Ok(len)
}

/// The answer's body: the Check's one message and its `grpc-status: 0`, or what tonic's
/// router (or an error) answered.
pub enum GrpcBody {
    Answer {
        message: Option<Bytes>,
        trailers_sent: bool,
    },
    Other(tonic::body::Body),
}

impl GrpcBody {
    fn answer(answer: &Answer) -> Self {
        // An allow answer is ≈ 300 bytes; a denial with its JSON-RPC body a little more.
        let mut out = BytesMut::with_capacity(512);
        out.put_bytes(0, PREFIX);
        answer.encode_into(&mut out);
        let len = (out.len() - PREFIX) as u32;
        out[1..PREFIX].copy_from_slice(&len.to_be_bytes());
        GrpcBody::Answer {
            message: Some(out.freeze()),
            trailers_sent: false,
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        match self.get_mut() {
            GrpcBody::Answer {
                message,
                trailers_sent,
            } => {
                if let Some(m) = message.take() {
                    return Poll::Ready(Some(Ok(Frame::data(m))));
                }
                if *trailers_sent {
                    return Poll::Ready(None);
                }
                *trailers_sent = true;
                let mut trailers = http::HeaderMap::with_capacity(1);
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            GrpcBody::Other(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GrpcBody::Answer {
                message,
                trailers_sent,
            } => message.is_none() && *trailers_sent,
            GrpcBody::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GrpcBody::Answer { message, .. } => {
                SizeHint::with_exact(message.as_ref().map_or(0, |m| m.len() as u64))
            }
            GrpcBody::Other(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
