//! Helpers of the Rust benchmarks in `benches/`: process CPU time and peak RSS read from
//! `/proc`, percentiles, the result line the harness reads.

use std::time::{SystemTime, UNIX_EPOCH};

/// What the harness looks for at the start of a scenario's result line.
pub const RESULT_PREFIX: &str = "BENCH-RESULT ";

/// CPU seconds this process used so far, every thread, user and system (`/proc/self/stat`,
/// in clock ticks of 1/100 s as on every Linux target we run on).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name may contain spaces: fields are counted after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

fn status_kib(name: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .unwrap_or(0.0)
}

/// Resident set size now, in MiB.
pub fn rss_mib() -> f64 {
    status_kib("VmRSS") / 1024.0
}

/// Peak resident set size since [`reset_peak_rss`], in MiB.
pub fn peak_rss_mib() -> f64 {
    status_kib("VmHWM") / 1024.0
}

/// Starts a new peak RSS measurement (writing 5 to `/proc/self/clear_refs` resets VmHWM).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A payload of `size` bytes that starts with the send time: 20 decimal digits of
/// microseconds since the epoch, then `x`s.
pub fn timestamped_payload(size: usize) -> Vec<u8> {
    let mut payload = format!("{:020}", now_micros()).into_bytes();
    payload.resize(size.max(20), b'x');
    payload
}

/// The send time a [`timestamped_payload`] carries.
pub fn payload_micros(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.get(..20)?).ok()?.parse().ok()
}

/// The nearest-rank percentile of sorted `values`.
pub fn percentile(sorted: &[f64], pct: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (pct / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn payloads_carry_their_send_time() {
        let payload = timestamped_payload(100);
        assert_eq!(payload.len(), 100);
        let sent = payload_micros(&payload).unwrap();
        assert!(sent > 1_600_000_000_000_000);
    }

    #[test]
    fn cpu_and_memory_readings_are_positive() {
        assert!(rss_mib() > 0.0);
        assert!(cpu_seconds() >= 0.0);
    }
}
