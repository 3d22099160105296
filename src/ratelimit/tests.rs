use super::*;

const SEC: i64 = 1_000_000;

fn bucket(key: &str, per_minute: u32, burst_factor: f64, scope: Scope) -> Bucket {
    Bucket {
        key: key.into(),
        rate: Rate::new(per_minute, burst_factor),
        scope,
    }
}

fn user(per_minute: u32, burst_factor: f64) -> Request {
    Request {
        hard: vec![bucket("u", per_minute, burst_factor, Scope::User)],
        fair: None,
    }
}

#[test]
fn burst_is_the_factor_times_the_rate_and_at_least_one() {
    assert_eq!(Rate::new(100, 1.5).burst, 150);
    assert_eq!(Rate::new(60, 0.05).burst, 3);
    assert_eq!(Rate::new(60, 0.001).burst, 1);
    assert_eq!(Rate::new(7, 1.0).burst, 7);
    assert_eq!(Rate::new(60, 1.0).interval_us(), SEC);
}

#[test]
fn a_full_bucket_gives_its_burst_then_refuses_until_one_interval_passes() {
    let store = LocalStore::new(100);
    let req = user(60, 0.05); // one per second, three at once
    let t0 = 1_000 * SEC;
    let remaining: Vec<u32> = (0..3)
        .map(|_| {
            let o = store.check(&req, t0);
            assert!(o.allowed);
            o.remaining
        })
        .collect();
    assert_eq!(remaining, [2, 1, 0]);
    let refused = store.check(&req, t0);
    assert!(!refused.allowed);
    assert_eq!(refused.scope, Scope::User);
    assert_eq!(refused.retry_after, Duration::from_secs(1));
    // Half a second later: still nothing; one second later: exactly one more.
    assert!(!store.check(&req, t0 + SEC / 2).allowed);
    assert!(store.check(&req, t0 + SEC).allowed);
    assert!(!store.check(&req, t0 + SEC).allowed);
    // After idling, never more than the burst.
    let later = t0 + 3600 * SEC;
    let n = (0..10).filter(|_| store.check(&req, later).allowed).count();
    assert_eq!(n, 3);
}

#[test]
fn a_refusal_by_one_limit_consumes_none_of_the_others() {
    let store = LocalStore::new(100);
    let tool_and_user = Request {
        hard: vec![
            bucket("u", 600, 1.0, Scope::User),
            bucket("t", 60, 0.05, Scope::Tool),
        ],
        fair: None,
    };
    let t0 = 1_000 * SEC;
    for _ in 0..3 {
        assert!(store.check(&tool_and_user, t0).allowed);
    }
    for _ in 0..50 {
        let o = store.check(&tool_and_user, t0);
        assert!(!o.allowed);
        assert_eq!(o.scope, Scope::Tool);
    }
    // The user bucket was charged only for the three admitted calls: 597 left.
    let user_only = Request {
        hard: vec![bucket("u", 600, 1.0, Scope::User)],
        fair: None,
    };
    assert_eq!(store.check(&user_only, t0).remaining, 596);
}

#[test]
fn when_several_limits_refuse_the_one_that_frees_last_is_reported() {
    let req = Request {
        hard: vec![
            bucket("a", 60, 0.02, Scope::User),  // 1 at once, 1 s apart
            bucket("b", 6, 0.17, Scope::Tenant), // 2 at once, 10 s apart
        ],
        fair: None,
    };
    let now = 100 * SEC;
    let tats = [now + SEC, now + 20 * SEC];
    let (o, writes) = evaluate(&req, &tats, now);
    assert!(!o.allowed);
    assert!(writes.is_empty());
    assert_eq!(o.scope, Scope::Tenant);
    assert_eq!(o.retry_after, Duration::from_secs(10));
}

/// Offers `demand[i]` requests per second from tenant `i` for `seconds` of virtual time,
/// evenly spread and interleaved, and returns what each got in the second half.
fn simulate(store: &LocalStore, reqs: &[Request], demand: &[u32], seconds: i64) -> Vec<u64> {
    let mut events: Vec<(i64, usize)> = Vec::new();
    for (i, &d) in demand.iter().enumerate() {
        let gap = SEC / i64::from(d);
        let offset = gap * i as i64 / demand.len() as i64;
        let mut t = offset;
        while t < seconds * SEC {
            events.push((t, i));
            t += gap;
        }
    }
    events.sort();
    let mut got = vec![0u64; reqs.len()];
    let t0 = 10_000 * SEC;
    for (t, i) in events {
        if store.check(&reqs[i], t0 + t).allowed && t >= seconds * SEC / 2 {
            got[i] += 1;
        }
    }
    got
}

fn fair(tenant: &str, share_per_minute: u32, global_per_minute: u32) -> Request {
    Request {
        hard: vec![],
        fair: Some(Fair {
            reserved: bucket(
                &format!("r:{tenant}"),
                share_per_minute,
                0.05,
                Scope::Tenant,
            ),
            global: bucket("g", global_per_minute, 0.05, Scope::Global),
        }),
    }
}

/// The attack the earlier gateway could not stop: one tenant floods, the other starves.
/// Budget 20/s; weights 1:1 reserve 10/s each. Tenant A asks 10× what B asks.
#[test]
fn under_contention_each_tenant_keeps_its_weighted_share() {
    let store = LocalStore::new(100);
    let reqs = [fair("a", 600, 1200), fair("b", 600, 1200)];
    let got = simulate(&store, &reqs, &[200, 20], 60);
    let per_sec: Vec<f64> = got.iter().map(|&n| n as f64 / 30.0).collect();
    // B keeps its share (10/s of its 20/s demand), A gets the rest of the budget, not more.
    assert!((9.5..=10.5).contains(&per_sec[1]), "shares {per_sec:?}");
    assert!((9.5..=10.5).contains(&per_sec[0]), "shares {per_sec:?}");

    // The same traffic against one plain global bucket: B starves (≈ 20 × 20/220 = 1.8/s).
    let plain = LocalStore::new(100);
    let global = Request {
        hard: vec![bucket("g", 1200, 0.05, Scope::Global)],
        fair: None,
    };
    let got = simulate(&plain, &[global.clone(), global], &[200, 20], 60);
    assert!(got[1] as f64 / 30.0 < 3.0, "plain bucket {got:?}");
}

#[test]
fn weights_set_the_shares_and_unused_share_is_lent() {
    // Weights 1:3 → 5/s and 15/s reserved of 20/s. The light-weight tenant floods.
    let store = LocalStore::new(100);
    let reqs = [fair("a", 300, 1200), fair("b", 900, 1200)];
    let got = simulate(&store, &reqs, &[200, 20], 60);
    let per_sec: Vec<f64> = got.iter().map(|&n| n as f64 / 30.0).collect();
    assert!((14.5..=15.5).contains(&per_sec[1]), "shares {per_sec:?}");
    assert!((4.5..=5.5).contains(&per_sec[0]), "shares {per_sec:?}");

    // B asks for only 4/s: A borrows the 11/s B leaves, and the total stays at the budget.
    let store = LocalStore::new(100);
    let got = simulate(&store, &reqs, &[200, 4], 60);
    let per_sec: Vec<f64> = got.iter().map(|&n| n as f64 / 30.0).collect();
    assert!((3.9..=4.1).contains(&per_sec[1]), "shares {per_sec:?}");
    assert!((15.5..=16.5).contains(&per_sec[0]), "shares {per_sec:?}");
}

#[test]
fn the_local_store_is_bounded() {
    let store = LocalStore::new(16);
    let now = 1_000 * SEC;
    for i in 0..100 {
        let req = Request {
            hard: vec![bucket(&format!("u{i}"), 60, 1.0, Scope::User)],
            fair: None,
        };
        assert!(store.check(&req, now).allowed);
        assert!(store.len() <= 16, "{} buckets", store.len());
    }
    assert!(store.evictions() > 0);
    // Buckets that are full again are swept first, without counting as evictions.
    let store = LocalStore::new(16);
    for i in 0..100 {
        let req = user_key(&format!("u{i}"));
        assert!(store.check(&req, now + i64::from(i) * 2 * SEC).allowed);
    }
    assert_eq!(store.evictions(), 0);
}

fn user_key(key: &str) -> Request {
    Request {
        hard: vec![bucket(key, 60, 0.02, Scope::User)],
        fair: None,
    }
}
