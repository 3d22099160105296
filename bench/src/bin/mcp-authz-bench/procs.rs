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

/// The machine's CPU time so far, from the first line of /proc/stat (all CPUs, in ticks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticks {
    /// Idle and iowait.
    idle: u64,
    /// Taken by the hypervisor for other guests while this one had work (0 where the kernel
    /// does not report it).
    stolen: u64,
    all: u64,
}

pub fn machine_ticks() -> Option<Ticks> {
    ticks_of(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn ticks_of(stat: &str) -> Option<Ticks> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest and guest_nice are within user
    // and nice already).
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    Some(Ticks {
        idle: v[3] + v[4],
        stolen: v.get(7).copied().unwrap_or(0),
        all: v.iter().sum(),
    })
}

/// The shares of the machine's CPU time between two [`machine_ticks`] readings that no process
/// used (idle) and that the hypervisor gave to other guests (stolen).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shares {
    pub idle: f64,
    pub stolen: f64,
}

pub fn shares_between(before: Option<Ticks>, after: Option<Ticks>) -> Option<Shares> {
    let (t0, t1) = (before?, after?);
    let all = t1.all.checked_sub(t0.all).filter(|&t| t > 0)? as f64;
    Some(Shares {
        idle: t1.idle.saturating_sub(t0.idle) as f64 / all,
        stolen: t1.stolen.saturating_sub(t0.stolen) as f64 / all,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_share_counts_idle_and_iowait_over_all_ticks_and_stolen_apart() {
        let before = ticks_of("cpu  100 5 50 800 20 3 2 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n");
        let after = ticks_of("cpu  160 5 90 880 30 3 2 20 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n");
        assert_eq!(
            before,
            Some(Ticks {
                idle: 820,
                stolen: 10,
                all: 990
            })
        );
        // 60 + 40 busy, 80 + 10 idle, 10 stolen: 90 and 10 of 200.
        assert_eq!(
            shares_between(before, after),
            Some(Shares {
                idle: 0.45,
                stolen: 0.05
            })
        );
        // A kernel without the steal field: nothing stolen, the rest as before.
        let old = |s| ticks_of(s).map(|t| (t.stolen, t.all));
        assert_eq!(old("cpu  100 5 50 800 20\n"), Some((0, 975)));
        // No tick between the readings, or a line that is not the total: no figure.
        assert_eq!(shares_between(before, before), None);
        assert_eq!(ticks_of("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(shares_between(None, after), None);
    }
}
