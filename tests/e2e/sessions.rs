//! Sessions bound to users, through the real Envoy, and shared across replicas through a real
//! Redis.

use mcp_authz::config::{RateLimitConfig, SessionsConfig};
use mcp_authz::sessions::{NotOwner, SessionBinder};

use crate::support::helpers::*;
use crate::support::redis_server::RedisServer;

/// Attack (outside review): anything that learnt another user's `Mcp-Session-Id` could act in
/// that session with a token of its own: call tools in it, read its server-to-client stream
/// (GET) or end it (DELETE). A session belongs to the identity that first used it.
#[tokio::test]
async fn a_session_belongs_to_the_user_who_first_used_it() {
    let env = TestEnv::start(Options::default()).await;
    let bob = env.user_token(BOB, &[ENG_GROUP]);
    let carol = env.user_token(CAROL, &[SALES_GROUP]);
    let sid = env.open_session("/mcp/jira", &bob).await;
    let before = env.received.all().len();
    let session = [("mcp-session-id", sid.as_str())];

    let r = env
        .post(
            "/mcp/jira",
            Some(&carol),
            &tool_call_body(3, "echo"),
            &session,
        )
        .await;
    assert_eq!((r.status, r.reason()), (403, "session_not_owned"), "{r:?}");
    assert_eq!(r.json()["error"]["code"], -32003);
    assert_eq!(r.json()["id"], 3);
    assert_eq!(r.header("www-authenticate"), None);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = Reply::from(
            env.http
                .request(method.clone(), format!("{}/mcp/jira", env.envoy_url))
                .header("authorization", format!("Bearer {carol}"))
                .header("accept", "text/event-stream")
                .header("mcp-session-id", &sid)
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(
            (r.status, r.reason()),
            (403, "session_not_owned"),
            "{method}: {r:?}"
        );
    }
    assert_eq!(
        env.received.all().len(),
        before,
        "another user's request reached the session"
    );
    // The owner goes on; the other user has sessions of her own.
    let r = env
        .post(
            "/mcp/jira",
            Some(&bob),
            &tool_call_body(4, "echo"),
            &session,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let own = env.open_session("/mcp/jira", &carol).await;
    assert_ne!(own, sid);
}

#[tokio::test]
async fn malformed_session_ids_are_refused() {
    let env = TestEnv::start(Options::default()).await;
    let bob = env.user_token(BOB, &[ENG_GROUP]);
    let long = "s".repeat(257);
    for headers in [
        vec![("mcp-session-id", "a b")],
        vec![("mcp-session-id", long.as_str())],
        vec![("mcp-session-id", "one"), ("mcp-session-id", "two")],
    ] {
        let r = env
            .post(
                "/mcp/jira",
                Some(&bob),
                &tool_call_body(1, "echo"),
                &headers,
            )
            .await;
        assert_eq!(
            (r.status, r.reason()),
            (400, "bad_session_id"),
            "{headers:?}: {r:?}"
        );
    }
    assert!(env.received.all().is_empty());
}

fn binder(redis: &RedisServer, prefix: &str) -> SessionBinder {
    let rate_limit: RateLimitConfig = serde_yaml_ng::from_str(&format!(
        "{{redis_url: \"{}\", redis_timeout_ms: 200, redis_retry_ms: 300, key_prefix: \"{prefix}:\"}}",
        redis.url()
    ))
    .expect("rate_limit config");
    SessionBinder::new(&SessionsConfig::default(), &rate_limit).expect("binder")
}

/// Two replicas share Redis: a session bound on one is refused to another user on the other.
/// Redis stopped: each binds in process (the binding made before still holds where it was
/// cached); Redis back: shared again.
#[tokio::test]
async fn bindings_are_shared_across_replicas_through_redis() {
    let mut redis = RedisServer::start();
    let prefix = uuid::Uuid::new_v4().simple().to_string();
    let (a, b) = (binder(&redis, &prefix), binder(&redis, &prefix));
    assert_eq!(a.bind("s-1", "t/bob").await, Ok(()));
    assert_eq!(b.bind("s-1", "t/carol").await, Err(NotOwner));
    assert_eq!(b.bind("s-1", "t/bob").await, Ok(()));
    assert_eq!(b.bind("s-2", "t/carol").await, Ok(()));
    assert_eq!(a.bind("s-2", "t/bob").await, Err(NotOwner));

    redis.stop();
    assert_eq!(a.bind("s-1", "t/carol").await, Err(NotOwner), "cached here");
    assert_eq!(a.bind("s-3", "t/bob").await, Ok(()), "bound in process");
    assert_eq!(a.bind("s-3", "t/carol").await, Err(NotOwner));
    redis.resume();
    // Each replica tries Redis again after redis_retry_ms: until then a probe bound on one is
    // unknown to the other.
    let probe = std::sync::atomic::AtomicU32::new(0);
    wait_until(
        "bindings shared again",
        std::time::Duration::from_secs(10),
        || {
            let id = format!(
                "probe-{}",
                probe.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let (a, b) = (&a, &b);
            async move {
                b.bind(&id, "t/carol").await.is_ok() && a.bind(&id, "t/bob").await == Err(NotOwner)
            }
        },
    )
    .await;
}
