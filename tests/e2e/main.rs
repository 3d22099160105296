//! End-to-end tests: real Envoy, real MCP clients and servers of the three SDKs, PostgreSQL,
//! Redis, mcp-authz, and the stand-in Entra/Graph. One module per area; the harnesses they
//! share are under `support/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr
)] // a test harness: a failed setup step is the answer, and it may print

mod assertion;
mod attacks;
mod cli;
mod cors;
mod db;
mod deploy;
mod faults;
mod gateway;
mod graph;
mod lists;
mod login;
mod matrix;
mod mtls;
mod operations;
mod proxy;
mod ratelimit;
mod replay;
mod retention;
mod sessions;
mod shadow;
mod support;
mod traces;
mod workload;
mod xds;
