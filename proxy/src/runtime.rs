//! The process around the proxy: how many worker threads to run (the container's CPU
//! quota by default, so a sidecar limited to one CPU does not run and context-switch a
//! thread per host core), the memory allocator's settings, and giving freed memory back to
//! the system.

use std::num::NonZeroUsize;

/// How often memory freed by closed connections is given back.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Gives memory freed since the last call back to the system, every [`TRIM_EVERY`].
///
/// Allocators keep freed memory for reuse, and glibc's never returns memory freed in the
/// middle of its heaps (the buffers of connections that have closed, between allocations
/// still alive): after a burst of slow clients a sidecar would keep their memory for good.
/// Each period this hands the free pages back with `malloc_trim`; it costs about a
/// millisecond on a busy heap.
///
/// With `--features mimalloc` a request's twenty-odd small allocations take mimalloc's fast
/// path instead of glibc's bins: 11% fewer instructions per request with a bare route, 17%
/// with the full stack, about 10% less CPU (`benches/RESULTS.md`). Its transparent huge
/// pages are off (`no_thp` in `Cargo.toml`: with them a few bytes touched cost 2 MiB, 7 MB
/// more idle), and here a forced collect stands in for `malloc_trim`. It is not the default
/// because that collect reaches only the calling thread's heap: with two workers, memory
/// freed on the other one after a burst stayed (45 MB against 25 before the burst, where
/// glibc came back under 40), and returning pages at once instead (`purge_delay` 0) made
/// 0.6 page faults per request and cost more CPU than the allocator saved.
pub async fn return_freed_memory() {
    loop {
        tokio::time::sleep(TRIM_EVERY).await;
        trim();
    }
}

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: mi_collect has no preconditions; it frees only pages the allocator itself
    // holds empty, under its own locks.
    unsafe { libmimalloc_sys::mi_collect(true) }
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

#[cfg(not(any(feature = "mimalloc", all(target_os = "linux", target_env = "gnu"))))]
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

    /// Memory freed by the allocator (mimalloc's own calls here, since a library test runs
    /// on the system allocator) leaves RSS when `trim` runs, not before.
    #[cfg(all(feature = "mimalloc", target_os = "linux"))]
    #[test]
    #[allow(unsafe_code)]
    fn trimming_gives_freed_pages_back() {
        const BLOCK: usize = 64 * 1024;
        const BLOCKS: usize = 1024; // 64 MiB
        let anon_mb = || {
            let status = std::fs::read_to_string("/proc/self/status").expect("status");
            let kb: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("RssAnon");
            kb / 1024.0
        };
        let blocks: Vec<*mut u8> = (0..BLOCKS)
            .map(|_| {
                // SAFETY: a plain allocation; every page is written before it is read.
                let p = unsafe { libmimalloc_sys::mi_malloc(BLOCK) }.cast::<u8>();
                assert!(!p.is_null());
                // SAFETY: p points to BLOCK writable bytes.
                unsafe { std::ptr::write_bytes(p, 1, BLOCK) };
                p
            })
            .collect();
        let full = anon_mb();
        for p in blocks {
            // SAFETY: each pointer came from mi_malloc above and is freed once.
            unsafe { libmimalloc_sys::mi_free(p.cast()) };
        }
        trim();
        let trimmed = anon_mb();
        assert!(
            full - trimmed > 32.0,
            "RssAnon {full:.1} MB with 64 MiB allocated, {trimmed:.1} MB after free and trim"
        );
    }
}
