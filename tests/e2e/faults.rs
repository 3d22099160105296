//! Faults under traffic, through the real Envoy: a bounded load loop runs before, during and
//! after each fault. For each: no request that must be refused is ever allowed, requests that
//! should pass get either through or the stated degradation, and recovery is measured.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mcp_authz_testkit::standin::GraphFaults;

use crate::support::helpers::*;
use crate::support::redis_server::RedisServer;

/// One kind of request in the loop.
struct Case {
    name: &'static str,
    path: &'static str,
    token: Option<String>,
    /// Must never be allowed, fault or not.
    must_deny: bool,
}

#[derive(Default)]
struct Log {
    /// (phase, case) → status/reason → count
    seen: BTreeMap<(&'static str, &'static str), BTreeMap<String, u32>>,
    wrongly_allowed: Vec<String>,
    requests: u32,
}

impl Log {
    fn outcomes(&self, phase: &'static str, case: &'static str) -> Vec<String> {
        self.seen
            .get(&(phase, case))
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
    fn report(&self, scenario: &str) {
        eprintln!("{scenario}: {} requests", self.requests);
        for ((phase, case), m) in &self.seen {
            eprintln!("  {phase:<8} {case:<18} {m:?}");
        }
        assert!(
            self.wrongly_allowed.is_empty(),
            "{scenario}: WRONGLY ALLOWED: {:?}",
            self.wrongly_allowed
        );
    }
}

/// One round: every case once, concurrently. Returns the statuses in case order.
async fn round(env: &TestEnv, cases: &[Case], phase: &'static str, log: &mut Log) -> Vec<u16> {
    let body = initialize_body(1);
    let replies = futures::future::join_all(
        cases
            .iter()
            .map(|c| env.post(c.path, c.token.as_deref(), &body, &[])),
    )
    .await;
    let mut statuses = Vec::new();
    for (c, r) in cases.iter().zip(replies) {
        log.requests += 1;
        let key = format!("{} {}", r.status, r.reason());
        if c.must_deny && (200..300).contains(&r.status) {
            log.wrongly_allowed
                .push(format!("{phase} {}: {key}", c.name));
        }
        *log.seen
            .entry((phase, c.name))
            .or_default()
            .entry(key)
            .or_default() += 1;
        statuses.push(r.status);
    }
    statuses
}

async fn run_for(env: &TestEnv, cases: &[Case], phase: &'static str, d: Duration, log: &mut Log) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        round(env, cases, phase, log).await;
    }
}

/// Runs rounds until case `i` gets a 200; the time it took.
async fn recovery(
    env: &TestEnv,
    cases: &[Case],
    i: usize,
    limit: Duration,
    log: &mut Log,
) -> Duration {
    let started = Instant::now();
    loop {
        if round(env, cases, "after", log).await[i] == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} did not recover within {limit:?}",
            cases[i].name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The requests every scenario sends besides its own: a user of another tenant, a forged
/// token, no token. None may ever pass.
fn hostile_cases(env: &TestEnv) -> Vec<Case> {
    let mut forged = env.user_token(ALICE, &[]);
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    vec![
        Case {
            name: "other tenant",
            path: "/mcp/github",
            token: Some(env.user_token(CAROL, &[SALES_GROUP])),
            must_deny: true,
        },
        Case {
            name: "forged",
            path: "/mcp/github",
            token: Some(forged),
            must_deny: true,
        },
        Case {
            name: "no token",
            path: "/mcp/github",
            token: None,
            must_deny: true,
        },
    ]
}

/// An engineering user who may use github, then the hostile cases.
fn allowed_and_hostile_cases(env: &TestEnv) -> Vec<Case> {
    let mut cases = vec![Case {
        name: "allowed user",
        path: "/mcp/github",
        token: Some(env.user_token(BOB, &[ENG_GROUP])),
        must_deny: false,
    }];
    cases.extend(hostile_cases(env));
    cases
}

/// mcp-authz crashes: Envoy answers 503 to everything (fail closed) until it is back on its
/// unix socket.
#[tokio::test]
async fn authz_killed_and_restarted_envoy_fails_closed() {
    let mut env = TestEnv::start(Options {
        unix_socket: true,
        ..Default::default()
    })
    .await;
    let cases = allowed_and_hostile_cases(&env);
    let mut log = Log::default();
    run_for(&env, &cases, "before", Duration::from_millis(300), &mut log).await;
    env.kill_authz().await;
    run_for(&env, &cases, "during", Duration::from_millis(500), &mut log).await;
    env.restart_authz().await;
    let took = recovery(&env, &cases, 0, Duration::from_secs(10), &mut log).await;
    run_for(&env, &cases, "after", Duration::from_millis(200), &mut log).await;
    log.report("mcp-authz killed");
    eprintln!("recovered {took:?} after the restart was ready");
    assert_eq!(log.outcomes("before", "allowed user"), ["200 "]);
    // While it is gone, even the allowed user gets 503: fail closed.
    assert_eq!(log.outcomes("during", "allowed user"), ["503 "]);
    for c in ["other tenant", "forged", "no token"] {
        assert_eq!(log.outcomes("during", c), ["503 "], "{c}");
    }
}

/// The issuer's discovery/JWKS go down and the signing key is rotated meanwhile. Tokens already
/// verified keep working (cached until exp); tokens signed by the new key are refused until the
/// JWKS answers again, then accepted.
#[tokio::test]
async fn jwks_down_while_keys_rotate() {
    let env = TestEnv::start(Options::default()).await;
    let old_key_token = env.user_token(BOB, &[ENG_GROUP]);
    let mut cases = vec![Case {
        name: "cached token",
        path: "/mcp/github",
        token: Some(old_key_token),
        must_deny: false,
    }];
    cases.extend(hostile_cases(&env));
    let mut log = Log::default();
    run_for(&env, &cases, "before", Duration::from_millis(300), &mut log).await;
    env.authority.set_oidc_down(true);
    env.authority.rotate(true);
    cases.push(Case {
        name: "new-key token",
        path: "/mcp/github",
        token: Some(env.user_token(ALICE, &[])),
        must_deny: false,
    });
    run_for(
        &env,
        &cases,
        "during",
        Duration::from_millis(1500),
        &mut log,
    )
    .await;
    env.authority.set_oidc_down(false);
    let took = recovery(&env, &cases, 4, Duration::from_secs(10), &mut log).await;
    log.report("JWKS down + rotation");
    eprintln!("new-key tokens accepted {took:?} after the JWKS came back");
    assert_eq!(log.outcomes("during", "cached token"), ["200 "]);
    assert_eq!(
        log.outcomes("during", "new-key token"),
        ["401 token_kid_unknown"]
    );
}

/// Graph goes down, then throttles. A user whose groups are cached keeps access (stale within
/// the bound); a user never seen gets 503 groups_unavailable, never a guess; both work again
/// when Graph does.
#[tokio::test]
async fn graph_down_and_throttling_under_traffic() {
    let env = TestEnv::start(Options {
        graph: true,
        ..Default::default()
    })
    .await;
    let known = super::graph::overage_token(&env.authority, BOB, vec![ENG_GROUP.into()]);
    let stranger_oid = "00000000-0000-4000-8000-00000000beef";
    let stranger =
        super::graph::overage_token(&env.authority, stranger_oid, vec![ENG_GROUP.into()]);
    let outsider = super::graph::overage_token(
        &env.authority,
        "00000000-0000-4000-8000-00000000a0a0",
        vec![SALES_GROUP.into()],
    );
    let mut cases = vec![
        Case {
            name: "cached overage",
            path: "/mcp/github",
            token: Some(known),
            must_deny: false,
        },
        Case {
            name: "overage, no grant",
            path: "/mcp/github",
            token: Some(outsider),
            must_deny: true,
        },
    ];
    cases.extend(hostile_cases(&env));
    let mut log = Log::default();
    run_for(&env, &cases, "before", Duration::from_millis(300), &mut log).await;
    for (phase, faults) in [
        (
            "down",
            GraphFaults {
                down: true,
                ..Default::default()
            },
        ),
        (
            "throttle",
            GraphFaults {
                throttle_next: 1_000_000,
                retry_after: Some("1".into()),
                ..Default::default()
            },
        ),
    ] {
        env.authority.set_graph_faults(faults);
        // Past the 1 s freshness, so cached groups are served stale.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut with_stranger = std::mem::take(&mut cases);
        with_stranger.push(Case {
            name: "uncached overage",
            path: "/mcp/github",
            token: Some(stranger.clone()),
            must_deny: false,
        });
        run_for(
            &env,
            &with_stranger,
            phase,
            Duration::from_millis(800),
            &mut log,
        )
        .await;
        with_stranger.pop();
        cases = with_stranger;
        assert_eq!(log.outcomes(phase, "cached overage"), ["200 "], "{phase}");
        assert_eq!(
            log.outcomes(phase, "uncached overage"),
            ["503 groups_unavailable"],
            "{phase}"
        );
    }
    env.authority.set_graph_faults(GraphFaults::default());
    cases.push(Case {
        name: "uncached overage",
        path: "/mcp/github",
        token: Some(stranger),
        must_deny: false,
    });
    let took = recovery(
        &env,
        &cases,
        cases.len() - 1,
        Duration::from_secs(10),
        &mut log,
    )
    .await;
    log.report("Graph down, then throttling");
    eprintln!("uncached overage users served {took:?} after Graph recovered");
}

/// Redis (shared rate limits) is killed and restarted: traffic goes on under in-process limits,
/// nothing is let through that should not be, and shared limiting resumes.
#[tokio::test]
async fn redis_killed_and_restarted_under_traffic() {
    let mut redis = RedisServer::start();
    let env = TestEnv::start(Options {
        policy: format!(
            "{POLICY}rate_limits: {{user_per_minute: 100000, global_per_minute: 1000000}}\n"
        ),
        extra_config: format!(
            "rate_limit: {{redis_url: \"{}\", redis_retry_ms: 200}}\n",
            redis.url()
        ),
        ..Default::default()
    })
    .await;
    let cases = allowed_and_hostile_cases(&env);
    let fallback = || async {
        scrape_metrics(&env.http, env.authz.admin)
            .await
            .lines()
            .find(|l| l.starts_with("mcp_authz_ratelimit_redis_fallback "))
            .map(|l| l.ends_with(" 1"))
            .unwrap_or(false)
    };
    let mut log = Log::default();
    run_for(&env, &cases, "before", Duration::from_millis(300), &mut log).await;
    assert!(!fallback().await);
    redis.stop();
    run_for(&env, &cases, "during", Duration::from_millis(800), &mut log).await;
    assert!(fallback().await, "fallback not reported");
    redis.resume();
    let back = Instant::now();
    while fallback().await {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "Redis limits did not resume"
        );
        round(&env, &cases, "after", &mut log).await;
    }
    let took = back.elapsed();
    log.report("Redis killed");
    eprintln!("shared limits resumed {took:?} after Redis restarted");
    assert_eq!(log.outcomes("during", "allowed user"), ["200 "]);
}

/// PostgreSQL (policy source) is stopped and restarted: decisions go on from the last snapshot
/// (allowed stays allowed, refused stays refused); a policy change made after the restart is
/// picked up, and the time until it is measured.
#[tokio::test]
async fn postgres_stopped_and_restarted_under_traffic() {
    let db = crate::support::pg::TestDb::create_private().await;
    db.import(POLICY, false).await;
    let env = TestEnv::start(Options {
        database_url: Some(db.url.clone()),
        ..Default::default()
    })
    .await;
    let mut cases = allowed_and_hostile_cases(&env);
    let mut log = Log::default();
    run_for(&env, &cases, "before", Duration::from_millis(300), &mut log).await;
    let server = db.server.as_ref().expect("private server");
    db.pool.close().await;
    server.stop();
    run_for(
        &env,
        &cases,
        "during",
        Duration::from_millis(1500),
        &mut log,
    )
    .await;
    server.resume();
    // After the restart, sales is granted github: the "other tenant" user may pass once the
    // change is loaded, and no sooner.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("reconnect");
    sqlx::query("INSERT INTO tenant_servers (tenant, server) VALUES ('sales', 'github')")
        .execute(&pool)
        .await
        .expect("grant");
    cases[1].must_deny = false;
    let took = recovery(&env, &cases, 1, Duration::from_secs(15), &mut log).await;
    log.report("PostgreSQL stopped");
    eprintln!("a policy change after the restart took effect in {took:?}");
    assert_eq!(log.outcomes("during", "allowed user"), ["200 "]);
    assert_eq!(
        log.outcomes("during", "other tenant"),
        ["403 server_not_granted"]
    );
}
