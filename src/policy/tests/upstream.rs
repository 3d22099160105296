//! A server's upstream: the forms an endpoint may take, and every refusal, named by field.

use crate::policy::document::UpstreamDoc;
use crate::policy::upstream::{Endpoint, compile};

fn up(endpoints: &[&str]) -> UpstreamDoc {
    UpstreamDoc {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    }
}

fn problems(u: &UpstreamDoc) -> Vec<String> {
    let mut p = Vec::new();
    assert!(
        compile("servers[0] s", u, &mut p).is_none(),
        "{u:?} compiled"
    );
    p
}

fn refused(u: &UpstreamDoc, needle: &str) {
    let p = problems(u);
    assert!(
        p.iter().any(|m| m.contains(needle)),
        "{u:?}: {p:?} does not mention {needle:?}"
    );
}

fn ep(host: &str, port: u16) -> Endpoint {
    Endpoint {
        host: host.into(),
        port,
    }
}

#[test]
fn endpoints_as_host_port_or_url() {
    let mut p = Vec::new();
    let u = compile(
        "s",
        &up(&["B.internal:8080", "10.0.0.7:8080", "[::1]:9000"]),
        &mut p,
    )
    .unwrap_or_else(|| panic!("{p:?}"));
    // Sorted and lower-cased: the same set in another order is the same upstream.
    assert_eq!(
        u.endpoints,
        vec![
            ep("10.0.0.7", 8080),
            ep("::1", 9000),
            ep("b.internal", 8080)
        ]
    );
    assert!(u.tls.is_none() && u.path.is_none());
    assert_eq!(u.connect_timeout.as_millis(), 5000);
    assert_eq!(u.idle_timeout.as_secs(), 300);

    let u = compile("s", &up(&["https://gh.internal/mcp"]), &mut p).expect("compiles");
    assert_eq!(u.endpoints, vec![ep("gh.internal", 443)]);
    assert_eq!(u.path.as_deref(), Some("/mcp"));
    assert!(u.tls.is_some());
    let u = compile("s", &up(&["http://gh.internal"]), &mut p).expect("compiles");
    assert_eq!(u.endpoints, vec![ep("gh.internal", 80)]);
    // The root is no rewrite.
    let u = compile("s", &up(&["http://gh.internal/"]), &mut p).expect("compiles");
    assert_eq!(u.path, None);
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn malformed_endpoints_are_refused_by_field() {
    for bad in [
        "gh.internal",          // no port
        "gh.internal:0",        // port 0
        "gh.internal:65536",    // past u16
        "gh.internal:+80",      // a sign
        "::1:80",               // IPv6 without brackets
        "[::1]80",              // nothing between ] and the port
        "gh_internal:80",       // not a DNS name
        "-gh.internal:80",      // label starting with -
        "gh..internal:80",      // empty label
        "ftp://gh.internal:21", // another scheme
        "http://user@gh:80",    // userinfo
        "http://gh:80/a/../b",  // dot segment
        "http://gh:80/a/",      // trailing slash
        "http://gh:80/a?b=c",   // a query
        "http://gh:80/a%2Fb",   // an escape
        "gh.internal:80,x:81",  // a list in one element
        "",
    ] {
        refused(&up(&[bad]), "endpoint");
    }
    refused(&up(&[]), "1 to 16 endpoints");
    let many: Vec<String> = (0..17).map(|i| format!("10.0.0.{i}:80")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    refused(&up(&many), "1 to 16 endpoints");
    refused(&up(&["10.0.0.1:80", "10.0.0.1:80"]), "listed twice");
}

#[test]
fn one_scheme_one_path_and_tls_fields_only_with_tls() {
    refused(&up(&["https://a.internal", "http://b.internal"]), "mix TLS");
    refused(
        &up(&["http://a.internal/x", "http://b.internal/y"]),
        "different paths",
    );
    refused(
        &UpstreamDoc {
            path: Some("/y".into()),
            ..up(&["http://a.internal/x"])
        },
        "differ",
    );
    for u in [
        UpstreamDoc {
            sni: Some("a.internal".into()),
            ..up(&["a.internal:80"])
        },
        UpstreamDoc {
            ca_file: Some("/etc/ca.pem".into()),
            ..up(&["http://a.internal"])
        },
    ] {
        refused(&u, "use https://");
    }
    refused(
        &UpstreamDoc {
            client_cert_file: Some("/etc/tls.crt".into()),
            ..up(&["https://a.internal"])
        },
        "go together",
    );
    refused(
        &UpstreamDoc {
            ca_file: Some("ca.pem".into()),
            ..up(&["https://a.internal"])
        },
        "absolute path",
    );
    refused(
        &UpstreamDoc {
            sni: Some("10.0.0.1".into()),
            ..up(&["https://10.0.0.1"])
        },
        "DNS name",
    );
    // Two names and no one name to verify.
    refused(
        &up(&["https://a.internal", "https://b.internal"]),
        "set sni",
    );
    let mut p = Vec::new();
    let u = compile(
        "s",
        &UpstreamDoc {
            sni: Some("mcp.internal".into()),
            client_cert_file: Some("/etc/tls.crt".into()),
            client_key_file: Some("/etc/tls.key".into()),
            ..up(&["https://a.internal", "https://b.internal"])
        },
        &mut p,
    )
    .unwrap_or_else(|| panic!("{p:?}"));
    let tls = u.tls.expect("tls");
    assert_eq!(tls.sni.as_deref(), Some("mcp.internal"));
    assert!(tls.client_cert.is_some());
}

#[test]
fn paths_hosts_and_timeouts_are_bounded() {
    for path in ["mcp", "/mcp/", "//mcp", "/m cp", "/a/./b"] {
        refused(
            &UpstreamDoc {
                path: Some(path.into()),
                ..up(&["a.internal:80"])
            },
            "path",
        );
    }
    refused(
        &UpstreamDoc {
            host: Some("a b".into()),
            ..up(&["a.internal:80"])
        },
        "host",
    );
    refused(
        &UpstreamDoc {
            connect_timeout_ms: Some(0),
            ..up(&["a.internal:80"])
        },
        "connect_timeout_ms",
    );
    refused(
        &UpstreamDoc {
            idle_timeout_seconds: Some(86_401),
            ..up(&["a.internal:80"])
        },
        "idle_timeout_seconds",
    );
}

#[test]
fn the_upstream_goes_through_rows_and_back() {
    let doc: crate::policy::PolicyDocument = serde_yaml_ng::from_str(
        r#"
servers:
  - name: confluence
    upstream: {endpoints: ["10.0.0.5:80"], enabled: false}
  - name: github
    upstream:
      endpoints: ["https://gh-a.internal:8443/mcp", "https://gh-b.internal:8443/mcp"]
      sni: gh.internal
      host: gh.internal
      ca_file: /etc/mcp/ca.pem
      client_cert_file: /etc/mcp/tls.crt
      client_key_file: /etc/mcp/tls.key
      connect_timeout_ms: 250
      idle_timeout_seconds: 60
  - name: jira
"#,
    )
    .expect("yaml");
    crate::policy::Snapshot::compile(&doc, "test", &[]).expect("compiles");
    assert_eq!(
        crate::policy::postgres::round_trip(&doc).expect("rows"),
        doc
    );
}
