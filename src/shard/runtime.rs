//! Building a thread's monoio runtime: io_uring with COOP_TASKRUN and
//! SINGLE_ISSUER (measured faster than monoio's flagless default and than
//! epoll, `shared/STACK.md`), io_uring without flags if the kernel refuses
//! them, epoll where io_uring is unavailable or `MONOIO_FORCE_LEGACY_DRIVER`
//! is set. Used by the shards and by distro-loadgen's workers.

use std::future::Future;

/// Which driver a runtime got.
pub const DRIVER_URING_FLAGS: &str = "io_uring (COOP_TASKRUN, SINGLE_ISSUER)";
pub const DRIVER_URING: &str = "io_uring";
pub const DRIVER_EPOLL: &str = "epoll (legacy)";

/// Runs `fut` to completion on the best runtime this thread can have.
/// `started(driver)` is called once the runtime exists, before `fut` runs;
/// `refused(driver, error)` for each driver that could not be built.
pub fn block_on<F: Future>(
    fut: F,
    started: impl FnOnce(&'static str),
    mut refused: impl FnMut(&'static str, std::io::Error),
) -> std::io::Result<F::Output> {
    if std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_none() {
        let mut flags = io_uring::IoUring::builder();
        flags.setup_coop_taskrun().setup_single_issuer();
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .uring_builder(flags)
            .build()
        {
            Ok(mut rt) => {
                started(DRIVER_URING_FLAGS);
                return Ok(rt.block_on(fut));
            }
            Err(e) => refused(DRIVER_URING_FLAGS, e),
        }
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                started(DRIVER_URING);
                return Ok(rt.block_on(fut));
            }
            Err(e) => refused(DRIVER_URING, e),
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    started(DRIVER_EPOLL);
    Ok(rt.block_on(fut))
}

/// The CPUs this process may run on (`taskset`, cgroup limits), lowest
/// first.
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    let Ok(allowed) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|c| allowed.is_set(*c).unwrap_or(false))
        .collect()
}

fn pin_to(cpu: usize) -> Option<usize> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut one = CpuSet::new();
    one.set(cpu).ok()?;
    sched_setaffinity(Pid::from_raw(0), &one).ok()?;
    Some(cpu)
}

/// Pins the calling thread to the `n`-th CPU (modulo their number) of the
/// CPUs this process may run on, so that `taskset` and cgroup limits are
/// respected. Returns the CPU chosen.
pub fn pin_to_allowed_cpu(n: usize) -> Option<usize> {
    let cpus = allowed_cpus();
    pin_to(*cpus.get(n % cpus.len().max(1))?)
}

/// Pins the calling thread to the `n`-th allowed CPU counted from the
/// highest down: a load generator's threads take the other end of the
/// machine from a node's shards, which start at the lowest.
pub fn pin_to_allowed_cpu_from_top(n: usize) -> Option<usize> {
    pin_to(nth_from_top(n, &allowed_cpus())?)
}

/// Puts the calling thread under `SCHED_BATCH`: woken while another
/// thread runs on its CPU, it waits for that thread to block or use up its
/// slice instead of preempting it, and then takes every completion that
/// arrived meanwhile in one turn. Needs no privilege.
pub fn schedule_as_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The `n`-th of `cpus` (sorted) counted from the highest, wrapping.
pub fn nth_from_top(n: usize, cpus: &[usize]) -> Option<usize> {
    let len = cpus.len();
    (len > 0).then(|| cpus[len - 1 - n % len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_generator_threads_take_cpus_from_the_top() {
        // A one-thread generator on a 2-CPU machine stays off CPU 0, where
        // a node's shard 0 runs.
        assert_eq!(nth_from_top(0, &[0, 1]), Some(1));
        assert_eq!(nth_from_top(1, &[0, 1]), Some(0));
        assert_eq!(nth_from_top(2, &[0, 1]), Some(1));
        assert_eq!(nth_from_top(0, &[2, 5, 7]), Some(7));
        assert_eq!(nth_from_top(0, &[]), None);
        let allowed = allowed_cpus();
        let top = *allowed.last().unwrap();
        let got = std::thread::spawn(|| {
            let cpu = pin_to_allowed_cpu_from_top(0);
            (cpu, allowed_cpus())
        })
        .join()
        .unwrap();
        assert_eq!(got, (Some(top), vec![top]));
    }
}
