//! The resources a policy becomes: which servers get a route and a cluster, what the route and
//! the cluster say, and a version that depends on the content only.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ExtAuthzPerRoute, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context,
};
use prost::Message;

use super::resources::{Settings, build};
use crate::policy::{PolicyDocument, Snapshot};

fn settings() -> Settings {
    Settings {
        route_config_name: "mcp".into(),
        metadata_cluster: "mcp_authz_metadata".into(),
        cors_allowed_origins: vec!["https://inspector.example".into()],
        upstream_ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
        path_prefix: "/mcp/".into(),
    }
}

fn snapshot(yaml: &str) -> Snapshot {
    let doc: PolicyDocument = serde_yaml_ng::from_str(yaml).expect("yaml");
    Snapshot::compile(&doc, "test", &[]).expect("compiles")
}

const DOC: &str = r#"
servers:
  - name: github
    route_key: gh
    upstream: {endpoints: ["10.0.0.7:8080"], path: /mcp}
  - name: jira
    upstream: {endpoints: ["https://jira-mcp.internal/"], host: jira.example}
  - name: root
    upstream: {endpoints: ["10.0.0.9:80", "10.0.0.10:80"], path: /}
  - name: off
    enabled: false
    upstream: {endpoints: ["10.0.0.8:8080"]}
  - name: static-only
  - name: parked
    upstream: {endpoints: ["10.0.0.11:80"], enabled: false}
"#;

fn routes(s: &Snapshot) -> RouteConfiguration {
    let r = build(s, &settings());
    assert_eq!(r.routes.len(), 1);
    RouteConfiguration::decode(r.routes[0].1.value.as_slice()).expect("decode")
}

fn clusters(s: &Snapshot) -> Vec<Cluster> {
    build(s, &settings())
        .clusters
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).expect("decode"))
        .collect()
}

#[test]
fn enabled_servers_with_an_upstream_get_a_route_and_a_cluster() {
    let s = snapshot(DOC);
    let built = build(&s, &settings());
    let served: Vec<&str> = built.served.iter().map(|(p, _)| p.as_str()).collect();
    // Sorted by route key; the disabled server, the one whose upstream is disabled and the one
    // without upstream have none.
    assert_eq!(served, ["/mcp/gh", "/mcp/jira", "/mcp/root"]);
    let names: Vec<String> = clusters(&s).into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        ["mcp-server/github", "mcp-server/jira", "mcp-server/root"]
    );
}

#[test]
fn a_server_route_names_its_server_for_ext_authz_and_rewrites_the_path() {
    let rc = routes(&snapshot(DOC));
    let vh = &rc.virtual_hosts[0];
    let gh = vh
        .routes
        .iter()
        .find(|r| {
            matches!(
                r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()),
                Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) if p == "/mcp/gh"
            )
        })
        .expect("route of gh");
    let per = ExtAuthzPerRoute::decode(
        gh.typed_per_filter_config["envoy.filters.http.ext_authz"]
            .value
            .as_slice(),
    )
    .expect("decode");
    match per.r#override {
        Some(ext_authz_per_route::Override::CheckSettings(c)) => {
            assert_eq!(c.context_extensions["mcp_server"], "gh");
        }
        other => panic!("{other:?}"),
    }
    let Some(route::Action::Route(a)) = &gh.action else {
        panic!("not a route")
    };
    assert_eq!(a.prefix_rewrite, "/mcp");
    assert!(matches!(
        a.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(ref c)) if c == "mcp-server/github"
    ));
    assert!(matches!(
        a.host_rewrite_specifier,
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(ref b)) if b.value
    ));
    // `/` as the path: a regex, so `/mcp/root/x` becomes `/x`, not `//x`.
    let root = vh
        .routes
        .iter()
        .filter_map(|r| match &r.action {
            Some(route::Action::Route(a)) => Some(a),
            _ => None,
        })
        .find(|a| {
            matches!(&a.cluster_specifier, Some(route_action::ClusterSpecifier::Cluster(c)) if c == "mcp-server/root")
        })
        .expect("route of root");
    assert!(root.prefix_rewrite.is_empty());
    let rr = root.regex_rewrite.as_ref().expect("regex rewrite");
    assert_eq!(rr.substitution, "/");
    assert_eq!(
        rr.pattern.as_ref().map(|p| p.regex.as_str()),
        Some("^/mcp/root/?")
    );
    // The public endpoints are not authorized; the catch-all is (ext_authz stays on).
    let public = vh
        .routes
        .iter()
        .filter(|r| {
            r.typed_per_filter_config
                .contains_key("envoy.filters.http.ext_authz")
        })
        .count();
    assert_eq!(public, 5 + 3);
    let last = vh.routes.last().expect("catch-all");
    assert!(matches!(last.action, Some(route::Action::DirectResponse(ref d)) if d.status == 404));
    assert!(last.typed_per_filter_config.is_empty());
}

#[test]
fn a_tls_upstream_is_always_verified() {
    let cs = clusters(&snapshot(DOC));
    let jira = cs
        .iter()
        .find(|c| c.name == "mcp-server/jira")
        .expect("jira");
    let ts = jira.transport_socket.as_ref().expect("TLS");
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &ts.config_type
    else {
        panic!("typed config")
    };
    let tls = UpstreamTlsContext::decode(any.value.as_slice()).expect("decode");
    // The SNI and the name checked are the Host sent (no sni given).
    assert_eq!(tls.sni, "jira.example");
    let common = tls.common_tls_context.expect("common");
    let Some(common_tls_context::ValidationContextType::ValidationContext(v)) =
        common.validation_context_type
    else {
        panic!("validation context")
    };
    assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    let ca = v.trusted_ca.expect("trusted CA");
    assert!(format!("{ca:?}").contains("/etc/ssl/certs/ca-certificates.crt"));
    // A plaintext upstream has no transport socket.
    let gh = cs
        .iter()
        .find(|c| c.name == "mcp-server/github")
        .expect("github");
    assert!(gh.transport_socket.is_none());
}

#[test]
fn the_version_follows_the_content_only() {
    let a = build(&snapshot(DOC), &settings());
    // Same servers in another order, endpoints listed otherwise: the same version.
    let reordered = r#"
servers:
  - name: static-only
  - name: root
    upstream: {endpoints: ["10.0.0.10:80", "10.0.0.9:80"], path: /}
  - name: off
    enabled: false
    upstream: {endpoints: ["10.0.0.8:8080"]}
  - name: jira
    upstream: {endpoints: ["https://jira-mcp.internal/"], host: jira.example}
  - name: github
    route_key: gh
    upstream: {endpoints: ["10.0.0.7:8080"], path: /mcp}
  - name: parked
    upstream: {endpoints: ["10.0.0.11:80"], enabled: false}
"#;
    assert_eq!(build(&snapshot(reordered), &settings()).version, a.version);
    assert_eq!(build(&snapshot(DOC), &settings()), a);
    // An endpoint changed, or a server disabled: another version.
    let moved = DOC.replace("10.0.0.7:8080", "10.0.0.17:8080");
    assert_ne!(build(&snapshot(&moved), &settings()).version, a.version);
    let off = DOC.replace("  - name: root\n", "  - name: root\n    enabled: false\n");
    assert_ne!(build(&snapshot(&off), &settings()).version, a.version);
    // A change the routes do not read (a tool rule) keeps the version.
    let rules =
        format!("{DOC}tool_rules: [{{server: github, tool: \"delete_*\", effect: deny}}]\n");
    assert_eq!(build(&snapshot(&rules), &settings()).version, a.version);
}
