//! mcp-authz: the Envoy external-authorization (ext_authz) server for Model Context Protocol
//! traffic, with Microsoft Entra ID identities.
//!
//! Module map, in the order a Check flows through it:
//! - [`grpc`]: the only module that touches Envoy's protos; CheckRequest ⇄ domain types.
//! - [`pipeline`]: identity → groups → request facts → policy → response.
//! - [`identity`]: Entra access-token validation (JWT parsing, JWKS keys, verified-token cache).
//! - [`groups`]: the groups a principal is in (token claim; overage detection).
//! - [`obo`]: on-behalf-of tokens for upstreams that need their own.
//! - [`mcp`]: request facts (target server, JSON-RPC method, tool) from an HTTP request.
//! - [`policy`]: the compiled, immutable policy snapshot, the pure decision function, and the
//!   file source with hot reload.
//! - [`response`]: how a decision becomes headers, status codes and bodies (MCP/RFC 6750/9728).
//! - [`sessions`]: an `Mcp-Session-Id` belongs to the identity that first used it.
//! - [`assertion`]: the signed identity assertion an upstream can verify (opt-in), and its JWKS.
//! - [`audit`]: one event per decision through a bounded queue to PostgreSQL or JSON lines.
//! - [`metrics`]: Prometheus metrics on the admin listener.
//! - [`admin`]: HTTP listeners: health/readiness and RFC 9728 protected-resource metadata.
//! - [`tls`]: mTLS on the gRPC listener, certificates reloaded from their files.
//! - [`config`]: typed configuration from a file plus environment overrides.
//! - [`cli`]: operator commands (migrate, policy export/import, explain).
//! - [`app`]: wires the parts and runs the listeners until shutdown.
//!
//! Not here: the stand-in Entra ID / Microsoft Graph and the sample MCP server (crate
//! `mcp-authz-testkit`, `testkit/`), and `make bench` / `make soak` (crate `mcp-authz-bench`,
//! `bench/`).
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod assertion;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod groups;
pub mod grpc;
pub mod identity;
pub mod ids;
pub mod mcp;
pub mod metrics;
pub mod obo;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod response;
pub mod sessions;
pub mod telemetry;
pub mod tls;

/// mimalloc for every binary of the crate (mcp-authz, and the benchmark's no-op server, so the
/// comparison stays fair): glibc's malloc took ~12 % of a warm Check's CPU, much of it in arena
/// locks shared by the worker threads. Off (feature `mimalloc`) for the fuzz targets, so that
/// AddressSanitizer sees every allocation.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
