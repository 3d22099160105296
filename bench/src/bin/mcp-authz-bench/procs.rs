//! Child processes of the benchmark and what is read of them: readiness and CPU time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// A child process killed when dropped, with the file its stderr goes to.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub pid: u32,
    pub log: std::path::PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("{name} exited at once"))?;
        Ok(Self {
            name: name.into(),
            child,
            pid,
            log,
        })
    }

    /// CPU time of every thread of the process so far (scheduler nanoseconds, not ticks).
    pub fn cpu_ns(&self) -> u64 {
        cpu_ns(self.pid)
    }

    /// Fails, quoting the end of the log, if the process has exited.
    pub fn alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            anyhow::bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

/// Sum of the first field of /proc/PID/task/*/schedstat: nanoseconds on CPU, all threads, live
/// ones only. Threads of the measured servers live as long as the process, so deltas are exact.
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until `probe` succeeds, the process dies, or 30 s pass.
pub async fn wait_for<F, Fut>(proc: &mut Proc, what: &str, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let by = Instant::now() + Duration::from_secs(30);
    loop {
        if probe().await {
            return Ok(());
        }
        proc.alive()?;
        anyhow::ensure!(
            Instant::now() < by,
            "{} not ready after 30 s ({what}); see {}",
            proc.name,
            proc.log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}
