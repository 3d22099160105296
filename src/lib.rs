//! mcp-authz: the Envoy external-authorization (ext_authz) server for Model Context Protocol
//! traffic, with Microsoft Entra ID identities.
//!
//! Module map, floor by floor: a module imports only modules on the floors below it (no import
//! circles), so each line reads with only the lines above it in mind.
//!
//! - Leaves: [`ids`] (identifiers and constants shared by every layer), [`reason`] (every
//!   refusal's code, status, JSON-RPC error and message: one table), [`clock`] (the one
//!   wall clock), [`metrics`] (per-Check Prometheus metrics), [`obo`] (on-behalf-of tokens),
//!   [`ratelimit`] (GCRA limits; Redis and in-process stores).
//! - [`config`]: typed configuration from a file plus environment overrides, validated.
//! - [`identity`]: Entra access-token validation (JWS parsing, JWKS keys, verified-token cache).
//! - [`groups`]: the groups a principal is in (token claim; Graph on an overage).
//! - [`sessions`]: an `Mcp-Session-Id` belongs to the identity that first used it.
//! - [`mcp`]: request facts (target server, media type, JSON-RPC method, tool).
//! - [`policy`]: the document, compiled into an immutable snapshot, the pure decision over it,
//!   and its sources (file, PostgreSQL) with hot reload.
//! - [`lists`]: filtered lists (ext_proc): a list answer rewritten to the items the caller
//!   may use, by the policy's own decision; its ext_proc protos ⇄ domain types.
//! - [`response`]: how a decision becomes headers, status codes and bodies (MCP/RFC 6750/9728).
//! - [`assertion`]: the signed identity assertion an upstream can verify (opt-in), and its JWKS.
//! - [`audit`]: one event per decision through a bounded queue to PostgreSQL or JSON lines.
//! - [`telemetry`]: logging, the OTLP trace exporter, trace context and spans.
//! - [`pipeline`]: token → identity → request facts → groups → policy → limits → response.
//! - [`grpc`]: the only module that touches Envoy's ext_authz protos; CheckRequest ⇄ domain types.
//! - [`admin`]: HTTP listeners: health, readiness, `/status` and `/metrics` from one reading,
//!   RFC 9728 protected-resource metadata.
//! - [`tls`]: mTLS on the gRPC listener; [`db`]: the PostgreSQL pool and migrations.
//! - [`app`]: builds the parts and runs the listeners until shutdown.
//! - [`cli`]: operator commands (check-config, migrate, policy export/import, explain).
//!
//! - [`xds`]: Envoy's routes and clusters from the policy's servers (ADS); above [`policy`]
//!   and beside [`pipeline`], wired in [`app`].
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
pub mod credential;
pub mod db;
pub mod groups;
pub mod grpc;
pub mod identity;
pub mod ids;
pub mod lists;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod obo;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod reason;
pub mod response;
pub mod sessions;
pub mod telemetry;
pub mod tls;
pub mod xds;

/// mimalloc for every binary of the crate (mcp-authz, and the benchmark's no-op server, so the
/// comparison stays fair): glibc's malloc took ~12 % of a warm Check's CPU, much of it in arena
/// locks shared by the worker threads. Off (feature `mimalloc`) for the fuzz targets, so that
/// AddressSanitizer sees every allocation.
#[cfg(all(feature = "mimalloc", not(test)))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The library's own tests count allocations, so that a hot path's count is asserted.
#[cfg(test)]
#[global_allocator]
static GLOBAL: stats_alloc::StatsAlloc<std::alloc::System> = stats_alloc::StatsAlloc::system();

#[cfg(test)]
pub(crate) mod test_alloc {
    /// Allocations and reallocations made while `f` runs, counted process-wide: nextest runs
    /// each test in its own process, so they are the test's own.
    pub fn allocations_in<T>(f: impl FnOnce() -> T) -> (usize, T) {
        let region = stats_alloc::Region::new(&super::GLOBAL);
        let out = f();
        let stats = region.change();
        (stats.allocations + stats.reallocations, out)
    }
}
