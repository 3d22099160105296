//! The Markdown report of `make bench`: medians of the rounds, the targets of issue 9 next to
//! the figures, and the commands.

use std::collections::HashMap;

use crate::procs::Shares;
use crate::{Phase, ROWS, Run, RunArgs, Target, VERDICT_ROWS, row_index};

pub struct Input<'a> {
    pub args: &'a RunArgs,
    pub runs: &'a HashMap<(usize, Phase), Vec<Run>>,
    pub fixed_rate: u64,
    pub verify_us: f64,
    /// One new token through `Validator::validate` in process, one thread (µs), and its JWS
    /// parse alone.
    pub new_token_us: f64,
    pub parse_us: f64,
    pub envoy_version: &'a str,
    pub wrk_version: &'a str,
    /// The login facade's timings, when measured.
    pub login: Option<&'a crate::login::Figures>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians of one row in one phase.
#[derive(Default, Clone, Copy)]
pub struct Med {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// CPU seconds per 10k requests: mcp-authz, and Envoy or the no-op server.
    pub authz: f64,
    pub other: f64,
    /// The shares of the machine's CPU idle and stolen (all cores), as percentages.
    pub idle: f64,
    pub stolen: f64,
    pub errors: u64,
}

fn med(runs: &[Run]) -> Med {
    let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    // A share of the machine's CPU, as a percentage, over the runs that have a reading.
    let machine = |f: &dyn Fn(&Shares) -> f64| {
        median(
            runs.iter()
                .filter_map(|r| r.machine.as_ref())
                .map(|s| 100.0 * f(s))
                .collect(),
        )
    };
    Med {
        rate: m(&|r| r.sample.rate()),
        p50: m(&|r| r.sample.p50 as f64),
        p99: m(&|r| r.sample.p99 as f64),
        p999: m(&|r| r.sample.p999 as f64),
        authz: m(&|r| r.per_10k(r.authz_cpu_ns)),
        other: m(&|r| r.per_10k(r.other_cpu_ns)),
        idle: machine(&|s| s.idle),
        stolen: machine(&|s| s.stolen),
        errors: runs.iter().map(|r| r.sample.errors).sum(),
    }
}

/// The runs of row `key` in `phase` (none for an unknown row or one not run).
fn runs_of<'a>(all: &'a HashMap<(usize, Phase), Vec<Run>>, key: &str, phase: Phase) -> &'a [Run] {
    row_index(key)
        .ok()
        .and_then(|idx| all.get(&(idx, phase)))
        .map_or(&[], Vec::as_slice)
}

/// Each round's saturation runs of rows `x` and `y`, paired: the two ran in the same round, one
/// shortly after the other, so a round's ratio is free of the drift between rounds that the
/// medians of each row are not.
fn paired<'a>(
    all: &'a HashMap<(usize, Phase), Vec<Run>>,
    x: &str,
    y: &str,
) -> impl Iterator<Item = (&'a Run, &'a Run)> {
    runs_of(all, x, Phase::Saturation)
        .iter()
        .zip(runs_of(all, y, Phase::Saturation))
}

/// A row's rate per second of busy CPU: its rate over the share of the machine's CPU time
/// that some process of this machine used (neither idle nor stolen by the hypervisor). Two
/// rows' ratio of it is their ratio of CPU cost per request, whatever part of the two cores
/// the scheduler left idle or another guest took.
fn busy_rate(r: &Run) -> Option<f64> {
    let m = r.machine?;
    let busy = 1.0 - m.idle - m.stolen;
    (busy > 0.0).then(|| r.sample.rate() / busy)
}

/// Where the whole machine's idle and stolen CPU stand in the rows the throughput targets compare,
/// and their ratios to (b) per second of busy CPU.
fn idle_paragraph(all: &HashMap<(usize, Phase), Vec<Run>>) -> String {
    let rows = ["b", "c-noop", "c-noop-id", "c"];
    let mut md = String::from(
        "\nIdle CPU at saturation (the whole machine, every core), each round's rate with it, the CPU the hypervisor gave to other guests (stolen), and the row's ratio to (b) per second of busy CPU (each round's rate ÷ the share neither idle nor stolen, paired with (b)'s round; median): a row that leaves more of the two cores idle than (b) loses that share of its throughput to waiting (on a single-threaded stage, or on where the scheduler put the processes), not to CPU spent per request; a run with CPU stolen lost it to another guest of the host.\n\n| row | idle, median | stolen, median | rounds: req/s at idle % | vs (b) per busy CPU second |\n| --- | --- | --- | --- | --- |\n",
    );
    for key in rows {
        let runs = runs_of(all, key, Phase::Saturation);
        let rounds = runs
            .iter()
            .map(|r| match r.machine {
                Some(m) => format!("{:.0} at {:.1}", r.sample.rate(), 100.0 * m.idle),
                None => format!("{:.0} at —", r.sample.rate()),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let busy: Vec<f64> = paired(all, key, "b")
            .filter_map(|(x, b)| Some(busy_rate(x)? / busy_rate(b)?))
            .collect();
        let m = med(runs);
        md.push_str(&format!(
            "| {key} | {:.1} % | {:.1} % | {rounds} | {:.2}× |\n",
            m.idle,
            m.stolen,
            median(busy),
        ));
    }
    md
}

/// Each round's rate, as `12363, 12681, 12098`.
fn list(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

pub fn render(i: &Input) -> String {
    let runs_of = |key: &str, phase: Phase| runs_of(i.runs, key, phase);
    let get = |key: &str, phase: Phase| -> (Med, Vec<f64>) {
        let runs = runs_of(key, phase);
        (med(runs), runs.iter().map(|r| r.sample.rate()).collect())
    };
    let sat = |k: &str| get(k, Phase::Saturation).0;
    let fix = |k: &str| get(k, Phase::Fixed).0;
    let one = |k: &str| get(k, Phase::OneConnection).0;
    let a = i.args;
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Written by `make bench` on {} UTC. Machine: {}. Envoy {} (the same binary for every row), wrk {}, release build of this commit.\n\n",
        mcp_authz_bench::utc_minute(),
        mcp_authz_bench::machine(),
        i.envoy_version,
        i.wrk_version,
    ));
    md.push_str(&format!(
        "Command: `make bench`, which runs `mcp-authz-bench --rounds {} --verdict-rounds {} --seconds {} --latency-seconds {} --connections {} --users {} --envoy-concurrency {} --authz-workers {} --logins {} --refreshes {} --write BENCHMARKS.md`. \
Every figure is the median of {} interleaved rounds (each phase runs every row in turn, every other round in the reverse order, then the next round); the rows a ratio target compares ({}) then run {} more rounds at saturation, so their saturation figures and the ratio verdicts are medians of {} rounds. The machine is shared and noisy (±25 % run to run, one round's ratio of two rows as much), so compare rows of one run.\n\n",
        a.rounds, a.verdict_rounds, a.seconds, a.latency_seconds, a.connections, a.users, a.envoy_concurrency, a.authz_workers, a.logins, a.refreshes, a.rounds,
        VERDICT_ROWS.map(|k| format!("({k})")).join(", "),
        a.verdict_rounds,
        a.rounds + a.verdict_rounds,
    ));
    md.push_str(&format!(
        "Every piece is its own process on the same {} cores: the upstream (a one-thread HTTP responder), \
mcp-authz (release, TCP and unix-socket listeners, `runtime.worker_threads: {}` as the sidecar overlay sets it), the no-op Check server (same tonic build, allocator and runtime: for one thread, the current-thread scheduler mcp-authz runs), one Envoy per configuration (`--concurrency {}`), \
and the load generator (wrk `-t1` through Envoy; `mcp-authz-bench grpc-load`, one thread, for direct Checks). \
Each request is `POST /mcp/github` with an MCP JSON-RPC body and a bearer token from a pool of {} users; rows (e) and (g-cold) use a token never seen before on every request. \
Before timing, each configuration must answer 200 to a valid token, 401 to a missing or forged one (except (a)), and 403 to a denied tool (mcp-authz rows).\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        a.authz_workers,
        a.envoy_concurrency,
        a.users
    ));

    md.push_str("## Through Envoy\n\n");
    md.push_str(&format!(
        "Saturation: {} connections, closed loop, {} s. Fixed load: {} req/s (about half of (b)'s saturation), paced by the wrk script, {} connections, {} s. One connection: closed loop, {} s. \
CPU: seconds on CPU (all threads, from /proc) per 10,000 requests; the authz server is mcp-authz, or for (c-noop) and (c-noop-id) the no-op Check server. Idle: the share of the whole machine's CPU time (every core, from /proc/stat) that no process used during the saturation run; stolen: the share the hypervisor gave to other guests while this machine had work (its `steal` ticks).\n\n",
        a.connections, a.seconds, i.fixed_rate, a.connections, a.seconds, a.latency_seconds
    ));
    md.push_str("| row | configuration | req/s at saturation | rounds | vs (b) | vs (b') | fixed load p50 / p99 / p99.9 ms | one connection p50 / p99 ms | authz server CPU s/10k | Envoy CPU s/10k | idle / stolen CPU at saturation | errors |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let (b, b2) = (sat("b").rate, sat("b'").rate);
    for row in ROWS.iter().filter(|r| matches!(r.target, Target::Envoy(_))) {
        let (s, rounds) = get(row.key, Phase::Saturation);
        let (f, o) = (fix(row.key), one(row.key));
        let authz = if row.through_authz() || row.through_noop() {
            format!("{:.2}", s.authz)
        } else {
            "—".into()
        };
        let errors = s.errors + f.errors + o.errors;
        md.push_str(&format!(
            "| {} | {} | **{:.0}** | {} | {:.2}× | {:.2}× | {} / {} / {} | {} / {} | {} | {:.2} | {:.1} % / {:.1} % | {} |\n",
            row.key,
            row.label,
            s.rate,
            list(&rounds),
            s.rate / b,
            s.rate / b2,
            ms(f.p50),
            ms(f.p99),
            ms(f.p999),
            ms(o.p50),
            ms(o.p99),
            authz,
            s.other,
            s.idle,
            s.stolen,
            errors,
        ));
    }

    md.push_str("\n## MCP clients through Envoy\n\n");
    md.push_str(&format!(
        "`mcp-load`: {} connections, each running one MCP client after another, closed loop, {} s. Clients alternate: a 2025-11-25 client (`initialize`, which opens a session, `notifications/initialized`, `tools/list`, 8 `tools/call`s, `DELETE` of the session; `Mcp-Session-Id` and `MCP-Protocol-Version` on each request after `initialize`) and a 2026-07-28 client (no session: `tools/list` and 8 `tools/call`s, each with `Mcp-Method` and `Mcp-Name`). Each client is another user of the warm pool; every JSON-RPC id is new; the upstream answers even ids as an event stream and odd ones as JSON, and the list with 100 tools, which the list filter cuts to 50. (m0): the same clients without `tools/list`. Beside them, (c): one `ping` after another.\n\n",
        a.connections, a.seconds
    ));
    md.push_str("| row | requests/s | rounds | p50 / p99 / p99.9 ms | mcp-authz CPU s/10k | Envoy CPU s/10k | errors |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for key in ["m", "m0", "c"] {
        let (s, rounds) = get(key, Phase::Saturation);
        md.push_str(&format!(
            "| {key} | **{:.0}** | {} | {} / {} / {} | {:.2} | {:.2} | {} |\n",
            s.rate,
            list(&rounds),
            ms(s.p50),
            ms(s.p99),
            ms(s.p999),
            s.authz,
            s.other,
            s.errors,
        ));
    }

    md.push_str("\n## Direct gRPC Check (no Envoy)\n\n");
    md.push_str(&format!(
        "`grpc-load`: {} Checks in flight over 2 HTTP/2 connections, {} s; fixed load {} Checks/s. Each Check is the CheckRequest Envoy sent (captured by the no-op server from the (c-noop) Envoy: its raw header list, peers, route extension), with its own token and a `tools/call` body that a per-tool rule decides. CPU is the server's.\n\n",
        a.connections, a.seconds, i.fixed_rate
    ));
    md.push_str("| row | configuration | Checks/s at saturation | rounds | vs no-op | fixed load p50 / p99 / p99.9 ms | server CPU s/10k | vs no-op | errors |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    let g0 = sat("g0");
    for row in ROWS
        .iter()
        .filter(|r| matches!(r.target, Target::Authz | Target::Noop | Target::NoopVerify))
    {
        let (s, rounds) = get(row.key, Phase::Saturation);
        let f = fix(row.key);
        let cpu = if row.target == Target::Authz {
            s.authz
        } else {
            s.other
        };
        md.push_str(&format!(
            "| {} | {} | **{:.0}** | {} | {:.2}× | {} / {} / {} | {:.2} | {:.2}× | {} |\n",
            row.key,
            row.label,
            s.rate,
            list(&rounds),
            s.rate / g0.rate,
            ms(f.p50),
            ms(f.p99),
            ms(f.p999),
            cpu,
            cpu / g0.other,
            s.errors + f.errors,
        ));
    }
    md.push_str(&format!(
        "\nOne RS256 verification (2048-bit key parsed once, aws-lc-rs, one thread): **{:.1} µs**. \
One new token through mcp-authz's `Validator::validate` in process (one thread, no gRPC: the digest, cache miss, JWS parse, RS256, claims checks, the principal and its cache insert): **{:.1} µs**, of which the JWS parse is {:.1} µs and everything but RS256 {:.1} µs.\n",
        i.verify_us,
        i.new_token_us,
        i.parse_us,
        i.new_token_us - i.verify_us
    ));

    // The targets of issue 9.
    let e = sat("e");
    let (a1, c1, f1) = (one("a"), one("c"), one("f"));
    let (bf, cf, ff) = (fix("b"), fix("c"), fix("f"));
    let (g, gc, gv) = (sat("g"), sat("g-cold"), sat("g0-rs256"));
    // Each round's ratio of two rows (`x` over `y`, the rounds [`paired`]); the verdicts take
    // the median of these ratios.
    let pairs = |x: &str, y: &str, f: &dyn Fn(&Run, &Run) -> f64| -> Vec<f64> {
        paired(i.runs, x, y).map(|(a, b)| f(a, b)).collect()
    };
    let shown = |v: &[f64]| {
        v.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // mcp-authz's CPU per Check over a reference server's.
    let cpu = |x: &str, y: &str| {
        pairs(x, y, &|a, b| {
            a.per_10k(a.authz_cpu_ns) / b.per_10k(b.other_cpu_ns)
        })
    };
    let rates = |x: &str, y: &str| pairs(x, y, &|a, b| a.sample.rate() / b.sample.rate());
    let noop_us = g0.other * 100.0; // s/10k → µs per Check
    let cold_us = gc.authz * 100.0;
    // A target judged on the median of the rounds' paired ratios `r`, each row's median
    // beside it.
    let judged = |label: &str, r: Vec<f64>, medians: String, ok: &dyn Fn(f64) -> bool| {
        let m = median(r.clone());
        (
            label.to_string(),
            format!("**{m:.2}×** (rounds: {}); medians {medians}", shown(&r)),
            ok(m),
        )
    };
    // `x ≥ k × y` req/s.
    let ratio = |label: &str, x: &str, y: &str, k: f64| {
        let medians = format!("{:.0} / {:.0}", sat(x).rate, sat(y).rate);
        judged(label, rates(x, y), medians, &|m| m >= k)
    };
    // mcp-authz's CPU per Check in row `x` ≤ `max` × the reference server's in row `y`.
    let cpu_target = |label: &str, (x, x_us): (&str, f64), (y, y_us): (&str, f64), max: f64| {
        let medians = format!("{x_us:.1} µs / {y_us:.1} µs");
        judged(label, cpu(x, y), medians, &|m| m <= max)
    };
    let adds = |label: &str, x: f64, y: f64, max_us: f64| {
        (
            label.to_string(),
            format!("{} − {} = {} ms", ms(x), ms(y), ms(x - y)),
            x - y <= max_us,
        )
    };
    let targets: Vec<(String, String, bool)> = vec![
        ratio("(c) ≥ 0.85 × (b) req/s", "c", "b", 0.85),
        ratio(
            "bound: (c-noop), a free authz server, ≥ 0.85 × (b) req/s",
            "c-noop",
            "b",
            0.85,
        ),
        ratio(
            "bound with mcp-authz's answer: (c-noop-id), the no-op server giving Envoy the allow answer mcp-authz gives, ≥ 0.85 × (b) req/s",
            "c-noop-id",
            "b",
            0.85,
        ),
        ratio(
            "(c) ≥ 0.95 × (c-noop-id): mcp-authz's own CPU costs Envoy's throughput ≤ 5 %",
            "c",
            "c-noop-id",
            0.95,
        ),
        ratio(
            "(c) ≥ 0.95 × (c0): the list filter costs a request it skips ≤ 5 %",
            "c",
            "c0",
            0.95,
        ),
        ratio("(f) ≥ 0.95 × (c) req/s: a tools/call costs ≤ 5 % more than a ping", "f", "c", 0.95),
        ratio("(c) ≥ 0.55 × (b') req/s", "c", "b'", 0.55),
        adds(
            "one connection: (c) adds ≤ 0.25 ms p50 over (a)",
            c1.p50,
            a1.p50,
            250.0,
        ),
        adds(
            "one connection: (c) adds ≤ 0.4 ms p99 over (a)",
            c1.p99,
            a1.p99,
            400.0,
        ),
        (
            format!(
                "fixed load ({} req/s): p99 (c) ≤ p99 (b) + 0.5 ms",
                i.fixed_rate
            ),
            format!("{} vs {} + 0.50 ms", ms(cf.p99), ms(bf.p99)),
            cf.p99 <= bf.p99 + 500.0,
        ),
        ratio("(d) unix socket ≥ (c) TCP req/s", "d", "c", 1.0),
        ratio("(g) warm ≥ 0.7 × no-op Checks/s", "g", "g0", 0.7),
        cpu_target(
            "(g) CPU per warm Check ≤ 1.3 × no-op",
            ("g", g.authz * 100.0),
            ("g0", noop_us),
            1.3,
        ),
        (
            "(e) CPU per new-token Check ≤ 1.25 × (RS256 verify + no-op Check)".into(),
            format!(
                "direct: {:.1} µs vs 1.25 × ({:.1} + {:.1}) = {:.1} µs; through Envoy (e): {:.1} µs",
                cold_us,
                i.verify_us,
                noop_us,
                1.25 * (i.verify_us + noop_us),
                e.authz * 100.0
            ),
            cold_us <= 1.25 * (i.verify_us + noop_us),
        ),
        (
            "bound: (g0-rs256), a server that only verifies the signature, ≤ 1.25 × (RS256 verify + no-op Check)".into(),
            format!(
                "{:.1} µs vs 1.25 × ({:.1} + {:.1}) = {:.1} µs ({:.2}× the sum)",
                gv.other * 100.0,
                i.verify_us,
                noop_us,
                1.25 * (i.verify_us + noop_us),
                gv.other * 100.0 / (i.verify_us + noop_us)
            ),
            gv.other * 100.0 <= 1.25 * (i.verify_us + noop_us),
        ),
        cpu_target(
            "(g-cold) CPU per new-token Check ≤ 1.25 × (g0-rs256): RS256 + no-op measured as one server under the same load",
            ("g-cold", cold_us),
            ("g0-rs256", gv.other * 100.0),
            1.25,
        ),
        (
            "(f) ≤ 1.1 × (c) latency (p50, one connection and fixed load)".into(),
            format!(
                "one connection {} vs {} ms ({:.2}×); fixed {} vs {} ms ({:.2}×)",
                ms(f1.p50),
                ms(c1.p50),
                f1.p50 / c1.p50,
                ms(ff.p50),
                ms(cf.p50),
                ff.p50 / cf.p50
            ),
            f1.p50 <= 1.1 * c1.p50 && ff.p50 <= 1.1 * cf.p50,
        ),
    ];
    if let Some(l) = i.login {
        let (lp50, lp99) = crate::login::percentiles(&l.logins);
        let (rp50, rp99) = crate::login::percentiles(&l.refreshes);
        md.push_str(&format!(
            "\n## Login through the gateway (issue 16)\n\nThrough the ext_authz TCP Envoy, one at a time, the stand-in Entra in the bench process. A login is a new browser's whole sign-in: `GET /oauth/authorize` (the consent page), `POST /oauth/consent`, the stand-in's authorize, `GET /oauth/callback` (the gateway redeems Entra's code with its secret and validates the token as a Check would), `POST /oauth/token`. A refresh is one `POST /oauth/token` with `grant_type=refresh_token` (the gateway opens its sealed token, refreshes at the stand-in, seals a rotated one).\n\n| operation | count | p50 ms | p99 ms | mcp-authz CPU per operation |\n| --- | --- | --- | --- | --- |\n| full login (consent page, Entra, callback, token) | {} | **{lp50:.2}** | {lp99:.2} | {:.0} µs |\n| token refresh | {} | **{rp50:.2}** | {rp99:.2} | {:.0} µs |\n",
            l.logins.len(),
            l.login_cpu.as_secs_f64() * 1e6,
            l.refreshes.len(),
            l.refresh_cpu.as_secs_f64() * 1e6,
        ));
    }

    md.push_str(
        "\n## Targets (issues 9 and 21)\n\nA ratio of two rows is judged on the median of its rounds' paired ratios (each round runs the two rows one shortly after the other, so a round's ratio is free of the drift between rounds); each row's own median is shown beside it. Latencies are judged on the medians.\n\n| target | measured | met |\n| --- | --- | --- |\n",
    );
    for (t, m, ok) in targets {
        md.push_str(&format!(
            "| {t} | {m} | {} |\n",
            if ok { "yes" } else { "**no**" }
        ));
    }
    md.push_str(&idle_paragraph(i.runs));
    md.push_str("\n<!-- analysis:start -->\n<!-- analysis:end -->\n");

    md.push_str("\n## How each row is configured\n\n");
    md.push_str("- (c)–(f), (l): `envoy/envoy.yaml` exactly as shipped (ext_authz and the list filter, ext_proc), rendered with `AUTHZ_CLUSTER=mcp_authz_tcp` or `mcp_authz_uds`. (a)–(e) send an MCP `ping`, which the list filter never sees; (f) a `tools/call`; (l) and (l0) a `tools/list` that the upstream answers with 100 tools (a description and an input schema each), of which the policy denies half: (l) filters it to 50 through ext_proc, (l0) is the same file without the list filter, so (l)/(l0) is the filter's cost.\n");
    md.push_str("- (a): the same file without the ext_authz and ext_proc filters. (b), (b'): the same file with Envoy's `jwt_authn` in place of ext_authz: one provider (issuer, audience, `local_jwks` inline, `forward: true`), required on every route; (b') adds `jwt_cache_config: {jwt_cache_size: ");
    md.push_str(&format!("{}}}`.\n", a.users));
    md.push_str("- (c-noop): the shipped file exactly as (c), its ext_authz cluster on the no-op Check server (tonic's generated server, the same allocator, runtime settings and TCP transport as mcp-authz: no Nagle delay, unvectored writes), which answers OK to everything: what Envoy's ext_authz hop costs with a free authz server, the bound of (c). (g0-rs256): the same no-op server, which also verifies each Check's bearer token (the key named by its `kid`, aws-lc-rs with the key parsed once, as mcp-authz does; no cache, no claim read) and refuses it when the signature fails: the least a server that takes never-seen tokens must do, the bound of (g-cold). (c-noop-id): as (c-noop), on a second listener of the same no-op server, which gives every Check the answer mcp-authz gave one warm `ping` before the run (an OK with its identity headers to set and the headers to remove), so Envoy applies and forwards all that (c) makes it apply and forward while the server does as little as a Check server can (it reads the request without decoding it and writes the answer's bytes, framed once): (c-noop-id)/(b) is the bound of (c) for a gateway that tells the upstream who is calling, and (c)/(c-noop-id) is what mcp-authz's own work costs Envoy's throughput. (m), (m0): the shipped file as (c), driven by `mcp-authz-bench mcp-load` (above) instead of wrk.\n");
    md.push_str("- mcp-authz: a file policy with one tenant, one server, a group grant and three tool rules (`delete_*` and `odd_*` denied, `search_*` allowed from `read`); traces, rate limits and audit off (their costs are flag checks when off).\n");
    md.push_str(&format!(
        "- Load commands (paths are the run's temp dir), one of each kind:\n  - `{}`\n  - `{}`\n  - `{}`\n",
        sample_command(i, "c", Phase::Saturation),
        sample_command(i, "c", Phase::Fixed),
        sample_command(i, "g", Phase::Saturation)
    ));
    md
}

fn sample_command(i: &Input, key: &str, phase: Phase) -> String {
    row_index(key)
        .ok()
        .and_then(|idx| i.runs.get(&(idx, phase)))
        .and_then(|v| v.first())
        .map(|r| r.command.clone())
        .unwrap_or_default()
}

/// The new report, keeping the sections other runs own (`make fuzz`, `make soak`, the xDS
/// test's timings) and the analysis written by hand from the old file.
pub fn merge(report: &str, old: &str) -> String {
    let mut out = report.to_string();
    if let (Some(start), Some(end)) = (
        old.find("<!-- analysis:start -->"),
        old.find("<!-- analysis:end -->"),
    ) && start < end
    {
        let kept = &old[start..end + "<!-- analysis:end -->".len()];
        out = out.replace("<!-- analysis:start -->\n<!-- analysis:end -->", kept);
    }
    for name in ["fuzz", "soak", "xds"] {
        if let Some(section) = mcp_authz_bench::section(old, name) {
            out.push('\n');
            out.push_str(section);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Input, idle_paragraph, merge, render};
    use crate::procs::Shares;
    use crate::{Phase, Run, RunArgs, row_index};
    use clap::Parser as _;
    use std::collections::HashMap;

    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        run: RunArgs,
    }

    /// A saturation run of 10,000 requests in 1 s; mcp-authz and the reference server use
    /// `authz_us` and `other_us` of CPU per request.
    fn run(authz_us: u64, other_us: u64) -> Run {
        let mut r = Run::default();
        r.sample.requests = 10_000;
        r.sample.duration_us = 1_000_000;
        r.authz_cpu_ns = authz_us * 10_000 * 1000;
        r.other_cpu_ns = other_us * 10_000 * 1000;
        r
    }

    /// The report of `runs`, with fixed in-process figures.
    fn render_runs(args: &RunArgs, runs: &HashMap<(usize, Phase), Vec<Run>>) -> String {
        render(&Input {
            args,
            runs,
            fixed_rate: 100,
            verify_us: 20.0,
            new_token_us: 21.0,
            parse_us: 2.0,
            envoy_version: "test",
            wrk_version: "test",
            login: None,
        })
    }

    fn line<'a>(md: &'a str, target: &str) -> &'a str {
        md.lines()
            .find(|l| l.starts_with(&format!("| {target}")))
            .unwrap_or_else(|| panic!("no target line {target:?} in\n{md}"))
    }

    /// A ratio target is judged on the median of the rounds' paired ratios, not on the ratio
    /// of the two rows' medians: here the medians give 20 / 15 = 1.33× (a fail, as the
    /// estimator before five rounds judged it), while four of the five rounds, each pair run
    /// back to back, give 1.20× and the one round where the no-op server ran cheap (2.00×) is
    /// outvoted.
    #[test]
    fn a_cpu_ratio_is_judged_on_the_paired_rounds() {
        let args = Args::parse_from(["bench"]).run;
        let g = [24, 20, 12, 18, 30];
        let g0 = [20, 10, 10, 15, 25];
        let mut runs: HashMap<(usize, Phase), Vec<Run>> = HashMap::new();
        for (key, cpu) in [("g", g), ("g0", g0)] {
            let idx = row_index(key).expect("row");
            let v = cpu
                .iter()
                .map(|&c| if key == "g" { run(c, 0) } else { run(0, c) })
                .collect();
            runs.insert((idx, Phase::Saturation), v);
        }
        let md = render_runs(&args, &runs);
        let warm = line(&md, "(g) CPU per warm Check ≤ 1.3 × no-op");
        assert!(
            warm.contains(
                "**1.20×** (rounds: 1.20, 2.00, 1.20, 1.20, 1.20); medians 20.0 µs / 15.0 µs"
            ) && warm.ends_with("| yes |"),
            "{warm}"
        );
        // A row with no runs is never a pass.
        let cb = line(&md, "(c) ≥ 0.85 × (b) req/s");
        assert!(cb.ends_with("| **no** |"), "{cb}");
    }

    /// Every ratio verdict is the median of all its rounds: the verdict rounds run only
    /// `VERDICT_ROWS`, so a target that compared a row outside them would pair only the full
    /// rounds (the zip stops at the shorter list) and be judged on five.
    #[test]
    fn every_ratio_verdict_takes_the_verdict_rounds() {
        let args = Args::parse_from(["bench"]).run;
        let all = args.rounds + args.verdict_rounds;
        let mut runs: HashMap<(usize, Phase), Vec<Run>> = HashMap::new();
        for (idx, row) in crate::ROWS.iter().enumerate() {
            let n = if super::VERDICT_ROWS.contains(&row.key) {
                all
            } else {
                args.rounds
            };
            runs.insert((idx, Phase::Saturation), vec![run(20, 15); n]);
        }
        let md = render_runs(&args, &runs);
        let ratios: Vec<&str> = md.lines().filter(|l| l.contains("(rounds: ")).collect();
        assert!(ratios.len() >= 7, "{md}");
        for l in ratios {
            let rounds = l
                .split("(rounds: ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap_or_default();
            assert_eq!(rounds.split(", ").count(), all, "{l}");
        }
    }

    /// A new run replaces the figures but keeps the hand-written analysis and the sections
    /// that `make fuzz`, `make soak` and the xDS test's timings own.
    #[test]
    fn merge_keeps_the_analysis_and_the_other_runs_sections() {
        let old = "# Benchmarks\n\nold figures\n\n<!-- analysis:start -->\nwhy it is so\n<!-- analysis:end -->\n\n## Fuzzing\n\n<!-- fuzz:start -->\nfuzz table\n<!-- fuzz:end -->\n\n## Soak\n\n<!-- soak:start -->\nsoak table\n<!-- soak:end -->\n\n## Servers from rows\n\n<!-- xds:start -->\nxds table\n<!-- xds:end -->\n";
        let new = "# Benchmarks\n\nnew figures\n\n<!-- analysis:start -->\n<!-- analysis:end -->\n";
        let out = merge(new, old);
        assert!(out.contains("new figures") && !out.contains("old figures"));
        assert!(out.contains("why it is so"));
        assert!(out.contains("## Fuzzing\n\n<!-- fuzz:start -->\nfuzz table"));
        assert!(out.contains("## Soak\n\n<!-- soak:start -->\nsoak table"));
        assert!(out.contains("## Servers from rows\n\n<!-- xds:start -->\nxds table"));
        assert_eq!(merge(new, ""), new);
    }

    /// A row that is slower only because the two cores sat idler, or another guest took part
    /// of them, is at par per busy CPU second; one whose requests cost more CPU is not. A round
    /// without an idle reading (no /proc/stat) counts in neither figure.
    #[test]
    fn the_ratio_per_busy_cpu_second_takes_out_the_idle_and_stolen_shares() {
        let at = |rate: u64, idle: Option<f64>| {
            let mut r = run(0, 0);
            r.sample.requests = rate;
            r.machine = idle.map(|idle| Shares { idle, stolen: 0.0 });
            r
        };
        let mut runs = HashMap::new();
        let sat = |k: &str| (row_index(k).unwrap(), Phase::Saturation);
        runs.insert(sat("b"), vec![at(20_000, Some(0.0)), at(20_000, Some(0.0))]);
        // 10 % idle and 10 % slower: the same cost per request.
        runs.insert(
            sat("c-noop-id"),
            vec![at(18_000, Some(0.1)), at(18_000, Some(0.1))],
        );
        // As idle as (b) and 20 % slower: 0.8 per busy second.
        runs.insert(sat("c"), vec![at(16_000, Some(0.0)), at(16_000, None)]);
        // 5 % idle and 5 % stolen by another guest, 10 % slower: the same cost per request.
        let mut stolen = at(18_000, None);
        stolen.machine = Some(Shares {
            idle: 0.05,
            stolen: 0.05,
        });
        runs.insert(sat("c-noop"), vec![stolen.clone(), stolen]);
        let md = idle_paragraph(&runs);
        let line = |k: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {k} |")))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line("c-noop-id"),
            "| c-noop-id | 10.0 % | 0.0 % | 18000 at 10.0, 18000 at 10.0 | 1.00× |"
        );
        assert_eq!(
            line("c-noop"),
            "| c-noop | 5.0 % | 5.0 % | 18000 at 5.0, 18000 at 5.0 | 1.00× |"
        );
        assert_eq!(
            line("c"),
            "| c | 0.0 % | 0.0 % | 16000 at 0.0, 16000 at — | 0.80× |"
        );
        assert_eq!(
            line("b"),
            "| b | 0.0 % | 0.0 % | 20000 at 0.0, 20000 at 0.0 | 1.00× |"
        );
    }
}
