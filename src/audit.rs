//! The audit trail: one event per decision, through a bounded queue, written in batches.
//!
//! A Check never waits for the audit: `record` is a non-blocking `try_send`. When the queue is
//! full the event is dropped and counted. The writer takes up to `batch_size` events at a time
//! and writes each batch with one INSERT (so a batch is written whole or not at all); a batch
//! the sink refuses (database down) is dropped and counted, and the writer backs off. Counters:
//! `recorded`, `written`, `dropped_queue_full`, `dropped_sink_error`, shown on `/status`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::mpsc;

/// One decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Seconds since the epoch, with fractions.
    pub at: f64,
    pub decision_id: String,
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
}

pub fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Where events go.
pub enum Sink {
    Postgres(PgPool),
    /// JSON lines appended to a file (the embedded default).
    JsonLines(PathBuf),
}

#[derive(Debug, Default)]
pub struct AuditStats {
    pub recorded: AtomicU64,
    pub written: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_sink_error: AtomicU64,
}

impl AuditStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
            + self.dropped_sink_error.load(Ordering::Relaxed)
    }
}

/// The producer side, held by the pipeline.
pub struct Auditor {
    tx: mpsc::Sender<AuditEvent>,
    pub stats: Arc<AuditStats>,
    capacity: usize,
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
        let writer = tokio::spawn(write_loop(sink, rx, batch_size.max(1), stats.clone()));
        (
            Arc::new(Self {
                tx,
                stats,
                capacity,
            }),
            writer,
        )
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
) {
    let mut batch = Vec::with_capacity(batch_size);
    let mut backoff = Duration::from_millis(100);
    let mut file = None;
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, batch_size).await == 0 {
            return;
        }
        let n = batch.len() as u64;
        let result = match &sink {
            Sink::Postgres(pool) => crate::telemetry::in_root(
                "audit write",
                vec![
                    opentelemetry::KeyValue::new("db.system.name", "postgresql"),
                    opentelemetry::KeyValue::new("db.operation.batch.size", n as i64),
                ],
                insert_batch(pool, &batch),
            )
            .await
            .map_err(|e| e.to_string()),
            Sink::JsonLines(path) => {
                append_lines(&mut file, path, &batch).map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(()) => {
                stats.written.fetch_add(n, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                stats.dropped_sink_error.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(error = %e, events = n, dropped_total = stats.dropped(), "audit batch dropped");
                // Give the sink time to recover; meanwhile the bounded queue absorbs or drops.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One statement per batch: all rows or none.
async fn insert_batch(pool: &PgPool, batch: &[AuditEvent]) -> Result<(), sqlx::Error> {
    macro_rules! col {
        ($f:expr) => {
            batch.iter().map($f).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO audit_events (at, decision_id, user_oid, upn, directory_tid, tenant, server, method, tool, result, reason, policy_version, trace_id)
         SELECT to_timestamp(at), decision_id::uuid, user_oid::uuid, upn, directory_tid::uuid, tenant, server, method, tool, result, reason, policy_version, trace_id
         FROM UNNEST($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
           AS t(at, decision_id, user_oid, upn, directory_tid, tenant, server, method, tool, result, reason, policy_version, trace_id)",
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
    .execute(pool)
    .await?;
    Ok(())
}

fn append_lines(
    file: &mut Option<std::fs::File>,
    path: &PathBuf,
    batch: &[AuditEvent],
) -> std::io::Result<()> {
    if file.is_none() {
        *file = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        );
    }
    let mut buf = Vec::with_capacity(batch.len() * 256);
    for e in batch {
        serde_json::to_writer(&mut buf, e)?;
        buf.push(b'\n');
    }
    // One write per batch: a batch is appended whole or the error is reported.
    match file.as_mut() {
        Some(f) => f.write_all(&buf),
        None => Ok(()),
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
