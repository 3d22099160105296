//! Rate limits with a real Redis: one limit across replicas, weighted fairness between tenants,
//! fallback to in-process limits when Redis fails, and 429s as a client sees them through Envoy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_authz::config::RateLimitConfig;
use mcp_authz::metrics::Metrics;
use mcp_authz::ratelimit::{Bucket, Fair, Limiter, Rate, Request, Scope};

use crate::support::helpers::*;
use crate::support::redis_server::RedisServer;

fn limiter(url: &str, retry_ms: u64) -> (Limiter, Arc<Metrics>) {
    let cfg: RateLimitConfig = serde_yaml_ng::from_str(&format!(
        "{{redis_url: \"{url}\", redis_timeout_ms: 200, redis_retry_ms: {retry_ms}, key_prefix: \"t{}:\"}}",
        uuid::Uuid::new_v4().simple()
    ))
    .expect("rate_limit config");
    let metrics = Arc::new(Metrics::new());
    (
        Limiter::new(&cfg, metrics.clone()).expect("limiter"),
        metrics,
    )
}

fn user_request(key: &str, per_minute: u32, burst_factor: f64) -> Request {
    Request {
        hard: vec![Bucket {
            key: key.into(),
            rate: Rate::new(per_minute, burst_factor),
            scope: Scope::User,
        }],
        fair: None,
    }
}

fn metric(m: &Metrics, line_start: &str) -> Option<f64> {
    m.render()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Two replicas with one Redis enforce one limit: a user cannot double the limit by having
/// the load balancer spread the requests.
#[tokio::test]
async fn replicas_sharing_redis_enforce_one_limit() {
    let redis = RedisServer::start();
    let (a, _) = limiter(&redis.url(), 1000);
    // Both replicas must use the same keys: same prefix.
    let cfg: RateLimitConfig = serde_yaml_ng::from_str(&format!(
        "{{redis_url: \"{}\", key_prefix: \"shared:\"}}",
        redis.url()
    ))
    .expect("cfg");
    let one = Limiter::new(&cfg, Arc::new(Metrics::new())).expect("replica 1");
    let two = Limiter::new(&cfg, Arc::new(Metrics::new())).expect("replica 2");
    let req = user_request("u:tid:alice", 60, 0.05); // 3 at once, then 1 per second
    assert!(one.check(&req).await.allowed);
    assert!(two.check(&req).await.allowed);
    let third = one.check(&req).await;
    assert!(third.allowed);
    assert_eq!(third.remaining, 0);
    for l in [&one, &two] {
        let refused = l.check(&req).await;
        assert!(!refused.allowed, "a fourth request within the burst passed");
        assert_eq!(refused.scope, Scope::User);
        assert!(
            refused.retry_after > Duration::from_millis(500)
                && refused.retry_after <= Duration::from_secs(1),
            "retry after {:?}",
            refused.retry_after
        );
    }
    assert_eq!(one.backend(), "redis");
    // Another prefix is another limit (the first limiter is untouched by the above).
    assert!(a.check(&req).await.allowed);
}

fn fair_request(tenant: &str, share_per_minute: u32, global_per_minute: u32) -> Request {
    Request {
        hard: vec![],
        fair: Some(Fair {
            reserved: Bucket {
                key: format!("r:{tenant}"),
                rate: Rate::new(share_per_minute, 0.02),
                scope: Scope::Tenant,
            },
            global: Bucket {
                key: "g".into(),
                rate: Rate::new(global_per_minute, 0.02),
                scope: Scope::Global,
            },
        }),
    }
}

/// Tenant "flood" offers 10× the traffic of tenant "steady"; the budget (40/s) is exhausted.
/// Equal weights reserve 20/s each: "steady" keeps its share instead of being crowded out
/// (with one shared bucket it would get 40 × 40/440 ≈ 3.6/s).
#[tokio::test]
async fn tenants_keep_their_weighted_share_in_redis() {
    let redis = RedisServer::start();
    let (l, _) = limiter(&redis.url(), 1000);
    let flood = fair_request("flood", 1200, 2400);
    let steady = fair_request("steady", 1200, 2400);
    let tick = Duration::from_micros(2500); // flood: 400/s, steady: 40/s
    let start = Instant::now();
    let measure_from = Duration::from_millis(1000);
    let total = Duration::from_millis(3000);
    let (mut got_flood, mut got_steady, mut sent_steady) = (0u32, 0u32, 0u32);
    let mut n = 0u64;
    loop {
        let at = tick * n as u32;
        if at >= total {
            break;
        }
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let counted = start.elapsed() >= measure_from;
        if l.check(&flood).await.allowed && counted {
            got_flood += 1;
        }
        if n.is_multiple_of(10) {
            if counted {
                sent_steady += 1;
            }
            if l.check(&steady).await.allowed && counted {
                got_steady += 1;
            }
        }
        n += 1;
    }
    let secs = (total - measure_from).as_secs_f64();
    let (flood_rate, steady_rate) = (got_flood as f64 / secs, got_steady as f64 / secs);
    eprintln!(
        "fairness in Redis: flood {flood_rate:.1}/s, steady {steady_rate:.1}/s of {:.1}/s offered; budget 40/s",
        sent_steady as f64 / secs
    );
    assert_eq!(l.backend(), "redis");
    assert!(
        steady_rate >= 0.8 * 20.0,
        "steady got {steady_rate:.1}/s, below its share of 20/s"
    );
    assert!(
        (0.6 * 20.0..=1.25 * 20.0).contains(&flood_rate),
        "flood got {flood_rate:.1}/s"
    );
    assert!(
        flood_rate + steady_rate <= 40.0 * 1.2,
        "budget exceeded: {flood_rate:.1} + {steady_rate:.1}"
    );
}

/// Redis is killed: Checks go on, limited in process (never unlimited), the fallback is
/// visible in metrics; when Redis is back, the shared limit resumes.
#[tokio::test]
async fn redis_outage_falls_back_to_local_limits_and_recovers() {
    let mut redis = RedisServer::start();
    let (l, metrics) = limiter(&redis.url(), 300);
    let req = user_request("u:tid:bob", 60, 0.05);
    assert!(l.check(&req).await.allowed);
    assert_eq!(
        metric(&metrics, "mcp_authz_ratelimit_redis_fallback "),
        Some(0.0)
    );

    redis.stop();
    let started = Instant::now();
    let outcomes: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            v.push(l.check(&req).await.allowed);
        }
        v
    };
    let took = started.elapsed();
    // The in-process bucket starts full: 3 pass, the rest are limited.
    assert_eq!(outcomes.iter().filter(|&&a| a).count(), 3, "{outcomes:?}");
    assert!(took < Duration::from_secs(2), "fallback took {took:?}");
    assert_eq!(l.backend(), "local");
    assert_eq!(
        metric(&metrics, "mcp_authz_ratelimit_redis_fallback "),
        Some(1.0)
    );
    assert!(metric(&metrics, "mcp_authz_ratelimit_redis_errors_total ").unwrap_or(0.0) >= 1.0);

    redis.resume();
    let back = Instant::now();
    wait_until("limits back in Redis", Duration::from_secs(15), || {
        let l = &l;
        let req = user_request("u:tid:probe", 6000, 1.0);
        async move {
            l.check(&req).await;
            l.backend() == "redis"
        }
    })
    .await;
    eprintln!(
        "Redis limits resumed {:?} after the restart",
        back.elapsed()
    );
    assert_eq!(
        metric(&metrics, "mcp_authz_ratelimit_redis_fallback "),
        Some(0.0)
    );
}

const LIMITED_POLICY: &str = r#"
rate_limits:
  user_per_minute: 60
  user_burst_factor: 0.1          # 6 at once, then one per second
  tools:
    - server: github
      tool: "whoami"
      user_per_minute: 60
      burst_factor: 0.01          # 1 at once
"#;

/// Over the limit, a client gets 429 with Retry-After, RateLimit-* and a JSON-RPC error. The
/// key is the verified user: a new session id or another client address does not escape it,
/// and another user is not affected.
#[tokio::test]
async fn over_the_limit_is_a_429_through_envoy_keyed_by_the_verified_user() {
    let redis = RedisServer::start();
    let env = TestEnv::start(Options {
        policy: format!("{POLICY}{LIMITED_POLICY}"),
        extra_config: format!("rate_limit: {{redis_url: \"{}\"}}\n", redis.url()),
        ..Default::default()
    })
    .await;
    let alice = env.user_token(ALICE, &[]);
    let not_denied = |r: &Reply| r.reason().is_empty() && r.status != 429;

    // The tool limit: one whoami, then 429 naming the tool limit; a refused call is not charged.
    let r = env
        .post(
            "/mcp/github",
            Some(&alice),
            &tool_call_body(1, "whoami"),
            &[],
        )
        .await;
    assert!(not_denied(&r), "{} {}", r.status, r.body);
    let r = env
        .post(
            "/mcp/github",
            Some(&alice),
            &tool_call_body(2, "whoami"),
            &[],
        )
        .await;
    assert_eq!((r.status, r.reason()), (429, "rate_limited"), "{}", r.body);
    let body = r.json();
    assert_eq!(body["id"], 2);
    assert_eq!(body["error"]["code"], -32029);
    assert_eq!(body["error"]["data"]["limit"], "tool");
    assert_eq!(r.header("ratelimit-policy"), Some("60;w=60;burst=1"));

    // The user limit: 6 at once, one used by whoami above.
    for i in 0..5 {
        let r = env
            .post("/mcp/github", Some(&alice), &initialize_body(10 + i), &[])
            .await;
        assert!(not_denied(&r), "request {i}: {} {}", r.status, r.body);
    }
    // Escape attempts: a new session, a new client address, another server.
    for headers in [
        vec![("mcp-session-id", "fresh-session")],
        vec![("x-forwarded-for", "203.0.113.9")],
        vec![],
    ] {
        let path = if headers.is_empty() {
            "/mcp/jira"
        } else {
            "/mcp/github"
        };
        let r = env
            .post(path, Some(&alice), &initialize_body(20), &headers)
            .await;
        assert_eq!(
            (r.status, r.reason()),
            (429, "rate_limited"),
            "{headers:?}: {}",
            r.body
        );
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("retry-after");
        assert!((1..=2).contains(&retry), "retry-after {retry}");
        assert_eq!(r.header("ratelimit-limit"), Some("60"));
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert!(r.header("ratelimit-reset").is_some());
        assert_eq!(r.header("ratelimit-policy"), Some("60;w=60;burst=6"));
        assert_eq!(r.json()["error"]["data"]["limit"], "user");
    }
    // Bob has a bucket of his own.
    let bob = env.user_token(BOB, &[ENG_GROUP]);
    let r = env
        .post("/mcp/github", Some(&bob), &initialize_body(30), &[])
        .await;
    assert!(not_denied(&r), "{} {}", r.status, r.body);

    // The state is in Redis, under the verified identity.
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let key = format!("mcp-authz:{{rl}}:u:{TID}:{ALICE}");
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(exists, "no bucket {key} in Redis");

    // After a second, one more request passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = env
        .post("/mcp/github", Some(&alice), &initialize_body(40), &[])
        .await;
    assert!(not_denied(&r), "{} {}", r.status, r.body);
}
