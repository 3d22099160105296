//! A policy snapshot as Envoy's resources: one route configuration (the public endpoints of
//! mcp-authz, one route per enabled server with an upstream, the catch-all) and one cluster per
//! upstream. The version is the content's hash, so every replica serves the same version for
//! the same policy.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, DataSource, HeaderValue, HeaderValueOption, SocketAddress, TransportSocket, address,
    data_source, header_value_option::HeaderAppendAction, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route,
    route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthzPerRoute, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
    UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use envoy_types::util::pack_any;
use sha2::{Digest, Sha256};

use crate::policy::upstream::Upstream;
use crate::policy::{Server, Snapshot};

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

const EXT_AUTHZ: &str = "envoy.filters.http.ext_authz";
const CORS: &str = "envoy.filters.http.cors";
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// What the resources are built with besides the policy (`xds` and `mcp.path_prefix`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub route_config_name: String,
    pub metadata_cluster: String,
    pub cors_allowed_origins: Vec<String>,
    pub upstream_ca_file: String,
    /// `/mcp/`: servers are under `/mcp/<route_key>`.
    pub path_prefix: String,
}

impl Settings {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            route_config_name: cfg.xds.route_config_name.clone(),
            metadata_cluster: cfg.xds.metadata_cluster.clone(),
            cors_allowed_origins: cfg.xds.cors_allowed_origins.clone(),
            upstream_ca_file: cfg.xds.upstream_ca_file.clone(),
            path_prefix: cfg.mcp.path_prefix.clone(),
        }
    }
}

/// One snapshot's resources, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// Hex of the content hash: equal resources, equal version, on every replica.
    pub version: String,
    /// The policy version they were built from (for logs and `/status`).
    pub policy_version: String,
    pub clusters: Vec<Any>,
    /// The one route configuration, by its name.
    pub routes: Vec<(String, Any)>,
    /// `/mcp/<route_key>` → cluster, for `/status` and logs.
    pub served: Vec<(String, String)>,
}

/// The cluster of a server's upstream.
pub fn cluster_name(server: &str) -> String {
    format!("mcp-server/{server}")
}

fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    })
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_owned())),
        ..Default::default()
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Per-route ext_authz: off (a public endpoint), or the server's name as context extension.
fn ext_authz(server: Option<&str>) -> (String, Any) {
    let r#override = match server {
        None => ext_authz_per_route::Override::Disabled(true),
        Some(s) => ext_authz_per_route::Override::CheckSettings(CheckSettings {
            // One entry: a map of one encodes the same on every replica.
            context_extensions: [(crate::grpc::CONTEXT_SERVER_KEY.to_owned(), s.to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        }),
    };
    (
        EXT_AUTHZ.to_owned(),
        pack_any(ExtAuthzPerRoute {
            r#override: Some(r#override),
        }),
    )
}

/// A public route to mcp-authz's own HTTP listener, without authorization.
fn public(matcher: route_match::PathSpecifier, cluster: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(matcher),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
            ..Default::default()
        })),
        typed_per_filter_config: [ext_authz(None)].into_iter().collect(),
        ..Default::default()
    }
}

/// An answer Envoy gives itself (after ext_authz has allowed the request): a JSON-RPC error.
fn refusal(matcher: route_match::PathSpecifier, status: u32, message: &str) -> Route {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32601, "message": message },
    })
    .to_string();
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(matcher),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(body)),
                ..Default::default()
            }),
            ..Default::default()
        })),
        response_headers_to_add: vec![
            header("content-type", "application/json"),
            header("cache-control", "no-store"),
        ],
        ..Default::default()
    }
}

/// The route of one server: `/mcp/<route_key>` and everything under it, to its cluster.
fn server_route(s: &Server, u: &Upstream, prefix: &str) -> Route {
    let matched = format!("{prefix}{}", s.route_key);
    let (prefix_rewrite, regex_rewrite) = match u.path.as_deref() {
        None => (String::new(), None),
        // `/mcp/github` → `/`, `/mcp/github/x` → `/x`: a prefix rewrite to `/` would make `//x`.
        Some("/") => (
            String::new(),
            Some(RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: format!("^{}/?", regex_escape(&matched)),
                    ..Default::default()
                }),
                substitution: "/".into(),
            }),
        ),
        Some(p) => (p.to_owned(), None),
    };
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::PathSeparatedPrefix(matched)),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(
                &s.name,
            ))),
            // MCP streams (SSE) last as long as the session: no overall timeout.
            timeout: Some(duration(Duration::ZERO)),
            prefix_rewrite,
            regex_rewrite,
            host_rewrite_specifier: Some(match &u.host {
                Some(h) => route_action::HostRewriteSpecifier::HostRewriteLiteral(h.clone()),
                None => {
                    route_action::HostRewriteSpecifier::AutoHostRewrite(BoolValue { value: true })
                }
            }),
            ..Default::default()
        })),
        typed_per_filter_config: [ext_authz(Some(&s.route_key))].into_iter().collect(),
        ..Default::default()
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '/' && c != '_' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn cluster(s: &Server, u: &Upstream, default_ca: &str) -> Cluster {
    let name = cluster_name(&s.name);
    let dns = u.endpoints.iter().any(|e| !e.is_ip());
    let endpoints = u
        .endpoints
        .iter()
        .map(|e| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: e.host.clone(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                            e.port,
                        ))),
                        ..Default::default()
                    })),
                }),
                // What auto_host_rewrite sends as Host.
                hostname: e.host.clone(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(
            envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                idle_timeout: Some(duration(u.idle_timeout)),
                ..Default::default()
            },
        ),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    let transport_socket = u.tls.as_ref().map(|t| {
        // The name the certificate must carry: the SNI sent, else the endpoint's address.
        let sni = t
            .sni
            .clone()
            .or_else(|| {
                u.host
                    .as_ref()
                    .map(|h| h.split(':').next().unwrap_or(h).to_owned())
            })
            .or_else(|| {
                u.endpoints
                    .iter()
                    .find(|e| !e.is_ip())
                    .map(|e| e.host.clone())
            });
        let san = match &sni {
            Some(n) => SubjectAltNameMatcher {
                san_type: subject_alt_name_matcher::SanType::Dns as i32,
                matcher: Some(exact(n)),
                ..Default::default()
            },
            None => SubjectAltNameMatcher {
                san_type: subject_alt_name_matcher::SanType::IpAddress as i32,
                matcher: Some(exact(
                    &u.endpoints
                        .first()
                        .map(|e| e.host.clone())
                        .unwrap_or_default(),
                )),
                ..Default::default()
            },
        };
        let context = UpstreamTlsContext {
            sni: sni.clone().unwrap_or_default(),
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: t
                    .client_cert
                    .iter()
                    .map(|(c, k)| TlsCertificate {
                        certificate_chain: file(c),
                        private_key: file(k),
                        ..Default::default()
                    })
                    .collect(),
                validation_context_type: Some(
                    common_tls_context::ValidationContextType::ValidationContext(
                        CertificateValidationContext {
                            trusted_ca: file(t.ca_file.as_deref().unwrap_or(default_ca)),
                            match_typed_subject_alt_names: vec![san],
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
        }
    });
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(if dns {
            DiscoveryType::StrictDns as i32
        } else {
            DiscoveryType::Static as i32
        })),
        dns_lookup_family: if dns {
            DnsLookupFamily::V4Preferred as i32
        } else {
            DnsLookupFamily::Auto as i32
        },
        connect_timeout: Some(duration(u.connect_timeout)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name,
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
        // One entry: a map of one encodes the same on every replica.
        typed_extension_protocol_options: [(HTTP_OPTIONS.to_owned(), pack_any(options))]
            .into_iter()
            .collect(),
        transport_socket,
        ..Default::default()
    }
}

/// The route configuration and clusters for a snapshot.
pub fn build(snapshot: &Snapshot, settings: &Settings) -> Resources {
    use route_match::PathSpecifier as P;
    let meta = &settings.metadata_cluster;
    let prefix = &settings.path_prefix;
    let mut routed: Vec<(&Server, &Upstream)> = snapshot
        .servers()
        .iter()
        .filter(|s| s.enabled)
        .filter_map(|s| s.upstream.as_ref().map(|u| (&**s, u)))
        .filter(|(_, u)| u.enabled)
        .collect();
    routed.sort_by(|a, b| a.0.route_key.cmp(&b.0.route_key));
    let mut routes = vec![
        // RFC 9728 and RFC 8414 metadata, the login facade, the assertion keys: public.
        public(
            P::Prefix("/.well-known/oauth-protected-resource".into()),
            meta,
        ),
        public(
            P::Prefix("/.well-known/oauth-authorization-server".into()),
            meta,
        ),
        public(P::Prefix("/.well-known/openid-configuration".into()), meta),
        public(P::PathSeparatedPrefix("/oauth".into()), meta),
        public(P::Path("/.well-known/mcp-authz/jwks.json".into()), meta),
    ];
    let mut served = Vec::new();
    for (s, u) in &routed {
        routes.push(server_route(s, u, prefix));
        served.push((format!("{prefix}{}", s.route_key), cluster_name(&s.name)));
    }
    // The catalog (mcp-authz answers it in the Check) and any server without a route: what
    // ext_authz lets through here has nowhere to go.
    let bare = prefix.trim_end_matches('/');
    routes.push(refusal(
        P::Path(bare.to_owned()),
        404,
        "No MCP server at this path",
    ));
    routes.push(refusal(
        P::Prefix(prefix.clone()),
        404,
        "This MCP server is not routed by the gateway",
    ));
    let cors = CorsPolicy {
        allow_origin_string_match: settings
            .cors_allowed_origins
            .iter()
            .map(|o| exact(o))
            .collect(),
        allow_methods: "GET, POST, DELETE, OPTIONS".into(),
        allow_headers: "authorization, content-type, accept, mcp-protocol-version, mcp-session-id, mcp-method, mcp-name, last-event-id, traceparent, tracestate".into(),
        expose_headers: "mcp-session-id, mcp-protocol-version, www-authenticate, x-mcp-authz-reason, retry-after".into(),
        max_age: "7200".into(),
        allow_credentials: Some(BoolValue { value: false }),
        forward_not_matching_preflights: Some(BoolValue { value: false }),
        ..Default::default()
    };
    let route_config = RouteConfiguration {
        name: settings.route_config_name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: "mcp".into(),
            domains: vec!["*".into()],
            routes,
            typed_per_filter_config: [(CORS.to_owned(), pack_any(cors))].into_iter().collect(),
            // Applied by the router, after ext_authz: never seen by the upstream.
            request_headers_to_remove: [
                "x-envoy-auth-partial-body",
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let clusters: Vec<Any> = routed
        .iter()
        .map(|(s, u)| pack_any(cluster(s, u, &settings.upstream_ca_file)))
        .collect();
    let route = pack_any(route_config);
    let mut hash = Sha256::new();
    // The build: another mcp-authz release may build other bytes from the same policy.
    hash.update(env!("CARGO_PKG_VERSION").as_bytes());
    for any in clusters.iter().chain([&route]) {
        hash.update(any.type_url.as_bytes());
        hash.update((any.value.len() as u64).to_be_bytes());
        hash.update(&any.value);
    }
    let digest = hash.finalize();
    Resources {
        version: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
        policy_version: snapshot.version.clone(),
        clusters,
        routes: vec![(settings.route_config_name.clone(), route)],
        served,
    }
}
