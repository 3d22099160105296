//! The Check served ahead of tonic's router: what it answers, what it refuses, and that
//! everything else still reaches the router.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use http_body::{Body, Frame};
use tonic::codegen::Service;

use super::{CHECK_PATH, CheckServer, GrpcBody, MAX_CHECK_BYTES, WithCheck};

/// A request body of the given DATA frames; `then_hang` keeps it open after them, as a peer
/// that never ends its stream.
struct Frames {
    frames: VecDeque<Bytes>,
    then_hang: bool,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.frames.pop_front() {
            Some(f) => Poll::Ready(Some(Ok(Frame::data(f)))),
            None if this.then_hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

/// tonic's router stand-in: answers every call with `x-routed: yes`.
#[derive(Clone)]
struct Router;

impl Service<http::Request<tonic::body::Body>> for Router {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut r = http::Response::new(tonic::body::Body::empty());
        r.headers_mut()
            .insert("x-routed", http::HeaderValue::from_static("yes"));
        std::future::ready(Ok(r))
    }
}

fn service() -> (tempfile::TempDir, WithCheck<Router>) {
    let (dir, parts) = crate::pipeline::test_parts();
    let svc = tower_layer::Layer::layer(&CheckServer::new(Arc::clone(&parts.authorizer)), Router);
    (dir, svc)
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend((message.len() as u32).to_be_bytes());
    out.extend(message);
    out
}

/// A CheckRequest without a token, as Envoy frames it.
fn check_message() -> Vec<u8> {
    let req = crate::grpc::http_check_request(
        None,
        "/mcp/github",
        br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
    );
    framed(&prost::Message::encode_to_vec(&req))
}

fn request(path: &str, frames: Vec<Vec<u8>>, then_hang: bool) -> http::Request<tonic::body::Body> {
    let body = Frames {
        frames: frames.into_iter().map(Bytes::from).collect(),
        then_hang,
    };
    http::Request::builder()
        .method("POST")
        .uri(format!("http://authz{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .expect("request")
}

/// The answer's headers, its DATA bytes and its trailers, read to the end.
async fn read(
    response: http::Response<GrpcBody>,
) -> (http::HeaderMap, Vec<u8>, Option<http::HeaderMap>) {
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.expect("body frame");
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    assert!(body.is_end_stream());
    (parts.headers, data, trailers)
}

/// The gRPC status of a trailers-only answer (an error), as tonic writes it.
fn status_of(headers: &http::HeaderMap) -> Option<&str> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok())
}

async fn call(
    svc: &mut WithCheck<Router>,
    req: http::Request<tonic::body::Body>,
) -> http::Response<GrpcBody> {
    tokio::time::timeout(Duration::from_secs(5), svc.call(req))
        .await
        .expect("answered in time")
        .expect("infallible")
}

#[tokio::test]
async fn a_check_is_answered_with_one_message_and_ok_trailers() {
    let (_dir, mut svc) = service();
    let response = call(&mut svc, request(CHECK_PATH, vec![check_message()], false)).await;
    assert_eq!(response.status(), 200);
    let (headers, data, trailers) = read(response).await;
    assert_eq!(
        headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );
    assert_eq!(status_of(&headers), None, "not a trailers-only answer");
    let trailers = trailers.expect("trailers");
    assert_eq!(status_of(&trailers), Some("0"));
    assert_eq!(data[0], 0, "not compressed");
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    assert_eq!(data.len(), 5 + len, "exactly one message");
    let answer: CheckResponse = prost::Message::decode(&data[5..]).expect("a CheckResponse");
    // No token: the Check's own answer is a 401 denial, carried in an OK call.
    assert_eq!(answer.status.map(|s| s.code), Some(16));
}

#[tokio::test]
async fn a_message_split_over_frames_is_read_whole() {
    let (_dir, mut svc) = service();
    let whole = check_message();
    let one = read(call(&mut svc, request(CHECK_PATH, vec![whole.clone()], false)).await).await;
    let frames = vec![
        whole[..3].to_vec(),
        whole[3..40].to_vec(),
        Vec::new(),
        whole[40..].to_vec(),
    ];
    let split = read(call(&mut svc, request(CHECK_PATH, frames, false)).await).await;
    // The same answer, but for its decision id (a new one per Check, of the same length).
    assert_eq!(split.1.len(), one.1.len());
    let reason = |data: &[u8]| {
        let answer: CheckResponse = prost::Message::decode(&data[5..]).expect("a CheckResponse");
        answer.status.map(|s| s.code)
    };
    assert_eq!(reason(&split.1), Some(16));
    assert_eq!(reason(&one.1), Some(16));
}

/// Attack: a message marked compressed, which tonic would refuse and an uncompressed reading
/// would misread.
#[tokio::test]
async fn a_compressed_message_is_refused() {
    let (_dir, mut svc) = service();
    let mut m = check_message();
    m[0] = 1;
    let (headers, data, _) =
        read(call(&mut svc, request(CHECK_PATH, vec![m.clone()], false)).await).await;
    assert_eq!(status_of(&headers), Some("13"));
    assert!(data.is_empty());
    m[0] = 7;
    let (headers, ..) = read(call(&mut svc, request(CHECK_PATH, vec![m], false)).await).await;
    assert_eq!(status_of(&headers), Some("13"));
}

#[tokio::test]
async fn a_compressed_call_is_unimplemented() {
    let (_dir, mut svc) = service();
    let mut req = request(CHECK_PATH, vec![check_message()], false);
    req.headers_mut()
        .insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    let (headers, ..) = read(call(&mut svc, req).await).await;
    assert_eq!(status_of(&headers), Some("12"));
    let mut req = request(CHECK_PATH, vec![check_message()], false);
    req.headers_mut()
        .insert("grpc-encoding", http::HeaderValue::from_static("identity"));
    let (headers, _, trailers) = read(call(&mut svc, req).await).await;
    assert_eq!(status_of(&headers), None);
    assert_eq!(trailers.as_ref().and_then(status_of), Some("0"));
}

/// Attack: a length prefix announcing more than the limit, from a peer that then sends
/// nothing and never ends its stream: refused on the prefix, not after buffering.
#[tokio::test]
async fn an_oversized_message_is_refused_on_its_prefix() {
    let (_dir, mut svc) = service();
    let mut prefix = vec![0u8];
    prefix.extend(((MAX_CHECK_BYTES + 1) as u32).to_be_bytes());
    let (headers, ..) = read(call(&mut svc, request(CHECK_PATH, vec![prefix], true)).await).await;
    assert_eq!(status_of(&headers), Some("8"));
}

/// Attack: a second message after the first (a reader that takes the last one, or both,
/// would decide on something else than tonic did).
#[tokio::test]
async fn bytes_after_the_message_are_refused() {
    let (_dir, mut svc) = service();
    let m = check_message();
    let (headers, ..) =
        read(call(&mut svc, request(CHECK_PATH, vec![m.clone(), m], false)).await).await;
    assert_eq!(status_of(&headers), Some("3"));
    let mut m = check_message();
    m.push(0);
    let (headers, ..) = read(call(&mut svc, request(CHECK_PATH, vec![m], false)).await).await;
    assert_eq!(status_of(&headers), Some("3"));
}

#[tokio::test]
async fn a_missing_or_cut_message_is_refused() {
    let (_dir, mut svc) = service();
    for frames in [vec![], vec![vec![0, 0, 0]], {
        let m = check_message();
        vec![m[..m.len() - 1].to_vec()]
    }] {
        let (headers, data, _) =
            read(call(&mut svc, request(CHECK_PATH, frames, false)).await).await;
        assert_eq!(status_of(&headers), Some("13"));
        assert!(data.is_empty());
    }
}

#[tokio::test]
async fn a_malformed_check_request_is_an_invalid_argument() {
    let (_dir, mut svc) = service();
    // Field 1 (attributes), length-delimited, announcing 200 bytes that are not there.
    let (headers, ..) = read(
        call(
            &mut svc,
            request(CHECK_PATH, vec![framed(&[0x0a, 0xc8, 0x01])], false),
        )
        .await,
    )
    .await;
    assert_eq!(status_of(&headers), Some("3"));
}

#[tokio::test]
async fn every_other_call_goes_to_the_router() {
    let (_dir, mut svc) = service();
    for path in [
        "/grpc.health.v1.Health/Check",
        "/envoy.service.ext_proc.v3.ExternalProcessor/Process",
        "/envoy.service.auth.v3.Authorization/Checks",
        "/envoy.service.auth.v2.Authorization/Check",
    ] {
        let response = call(&mut svc, request(path, vec![check_message()], false)).await;
        assert_eq!(
            response.headers().get("x-routed").map(|v| v.as_bytes()),
            Some(&b"yes"[..]),
            "{path}"
        );
    }
}
