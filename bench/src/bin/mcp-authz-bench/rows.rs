//! The rows of the report: what each measures (target, tokens, request), and one run's figures.

use crate::load::Sample;
use crate::procs;

/// The request of rows (a)-(e): an MCP `ping`, which the Check authorizes on the server grant
/// and no list filter touches (before the list filter existed these rows sent `tools/list`).
pub(crate) const PING_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
/// Rows (l) and (l0): `tools/list`, which the upstream answers with [`LIST_TOOLS`] tools, half
/// of them denied by the bench policy.
pub(crate) const LIST_BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
/// Tools in the upstream's list answer (`even_NN` allowed, `odd_NN` denied).
pub(crate) const LIST_TOOLS: usize = 100;
/// Row (f): a `tools/call` that a per-tool rule decides.
pub(crate) const CALL_BODY: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_code","arguments":{"query":"fn main language:rust","per_page":30,"page":1}}}"#;
pub(crate) const DENIED_BODY: &str = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete_repo","arguments":{"repo":"x"}}}"#;

/// Where a row's load goes.
#[derive(Clone, Copy, PartialEq)]
pub enum Target {
    /// Through the Envoy of this index (in `ENVOYS`).
    Envoy(usize),
    /// Direct gRPC to mcp-authz over TCP.
    Authz,
    /// Direct gRPC to the no-op Check server.
    Noop,
    /// Direct gRPC to the no-op Check server that verifies each token's signature.
    NoopVerify,
    /// MCP clients (`mcp-load`) through the Envoy of this index; `false`: without `tools/list`.
    McpTraffic(usize, bool),
}

#[derive(Clone, Copy, PartialEq)]
pub enum Tokens {
    /// The pool of `users` tokens, each verified once before measuring.
    Warm,
    /// Never seen before: every request verifies a signature.
    Cold,
}

pub struct Row {
    pub key: &'static str,
    pub label: &'static str,
    pub target: Target,
    pub tokens: Tokens,
    pub body: &'static str,
}

/// The Envoys, by index in `Target::Envoy`; `run_in` builds their configs in this order.
pub(crate) const ENVOYS: [&str; 8] = [
    "no auth",
    "jwt_authn",
    "jwt_authn cached",
    "ext_authz tcp",
    "ext_authz uds",
    "ext_authz tcp, no list filter",
    "ext_authz tcp to the no-op Check server",
    "ext_authz tcp to the no-op Check server answering as mcp-authz",
];

pub const ROWS: [Row; 18] = [
    Row {
        key: "a",
        label: "Envoy, no auth",
        target: Target::Envoy(0),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "b",
        label: "Envoy jwt_authn, default settings",
        target: Target::Envoy(1),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "b'",
        label: "Envoy jwt_authn, jwt_cache_config sized to the pool",
        target: Target::Envoy(2),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "c",
        label: "Envoy + mcp-authz, TCP, warm tokens",
        target: Target::Envoy(3),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "d",
        label: "Envoy + mcp-authz, unix socket, warm tokens",
        target: Target::Envoy(4),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "e",
        label: "Envoy + mcp-authz, TCP, every token new",
        target: Target::Envoy(3),
        tokens: Tokens::Cold,
        body: PING_BODY,
    },
    Row {
        key: "f",
        label: "Envoy + mcp-authz, TCP, tools/call + per-tool rule",
        target: Target::Envoy(3),
        tokens: Tokens::Warm,
        body: CALL_BODY,
    },
    Row {
        key: "c0",
        label: "as (c), through the shipped Envoy without the list filter",
        target: Target::Envoy(5),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "c-noop",
        label: "as (c), the shipped Envoy asking the no-op Check server (a free authz server: the bound)",
        target: Target::Envoy(NOOP_ENVOY),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "c-noop-id",
        label: "as (c-noop), the no-op server giving every Check mcp-authz's allow answer (its identity headers and removals): Envoy's whole work of (c), the server only reading each request and writing those bytes",
        target: Target::Envoy(NOOP_ANSWER_ENVOY),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "m",
        label: "Envoy + mcp-authz, TCP, MCP clients: sessions, initialize, tools/list, 8 tools/call (SSE and JSON answers), 2026-07-28 headers",
        target: Target::McpTraffic(3, true),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "m0",
        label: "as (m), the clients sending no tools/list",
        target: Target::McpTraffic(3, false),
        tokens: Tokens::Warm,
        body: PING_BODY,
    },
    Row {
        key: "l",
        label: "Envoy + mcp-authz, TCP, tools/list of 100 filtered to 50 (ext_proc)",
        target: Target::Envoy(3),
        tokens: Tokens::Warm,
        body: LIST_BODY,
    },
    Row {
        key: "l0",
        label: "Envoy + mcp-authz, TCP, the same tools/list unfiltered (no ext_proc)",
        target: Target::Envoy(5),
        tokens: Tokens::Warm,
        body: LIST_BODY,
    },
    Row {
        key: "g0",
        label: "direct gRPC, no-op Check server",
        target: Target::Noop,
        tokens: Tokens::Warm,
        body: CALL_BODY,
    },
    Row {
        key: "g",
        label: "direct gRPC, mcp-authz, warm tokens",
        target: Target::Authz,
        tokens: Tokens::Warm,
        body: CALL_BODY,
    },
    Row {
        key: "g0-rs256",
        label: "direct gRPC, the no-op Check server verifying each token's RS256 signature (no cache): the bound of (g-cold)",
        target: Target::NoopVerify,
        tokens: Tokens::Warm,
        body: CALL_BODY,
    },
    Row {
        key: "g-cold",
        label: "direct gRPC, mcp-authz, every token new",
        target: Target::Authz,
        tokens: Tokens::Cold,
        body: CALL_BODY,
    },
];

/// Envoys from this index on call mcp-authz (ext_authz over TCP, then the unix socket),
/// except [`NOOP_ENVOY`] and [`NOOP_ANSWER_ENVOY`].
pub(crate) const FIRST_AUTHZ_ENVOY: usize = 3;
/// The shipped Envoy with its ext_authz cluster on the no-op Check server.
pub(crate) const NOOP_ENVOY: usize = 6;
/// The shipped Envoy on the no-op Check server's listener that answers as mcp-authz.
pub(crate) const NOOP_ANSWER_ENVOY: usize = 7;

/// True for the Envoys (by index in [`ENVOYS`]) that ask the no-op server (either listener).
pub(crate) fn asks_noop(envoy: usize) -> bool {
    matches!(envoy, NOOP_ENVOY | NOOP_ANSWER_ENVOY)
}

/// True for the Envoys that ask mcp-authz.
pub(crate) fn asks_authz(envoy: usize) -> bool {
    envoy >= FIRST_AUTHZ_ENVOY && !asks_noop(envoy)
}

impl Row {
    /// True for the rows whose Envoy asks mcp-authz.
    pub fn through_authz(&self) -> bool {
        matches!(self.target, Target::Envoy(i) | Target::McpTraffic(i, _) if asks_authz(i))
    }

    /// True for the rows whose Envoy asks the no-op server (either listener).
    pub fn through_noop(&self) -> bool {
        matches!(self.target, Target::Envoy(i) if asks_noop(i))
    }
}

/// The rows a ratio target compares (report.rs, "Targets"): after the full rounds they run
/// `--verdict-rounds` more saturation rounds, so that each of those verdicts is the median of
/// that many more paired ratios. On this shared machine one round's ratio of two rows spreads
/// by ±25 %; five rounds left a verdict near its target to chance.
pub(crate) const VERDICT_ROWS: [&str; 12] = [
    "b",
    "b'",
    "c",
    "d",
    "f",
    "c0",
    "c-noop",
    "c-noop-id",
    "g0",
    "g",
    "g0-rs256",
    "g-cold",
];

/// The order the rows of `round` (from 0) run in: [`ROWS`]' order in even rounds, the reverse
/// in odd ones. In one fixed order (c) always ran right after (b'), the fastest row, and
/// (g-cold) always last: whatever a row leaves behind (connections closing, a cache's
/// housekeeping) or the time since the round began would always have weighed on the same rows.
pub fn round_order(round: usize, rows: usize) -> impl Iterator<Item = usize> {
    let forward = round.is_multiple_of(2);
    (0..rows).map(move |i| if forward { i } else { rows - 1 - i })
}

pub fn row_index(key: &str) -> anyhow::Result<usize> {
    ROWS.iter()
        .position(|r| r.key == key)
        .ok_or_else(|| anyhow::anyhow!("no row {key}"))
}

/// The three ways each row is measured.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Phase {
    Saturation,
    Fixed,
    OneConnection,
}

/// One run of one row.
#[derive(Clone, Default)]
pub struct Run {
    pub sample: Sample,
    /// CPU nanoseconds of mcp-authz during the run.
    pub authz_cpu_ns: u64,
    /// CPU nanoseconds of the Envoy under load (Envoy rows) or the no-op server (g0).
    pub other_cpu_ns: u64,
    /// The load generator's command line.
    pub command: String,
    /// The shares of the whole machine's CPU time (all cores, every process) idle and stolen
    /// by the hypervisor during the run, from /proc/stat.
    pub machine: Option<procs::Shares>,
}

impl Run {
    /// CPU seconds per 10k requests.
    pub fn per_10k(&self, ns: u64) -> f64 {
        ns as f64 / 1e9 / self.sample.requests.max(1) as f64 * 1e4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_runs_every_row_once_and_each_pair_in_both_orders() {
        let n = ROWS.len();
        let orders: Vec<Vec<usize>> = (0..4).map(|r| round_order(r, n).collect()).collect();
        for order in &orders {
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        }
        let (b1, c) = (row_index("b'").unwrap(), row_index("c").unwrap());
        let place = |o: &Vec<usize>, i| o.iter().position(|&x| x == i).unwrap();
        assert!(place(&orders[0], b1) < place(&orders[0], c));
        assert!(place(&orders[1], b1) > place(&orders[1], c));
        assert_eq!(orders[0], orders[2]);
        assert_eq!(orders[1], orders[3]);
    }
}
