//! How many worker threads to run: the container's CPU quota by default, so a sidecar
//! limited to one CPU does not run (and context-switch) a thread per host core.

use std::num::NonZeroUsize;

/// Workers for the given override, else the cgroup CPU quota (rounded up), else the CPU
/// count.
pub fn worker_threads(configured: Option<NonZeroUsize>) -> usize {
    if let Some(n) = configured {
        return n.get();
    }
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    cgroup_quota().map_or(cpus, |q| q.min(cpus)).max(1)
}

fn cgroup_quota() -> Option<usize> {
    // cgroup v2: "max 100000" or "150000 100000".
    if let Ok(s) = std::fs::read_to_string("/sys/fs/cgroup/cpu.max") {
        return parse_quota(&s);
    }
    // cgroup v1.
    for dir in ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"] {
        let quota = std::fs::read_to_string(format!("{dir}/cpu.cfs_quota_us"));
        let period = std::fs::read_to_string(format!("{dir}/cpu.cfs_period_us"));
        if let (Ok(q), Ok(p)) = (quota, period) {
            return parse_quota(&format!("{} {}", q.trim(), p.trim()));
        }
    }
    None
}

/// Parses `quota period` into whole CPUs, rounding up; `max` or a negative quota is none.
fn parse_quota(s: &str) -> Option<usize> {
    let mut parts = s.split_whitespace();
    let quota: i64 = parts.next()?.parse().ok()?;
    let period: i64 = parts.next()?.parse().ok()?;
    if quota <= 0 || period <= 0 {
        return None;
    }
    usize::try_from((quota + period - 1) / period).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_round_up_to_whole_cpus() {
        assert_eq!(parse_quota("max 100000"), None);
        assert_eq!(parse_quota("100000 100000"), Some(1));
        assert_eq!(parse_quota("150000 100000"), Some(2));
        assert_eq!(parse_quota("-1 100000"), None);
        assert_eq!(worker_threads(NonZeroUsize::new(3)), 3);
        assert!(worker_threads(None) >= 1);
    }
}
