//! Micro-benchmarks of the Check's hot path (`make microbench`; divan): the decision function,
//! the request-facts parser, a token-cache hit and the JWS parse of a new token. No network, no
//! runtime.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)] // a benchmark: a failed setup step is the answer, and it may print

use std::sync::Arc;

use divan::{Bencher, black_box};
use mcp_authz::identity::{KeySet, KeyStore, ValidationRules, Validator};
use mcp_authz::ids::{DirectoryId, GroupId, ObjectId};
use mcp_authz::mcp::{self, HeaderField, HttpView};
use mcp_authz::policy::{PolicyDocument, Snapshot, Subject, decide, permit};
use mcp_authz_testkit::standin::{Authority, MintRequest};

const TID: &str = "3f8a4b2c-1d5e-4f6a-9b8c-7d6e5f4a3b2c";
const API: &str = "c0ffee00-1234-4abc-8def-0123456789ab";
const AUTHORITY: &str = "https://login.example";
const BODY: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"merge_pull_request","arguments":{"repo":"x","number":1}}}"#;
const POLICY: &str = r#"
admins: {groups: ["a0000000-0000-4000-8000-00000000ad01"]}
tenants:
  - {name: engineering, servers: [github, jira]}
  - {name: sales, servers: [jira]}
servers: [{name: github}, {name: jira}]
group_grants:
  - {group: "e0000000-0000-4000-8000-0000000000e1", tenant: engineering, access_level: write}
  - {group: "50000000-0000-4000-8000-000000000051", tenant: sales, access_level: read}
tool_rules:
  - {server: github, tool: "delete_*", effect: deny}
  - {server: github, tool: "merge_*", effect: allow, min_access_level: write}
"#;

fn main() {
    divan::main();
}

fn view() -> HttpView<'static> {
    HttpView {
        method: "POST",
        path: "/mcp/github",
        host: "gw.example",
        scheme: "https",
        route_server: Some("github"),
        body: BODY,
        partial_body: false,
        content_type: HeaderField::One("application/json"),
        content_encoding: HeaderField::Absent,
        session_id: HeaderField::Absent,
        mcp_method_header: None,
        mcp_name_header: None,
        traceparent: None,
    }
}

/// What the decision reads: the policy, a `tools/call`'s facts, and a subject in 40 groups.
struct DecisionInput {
    snap: Snapshot,
    facts: mcp::RequestFacts,
    groups: Vec<GroupId>,
    tid: DirectoryId,
    oid: ObjectId,
}

impl DecisionInput {
    fn new() -> Self {
        let doc: PolicyDocument = serde_yaml_ng::from_str(POLICY).expect("policy");
        let mut groups: Vec<GroupId> = (0..39)
            .map(|i| GroupId::parse(&format!("00000000-0000-4000-8000-{i:012}")).expect("guid"))
            .collect();
        groups.push(GroupId::parse("e0000000-0000-4000-8000-0000000000e1").expect("guid"));
        DecisionInput {
            snap: Snapshot::compile(&doc, "bench", &[]).expect("compiles"),
            facts: mcp::parse(&view(), "/mcp/").facts.expect("facts"),
            groups,
            tid: DirectoryId::parse(TID).expect("guid"),
            oid: ObjectId::parse("00000000-0000-4000-8000-000000000b0b").expect("guid"),
        }
    }

    fn who(&self) -> Subject<'_> {
        Subject {
            tid: &self.tid,
            oid: &self.oid,
            upn: None,
            groups: &self.groups,
        }
    }
}

/// The decision with its basis (what `explain` and policy tests print): server, tenants from
/// 40 groups, tool rules.
#[divan::bench]
fn decide_tools_call(b: Bencher) {
    let d = DecisionInput::new();
    let who = d.who();
    b.bench_local(|| decide(black_box(&d.snap), black_box(&who), black_box(&d.facts)));
}

/// The same decision as a Check makes it: the permit alone, borrowed from the snapshot.
#[divan::bench]
fn permit_tools_call(b: Bencher) {
    let d = DecisionInput::new();
    let who = d.who();
    b.bench_local(|| permit(black_box(&d.snap), black_box(&who), black_box(&d.facts)));
}

/// Request facts from a `tools/call` body (reads only method, id and params.name).
#[divan::bench]
fn parse_request_facts(b: Bencher) {
    let v = view();
    b.bench_local(|| mcp::parse(black_box(&v), "/mcp/"));
}

/// A token already verified: SHA-256 of the token and a cache lookup, no signature.
#[divan::bench]
fn token_cache_hit(b: Bencher) {
    let authority = Authority::new(vec![TID.into()]);
    authority.set_base_url(AUTHORITY);
    let jwks = authority
        .jwks(Some(&format!("{AUTHORITY}/{{tenantid}}/v2.0")))
        .to_string();
    let keys = KeySet::from_jwks(jwks.as_bytes(), "bench").expect("jwks");
    let rules = ValidationRules {
        authority: AUTHORITY.into(),
        tenants: vec![DirectoryId::parse(TID).expect("guid")],
        audiences: vec![API.into()],
        accept_v1: true,
        accept_v2: true,
        v1_issuer: "https://sts.windows.net/{tenantid}/".into(),
        required_scopes: vec!["mcp.access".into()],
        required_roles: Vec::new(),
        allow_app_tokens: false,
        leeway: 30,
        max_token_bytes: 16 * 1024,
        allowed_client_apps: Vec::new(),
    };
    let validator = Validator::new(rules, Arc::new(KeyStore::fixed(keys)), 1000);
    let req: MintRequest = serde_json::from_value(serde_json::json!({
        "tid": TID, "oid": "00000000-0000-4000-8000-000000000b0b", "aud": API,
        "scp": "mcp.access", "groups": ["e0000000-0000-4000-8000-0000000000e1"],
    }))
    .expect("mint request");
    let token = authority.mint(&req).expect("mint");
    let first = futures::executor::block_on(validator.validate(&token)).expect("valid");
    assert!(!first.cache_hit);
    b.bench_local(|| {
        let v = futures::executor::block_on(validator.validate(black_box(&token)));
        assert!(v.as_ref().is_ok_and(|v| v.cache_hit));
        v
    });
}

/// A new token's JWS parse (split, base64url, header and claims read once, names checked for
/// repeats): what a cache miss pays before its RS256 verification.
#[divan::bench]
fn parse_new_token(b: Bencher) {
    let authority = Authority::new(vec![TID.into()]);
    authority.set_base_url(AUTHORITY);
    let req: MintRequest = serde_json::from_value(serde_json::json!({
        "tid": TID, "oid": "00000000-0000-4000-8000-000000000b0b", "aud": API,
        "scp": "mcp.access", "groups": ["e0000000-0000-4000-8000-0000000000e1"],
    }))
    .expect("mint request");
    let token = authority.mint(&req).expect("mint");
    b.bench_local(|| {
        let mut payload = Vec::new();
        let parsed = mcp_authz::identity::parse_jwt(black_box(&token), &mut payload);
        assert!(parsed.is_ok());
        parsed.map(|p| p.claims.exp)
    });
}
