//! Shared by `make bench` and `make soak`: the machine line and the date of a report, the
//! marked blocks of BENCHMARKS.md that each run owns, and small helpers of both load drivers.

/// A loopback TCP port for a child process to bind later (the testkit's reservation).
pub use mcp_authz_testkit::free_port;

/// The `p` quantile (0–1) of `sorted` latencies; 0 when there are none.
pub fn percentile<T: Copy + Into<u64>>(sorted: &[T], p: f64) -> u64 {
    match sorted.len() {
        0 => 0,
        n => sorted[((n as f64 * p) as usize).min(n - 1)].into(),
    }
}

/// `2 cores, Intel(R) Xeon(R) …`
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// `YYYY-MM-DD HH:MM` in UTC.
pub fn utc_minute() -> String {
    let secs = mcp_authz_testkit::unix_now() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    )
}

/// The `## heading` section holding block `name` in `text`, if any.
pub fn section<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let (start, end) = markers(name);
    let (a, b) = (text.find(&start)?, text.find(&end)?);
    if a > b {
        return None;
    }
    let heading = text[..a].rfind("\n## ").map(|h| h + 1).unwrap_or(a);
    Some(&text[heading..b + end.len()])
}

/// `text` with block `name` replaced by `body` (appended under `## heading` when absent).
pub fn replace_block(text: &str, name: &str, heading: &str, body: &str) -> String {
    let (start, end) = markers(name);
    let block = format!("{start}\n{body}{end}");
    match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{block}{}", &text[..a], &text[b + end.len()..])
        }
        _ => format!("{}\n\n## {heading}\n\n{block}\n", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_replaced_in_place_or_appended() {
        let text = "# B\n\n## Fuzzing\n\n<!-- fuzz:start -->\nold\n<!-- fuzz:end -->\n\n## X\n";
        assert_eq!(
            replace_block(text, "fuzz", "Fuzzing", "new\n"),
            "# B\n\n## Fuzzing\n\n<!-- fuzz:start -->\nnew\n<!-- fuzz:end -->\n\n## X\n"
        );
        assert_eq!(
            section(text, "fuzz"),
            Some("## Fuzzing\n\n<!-- fuzz:start -->\nold\n<!-- fuzz:end -->")
        );
        assert_eq!(
            replace_block("# B\n", "soak", "Soak", "s\n"),
            "# B\n\n## Soak\n\n<!-- soak:start -->\ns\n<!-- soak:end -->\n"
        );
        assert!(utc_minute().starts_with("20"));
    }
}
