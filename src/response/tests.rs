//! Response rendering: challenges, bodies, identity headers.

use super::*;
use crate::mcp::HttpView;

fn settings() -> ResponseSettings {
    ResponseSettings {
        public_base_url: None,
        path_prefix: "/mcp/".into(),
        scope: "api://g/mcp.access".into(),
    }
}

fn view() -> HttpView<'static> {
    HttpView {
        method: "POST",
        path: "/mcp/github?x=1",
        host: "mcp.example.com",
        scheme: "https",
        ..Default::default()
    }
}

fn deny_headers(v: &Verdict) -> (&u16, &Vec<(&'static str, String)>, &String) {
    match v {
        Verdict::Deny {
            status,
            headers,
            body,
        } => (status, headers, body),
        other => panic!("not a denial: {other:?}"),
    }
}

fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
}

#[test]
fn missing_token_challenge_has_no_error_attribute() {
    let v = deny(
        Denial::Refused(Reason::TokenMissing),
        None,
        "d1",
        &settings(),
        &view(),
        Some("github"),
    );
    let (status, h, body) = deny_headers(&v);
    assert_eq!(*status, 401);
    assert_eq!(
        header(h, "www-authenticate"),
        Some(
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp/github\", scope=\"api://g/mcp.access\""
        )
    );
    assert_eq!(header(h, HEADER_REASON), Some("token_missing"));
    let b: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(b["error"], "invalid_token");
    assert_eq!(b["decision_id"], "d1");
}

#[test]
fn invalid_token_challenge_and_jsonrpc_body() {
    let id = serde_json::value::RawValue::from_string("42".into()).expect("raw");
    let v = deny(
        Denial::Refused(Reason::TokenExpired),
        Some(&id),
        "d2",
        &settings(),
        &view(),
        None,
    );
    let (_, h, body) = deny_headers(&v);
    let c = header(h, "www-authenticate").expect("challenge");
    assert!(c.starts_with("Bearer error=\"invalid_token\", error_description=\"Invalid or expired access token\", resource_metadata="), "{c}");
    let b: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(b["id"], 42);
    assert_eq!(b["error"]["code"], -32001);
    assert_eq!(b["error"]["data"]["reason"], "token_expired");
    // No internal text: the message is one of the fixed strings.
    assert_eq!(b["error"]["message"], "Invalid or expired access token");
}

/// A missing scope is `insufficient_scope` (a client re-authorizes with the scope named).
#[test]
fn a_missing_scope_is_insufficient_scope() {
    let v = deny(
        Denial::Refused(Reason::TokenScopeMissing),
        None,
        "d",
        &settings(),
        &view(),
        None,
    );
    let (status, h, _) = deny_headers(&v);
    assert_eq!(*status, 403);
    let c = header(h, "www-authenticate").expect("challenge");
    assert!(c.starts_with("Bearer error=\"insufficient_scope\""), "{c}");
    assert!(c.contains("scope=\"api://g/mcp.access\""), "{c}");
}

/// Outside review: a policy denial answered `insufficient_scope`, which MCP clients treat as a
/// step-up prompt: they authorize again and again for a tool no scope will grant. A policy
/// denial is a plain 403 with no challenge.
#[test]
fn a_policy_denial_carries_no_challenge() {
    for reason in [
        Reason::ToolDenied,
        Reason::ServerNotGranted,
        Reason::GroupsOverageUnresolved,
    ] {
        let code = reason.code();
        let v = deny(
            Denial::Refused(reason),
            None,
            "d",
            &settings(),
            &view(),
            None,
        );
        let (status, h, body) = deny_headers(&v);
        assert_eq!(*status, 403);
        assert_eq!(header(h, "www-authenticate"), None, "{code}");
        let b: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(b["error"], "access_denied");
    }
}

#[test]
fn request_errors_carry_no_challenge() {
    let v = deny(
        Denial::from(crate::mcp::FactsError::BodyTruncated),
        None,
        "d",
        &settings(),
        &view(),
        None,
    );
    let (status, h, _) = deny_headers(&v);
    assert_eq!(*status, 413);
    assert!(header(h, "www-authenticate").is_none());
}

#[test]
fn configured_base_url_wins_and_odd_hosts_are_not_echoed() {
    let mut s = settings();
    s.public_base_url = Some("https://gw.example".into());
    assert_eq!(
        resource_metadata_url(&s, &view(), None).as_deref(),
        Some("https://gw.example/.well-known/oauth-protected-resource/mcp/github")
    );
    // Attack: a Host header crafted to inject into the challenge.
    let mut v = view();
    v.host = "evil.example\", error=\"x";
    assert_eq!(resource_metadata_url(&settings(), &v, None), None);
    // A path with odd characters falls back to prefix + server.
    let mut v = view();
    v.path = "/mcp/github/\"x";
    assert_eq!(
        resource_metadata_url(&settings(), &v, Some("github")).as_deref(),
        Some("https://mcp.example.com/.well-known/oauth-protected-resource/mcp/github")
    );
}

#[test]
fn allow_sets_identity_and_strips_spoofed_and_token_headers() {
    let who = Identity {
        oid: "o",
        tid: "t",
        label: Some("zoë@contoso.example\r\nx: y"),
        tenant: "eng",
        level: "write",
    };
    let v = allow(
        &who,
        "d",
        UpstreamAuth::Remove,
        [
            "X-MCP-User-Oid",
            "x-mcp-role",
            "content-type",
            "authorization",
        ]
        .into_iter(),
    );
    let Verdict::Allow { set, remove, .. } = v else {
        panic!("not allow")
    };
    assert_eq!(
        set.iter()
            .find(|(k, _)| *k == HEADER_USER_OID)
            .map(|(_, v)| v.as_str()),
        Some("o")
    );
    assert_eq!(
        set.iter()
            .find(|(k, _)| *k == HEADER_USER)
            .map(|(_, v)| v.as_str()),
        Some("zo%C3%AB@contoso.example%0D%0Ax: y")
    );
    assert!(remove.contains(&"x-mcp-role".to_string()));
    assert!(remove.contains(&"authorization".to_string()));
    assert!(
        !remove.iter().any(|r| r == "x-mcp-user-oid"),
        "set headers overwrite, not remove"
    );
    assert!(!remove.contains(&"content-type".to_string()));

    let v = allow(&who, "d", UpstreamAuth::Keep, std::iter::empty());
    let Verdict::Allow { remove, .. } = v else {
        panic!("not allow")
    };
    assert!(!remove.contains(&"authorization".to_string()));
}

#[test]
fn header_safe_encodes_everything_unprintable() {
    assert_eq!(header_safe("plain user@x"), "plain user@x");
    assert_eq!(header_safe("100%"), "100%25");
    assert_eq!(header_safe("\n"), "%0A");
    assert_eq!(header_safe("\u{7f}"), "%7F");
}

#[test]
fn obo_replaces_the_token_and_claims_challenges_are_401() {
    let who = Identity {
        oid: "o",
        tid: "t",
        label: None,
        tenant: "eng",
        level: "read",
    };
    let v = allow(
        &who,
        "d",
        UpstreamAuth::Replace("Bearer minted".into()),
        ["authorization"].into_iter(),
    );
    let Verdict::Allow { set, remove, .. } = v else {
        panic!("not allow")
    };
    assert_eq!(
        set.iter()
            .find(|(k, _)| *k == "authorization")
            .map(|(_, v)| v.as_str()),
        Some("Bearer minted")
    );
    assert!(!remove.contains(&"authorization".to_string()));
    assert_eq!(
        UpstreamAuth::for_forwarding(crate::policy::TokenForwarding::Obo),
        None,
        "obo needs an exchange"
    );

    let v = deny(
        Denial::ClaimsChallenge {
            claims: Some("eyJhY2Nlc3NfdG9rZW4iOnt9fQ==".into()),
        },
        None,
        "d",
        &settings(),
        &view(),
        None,
    );
    let (status, h, _) = deny_headers(&v);
    assert_eq!(*status, 401);
    let c = header(h, "www-authenticate").expect("challenge");
    assert!(
        c.starts_with(
            "Bearer error=\"insufficient_claims\", claims=\"eyJhY2Nlc3NfdG9rZW4iOnt9fQ==\""
        ),
        "{c}"
    );
}

#[test]
fn rate_limited_is_429_with_retry_after_and_ratelimit_headers_in_both_body_shapes() {
    let info = RateLimitInfo {
        scope: "tenant",
        limit: 1200,
        burst: 1800,
        retry_after: 2,
        reset: 2,
    };
    let v = deny(
        Denial::RateLimited(info),
        None,
        "d1",
        &settings(),
        &view(),
        None,
    );
    let (status, h, body) = deny_headers(&v);
    assert_eq!(*status, 429);
    assert_eq!(header(h, "retry-after"), Some("2"));
    assert_eq!(header(h, "ratelimit-limit"), Some("1200"));
    assert_eq!(header(h, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(h, "ratelimit-reset"), Some("2"));
    assert_eq!(header(h, "ratelimit-policy"), Some("1200;w=60;burst=1800"));
    assert!(header(h, "www-authenticate").is_none());
    let b: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(b["error"], "rate_limited");
    assert_eq!(b["reason"], "rate_limited");
    assert_eq!(b["retry_after"], 2);
    assert_eq!(b["limit"], "tenant");

    let id = RawValue::from_string("\"req-7\"".into()).expect("id");
    let v = deny(
        Denial::RateLimited(info),
        Some(&id),
        "d1",
        &settings(),
        &view(),
        None,
    );
    let (_, _, body) = deny_headers(&v);
    let b: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(b["id"], "req-7");
    assert_eq!(b["error"]["code"], -32029);
    assert_eq!(b["error"]["data"]["reason"], "rate_limited");
}
