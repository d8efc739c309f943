//! The process around the proxy: how many worker threads to run (the container's CPU
//! quota by default, so a sidecar limited to one CPU does not run and context-switch a
//! thread per host core), and giving freed memory back to the system.

use std::num::NonZeroUsize;

/// How often memory freed by closed connections is given back.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives memory freed since the last call back to the system, every [`TRIM_EVERY`].
///
/// glibc's allocator keeps freed memory for reuse, and memory freed in the middle of its
/// heaps (the buffers of connections that have closed, between allocations still alive)
/// is never returned on its own: after a burst of slow clients a sidecar would keep their
/// memory for good. `malloc_trim` returns those free pages; it costs about a millisecond
/// on a busy heap, once per period. (mimalloc, the optional allocator, kept more memory
/// than glibc in the same measurement; see `benches/RESULTS.md`.)
pub async fn return_freed_memory() {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only walks and releases the allocator's
    // own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn trim() {}

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
