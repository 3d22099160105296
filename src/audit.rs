//! The audit trail: one event per decision, through a bounded queue, written in batches.
//!
//! A Check never waits for the audit: `record` is a non-blocking `try_send`. When the queue is
//! full the event is dropped and counted. The writer takes up to `batch_size` events at a time
//! and writes each batch with one INSERT. A batch the database cannot reach (connection, pool,
//! timeout) is dropped and counted, and the writer backs off; a batch the database refuses for
//! its content is written again row by row, so one bad event costs only itself
//! (`dropped_rejected`). Counters: `recorded`, `written`, `dropped_queue_full`,
//! `dropped_sink_error`, `dropped_rejected`, shown on `/status`.
//!
//! Input cannot erase the trail: every text field is cleaned when the event is made (NUL, which
//! PostgreSQL `text` cannot hold, and other control characters become U+FFFD) and bounded, to
//! [`MAX_FIELD_CHARS`], or to [`MAX_ANONYMOUS_FIELD_CHARS`] for what an unauthenticated request
//! sent (`authenticated: false`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;

pub mod partitions;

/// Longest text kept of a field (characters); what is cut ends in `…`.
pub const MAX_FIELD_CHARS: usize = 256;
/// Longest text kept of a field an unauthenticated request chose (method, tool, server).
pub const MAX_ANONYMOUS_FIELD_CHARS: usize = 64;

/// How long a client-chosen field may be: tighter without a valid token.
pub fn field_limit(authenticated: bool) -> usize {
    if authenticated {
        MAX_FIELD_CHARS
    } else {
        MAX_ANONYMOUS_FIELD_CHARS
    }
}

/// `s` as an audit field: control characters (NUL first of all) replaced by U+FFFD, and at
/// most `max` characters, the last of a cut one being `…`.
pub fn clean_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max * 4));
    let mut chars = s.chars();
    for c in chars.by_ref().take(max) {
        out.push(if c.is_control() { '\u{fffd}' } else { c });
    }
    if chars.next().is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Seconds since the epoch, with fractions.
    pub at: f64,
    pub decision_id: String,
    /// False when no valid token came with the request: its method, tool and server are what
    /// an anonymous client sent.
    pub authenticated: bool,
    pub user_oid: Option<String>,
    pub upn: Option<String>,
    pub directory_tid: Option<String>,
    pub tenant: Option<String>,
    pub server: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub result: &'static str,
    pub reason: &'static str,
    pub policy_version: Option<String>,
    pub trace_id: Option<String>,
    /// The object ids of the groups the policy decided with (a valid token only): what
    /// `mcp-authz policy replay` needs to ask a candidate policy the same question.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

impl AuditEvent {
    /// The id of its group set in `audit_group_sets`: the first 16 bytes of the SHA-256 of
    /// the sorted, lower-case, comma-joined object ids.
    pub fn group_set_id(&self) -> Option<(Vec<u8>, String)> {
        use sha2::Digest as _;
        let mut groups: Vec<String> = self
            .groups
            .as_ref()?
            .iter()
            .map(|g| g.to_ascii_lowercase())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let joined = groups.join(",");
        let id = sha2::Sha256::digest(joined.as_bytes())[..16].to_vec();
        Some((id, joined))
    }
}

/// Where events go.
pub enum Sink {
    Postgres(PgPool),
    /// JSON lines appended to a file (the embedded default).
    JsonLines(PathBuf),
    /// JSON lines on stdout: the decision log (logs go to stderr, so stdout holds only these).
    Stdout,
}

#[derive(Debug, Default)]
pub struct AuditStats {
    pub recorded: AtomicU64,
    pub written: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_sink_error: AtomicU64,
    /// Events the database refused for their content, each on its own.
    pub dropped_rejected: AtomicU64,
    /// Failed runs of [`partitions::maintain`].
    pub partition_failures: AtomicU64,
}

impl AuditStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
            + self.dropped_sink_error.load(Ordering::Relaxed)
            + self.dropped_rejected.load(Ordering::Relaxed)
    }
}

/// The producer side, held by the pipeline.
pub struct Auditor {
    tx: mpsc::Sender<AuditEvent>,
    pub stats: Arc<AuditStats>,
    capacity: usize,
    /// Tells the writer to write what is queued and end (see [`Auditor::close`]).
    stop: tokio_util::sync::CancellationToken,
}

impl Auditor {
    /// Starts the writer; it ends when the auditor is dropped and the queue is drained.
    pub fn start(
        sink: Sink,
        capacity: usize,
        batch_size: usize,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(AuditStats::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let writer = tokio::spawn(write_loop(
            sink,
            rx,
            batch_size.max(1),
            stats.clone(),
            stop.clone(),
        ));
        (
            Arc::new(Self {
                tx,
                stats,
                capacity,
                stop,
            }),
            writer,
        )
    }

    /// At shutdown: the writer writes what is queued and ends, whoever still holds the
    /// auditor (the scrape-time collector does, through the authorizer). Events recorded
    /// after this are dropped and counted.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Never blocks: a full queue drops the event and counts it.
    pub fn record(&self, event: AuditEvent) {
        self.stats.recorded.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(event).is_err() {
            self.stats
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }
}

async fn write_loop(
    sink: Sink,
    mut rx: mpsc::Receiver<AuditEvent>,
    batch_size: usize,
    stats: Arc<AuditStats>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut batch = Vec::with_capacity(batch_size);
    let mut backoff = Duration::from_millis(100);
    let mut file = None;
    loop {
        batch.clear();
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, batch_size) => n,
            () = stop.cancelled(), if !rx.is_closed() => {
                // No new events; what is queued is still received, then 0 ends the loop.
                rx.close();
                rx.recv_many(&mut batch, batch_size).await
            }
        };
        if received == 0 {
            return;
        }
        let n = batch.len() as u64;
        let result = match &sink {
            Sink::Postgres(pool) => {
                crate::telemetry::in_root(
                    "audit write",
                    vec![
                        opentelemetry::KeyValue::new("db.system.name", "postgresql"),
                        opentelemetry::KeyValue::new("db.operation.batch.size", n as i64),
                    ],
                    write_postgres(pool, &batch),
                )
                .await
            }
            Sink::JsonLines(_) | Sink::Stdout => {
                let path = match &sink {
                    Sink::JsonLines(path) => Some(path.as_path()),
                    _ => None,
                };
                write_lines(path, &mut file, &batch)
                    .map(|()| BatchOutcome {
                        written: n,
                        refused: 0,
                    })
                    .map_err(|e| Unreachable {
                        so_far: BatchOutcome::default(),
                        error: e.to_string(),
                    })
            }
        };
        let (done, unreachable) = match result {
            Ok(done) => (done, None),
            Err(u) => (u.so_far, Some(u.error)),
        };
        // Every event of the batch is counted once: written, refused, or lost with the sink.
        stats.written.fetch_add(done.written, Ordering::Relaxed);
        stats
            .dropped_rejected
            .fetch_add(done.refused, Ordering::Relaxed);
        match unreachable {
            None => backoff = Duration::from_millis(100),
            Some(e) => {
                let lost = n - done.written - done.refused;
                stats.dropped_sink_error.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(error = %e, events = lost, dropped_total = stats.dropped(), "audit batch dropped");
                // Give the sink time to recover; meanwhile the bounded queue absorbs or drops.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// What became of a batch: rows written, and rows the database refused for their content.
#[derive(Default)]
struct BatchOutcome {
    written: u64,
    refused: u64,
}

/// The sink could not be reached: what was done before that; the rest of the batch is lost.
struct Unreachable {
    so_far: BatchOutcome,
    error: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

/// The batch in one statement; when the database refuses its content, each row on its own, so
/// that one bad event costs only itself.
async fn write_postgres(pool: &PgPool, batch: &[AuditEvent]) -> Result<BatchOutcome, Unreachable> {
    let mut out = BatchOutcome::default();
    let unreachable = |so_far, e: sqlx::Error| Unreachable {
        so_far,
        error: e.to_string(),
    };
    let mut first = insert_batch(pool, batch).await;
    if let Err(sqlx::Error::Database(e)) = &first
        && no_partition(e.as_ref())
    {
        // A month without its partition yet (maintenance failed, or the clock crossed into a
        // month it had not reached): make it and write the batch again.
        let instants: Vec<f64> = batch.iter().map(|e| e.at).collect();
        match partitions::ensure_for(pool, &instants).await {
            Ok(()) => first = insert_batch(pool, batch).await,
            Err(e) => tracing::warn!(error = %e, "audit: making a missing month partition failed"),
        }
    }
    match first {
        Ok(()) => out.written = batch.len() as u64,
        Err(sqlx::Error::Database(e)) => {
            tracing::warn!(error = %e, events = batch.len(), "audit batch refused; writing its rows one by one");
            for event in batch {
                match insert_batch(pool, std::slice::from_ref(event)).await {
                    Ok(()) => out.written += 1,
                    Err(sqlx::Error::Database(e)) => {
                        out.refused += 1;
                        tracing::error!(error = %e, decision_id = %event.decision_id, "audit event refused by the database; dropped");
                    }
                    // The database went away mid-batch.
                    Err(e) => return Err(unreachable(out, e)),
                }
            }
        }
        Err(e) => return Err(unreachable(out, e)),
    }
    Ok(out)
}

/// PostgreSQL's answer to a row whose month has no partition.
fn no_partition(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code().as_deref() == Some("23514") && e.message().contains("no partition")
}

/// One transaction per batch: all rows or none. The batch's distinct group sets first (each
/// stored once, its `last_seen` renewed at most daily), then the events naming them.
async fn insert_batch(pool: &PgPool, batch: &[AuditEvent]) -> Result<(), sqlx::Error> {
    macro_rules! col {
        ($f:expr) => {
            batch.iter().map($f).collect::<Vec<_>>()
        };
    }
    let sets: Vec<Option<(Vec<u8>, String)>> = col!(AuditEvent::group_set_id);
    let mut distinct: Vec<(&Vec<u8>, &String)> = sets
        .iter()
        .flatten()
        .map(|(id, groups)| (id, groups))
        .collect();
    distinct.sort_unstable();
    distinct.dedup_by(|a, b| a.0 == b.0);
    let mut tx = pool.begin().await?;
    if !distinct.is_empty() {
        sqlx::query(
            "INSERT INTO audit_group_sets (id, groups)
             SELECT id, CASE WHEN g = '' THEN '{}'::uuid[] ELSE string_to_array(g, ',')::uuid[] END
             FROM UNNEST($1::bytea[], $2::text[]) AS t(id, g)
             ON CONFLICT (id) DO UPDATE SET last_seen = now()
               WHERE audit_group_sets.last_seen < now() - interval '1 day'",
        )
        .bind(
            distinct
                .iter()
                .map(|(id, _)| (*id).clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            distinct
                .iter()
                .map(|(_, g)| (*g).clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO audit_events (at, decision_id, user_oid, upn, directory_tid, tenant, server, method, tool, result, reason, policy_version, trace_id, authenticated, group_set)
         SELECT to_timestamp(at), decision_id::uuid, user_oid::uuid, upn, directory_tid::uuid, tenant, server, method, tool, result, reason, policy_version, trace_id, authenticated, group_set
         FROM UNNEST($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bool[], $15::bytea[])
           AS t(at, decision_id, user_oid, upn, directory_tid, tenant, server, method, tool, result, reason, policy_version, trace_id, authenticated, group_set)",
    )
    .bind(col!(|e| e.at))
    .bind(col!(|e| e.decision_id.clone()))
    .bind(col!(|e| e.user_oid.clone()))
    .bind(col!(|e| e.upn.clone()))
    .bind(col!(|e| e.directory_tid.clone()))
    .bind(col!(|e| e.tenant.clone()))
    .bind(col!(|e| e.server.clone()))
    .bind(col!(|e| e.method.clone()))
    .bind(col!(|e| e.tool.clone()))
    .bind(col!(|e| e.result.to_owned()))
    .bind(col!(|e| e.reason.to_owned()))
    .bind(col!(|e| e.policy_version.clone()))
    .bind(col!(|e| e.trace_id.clone()))
    .bind(col!(|e| e.authenticated))
    .bind(
        sets.into_iter()
            .map(|s| s.map(|(id, _)| id))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A batch as JSON lines, in one write: appended to the file at `path` (opened once), or to
/// stdout (flushed) without one. A batch is written whole or the error is reported.
fn write_lines(
    path: Option<&std::path::Path>,
    file: &mut Option<std::fs::File>,
    batch: &[AuditEvent],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(batch.len() * 256);
    for e in batch {
        serde_json::to_writer(&mut buf, e)?;
        buf.push(b'\n');
    }
    match path {
        Some(path) => {
            let f = match file {
                Some(f) => f,
                None => file.insert(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                ),
            };
            f.write_all(&buf)
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        }
    }
}

/// The decision log: every denial, and a share of the allows, as JSON lines on stdout with the
/// audit trail's fields (never a token: the event holds none), for the log pipeline of the
/// platform (Loki, Elastic, Cloud Logging) beside whatever audit sink is configured.
pub struct DecisionLog {
    pub writer: Arc<Auditor>,
    /// Allows are written when the decision id's hash falls below this, of `u32::MAX`.
    allow_threshold: u64,
    /// Lines carry the subject's groups (for `policy replay` from a captured log).
    include_groups: bool,
}

impl DecisionLog {
    pub fn new(writer: Arc<Auditor>, allow_sample_rate: f64, include_groups: bool) -> Self {
        let rate = allow_sample_rate.clamp(0.0, 1.0);
        Self {
            writer,
            allow_threshold: (rate * f64::from(u32::MAX)).round() as u64,
            include_groups,
        }
    }

    /// Queues the line (without the groups unless they are included).
    pub fn record(&self, mut event: AuditEvent) {
        if !self.include_groups {
            event.groups = None;
        }
        self.writer.record(event);
    }

    /// Whether this decision is written: a denial always; an allow by its id, so the same
    /// decision is sampled alike everywhere it is looked up.
    pub fn wants(&self, allowed: bool, decision_id: &str) -> bool {
        if !allowed || self.allow_threshold >= u64::from(u32::MAX) {
            return true;
        }
        // FNV-1a over the id: the random tail of a UUIDv7 spreads it evenly.
        let mut h: u32 = 0x811c_9dc5;
        for b in decision_id.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        u64::from(h) < self.allow_threshold
    }
}

/// The W3C trace id from a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
pub fn trace_id(traceparent: Option<&str>) -> Option<String> {
    let mut parts = traceparent?.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && id != "00000000000000000000000000000000")
        .then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
