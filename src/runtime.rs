//! The async runtime that serves requests: how many threads it runs, and on which cores.
//!
//! By default there is one runtime thread per core, each pinned to its own core. Unpinned, the
//! kernel sometimes queues both of two busy runtime threads on one core while a third busy
//! process (wrk, in the benchmark) has the other; the two then take turns at the scheduler's
//! tick (4 ms here), and every request of the waiting thread's connections waits with it.
//! Pinned, each core has one runtime thread, and what it shares its core with is whatever else
//! runs on the machine. Measured on two cores shared with wrk (2026-12-01, Intel Xeon, six
//! alternating 8 s rounds of GET by id): p99 0.42–0.49 ms pinned against 1.60–2.43 ms unpinned,
//! for 10% fewer requests a second (108–112k against 119–129k; 8–17% fewer in full benchmark
//! runs: wrk, now the one that waits, sends fewer); creates and updates the same or 1–3%
//! faster, the 90/10 read/write mix 8% slower (medians of three rounds). README, Performance,
//! has the scheduler's statistics behind this.

use std::{
    cell::Cell,
    io,
    num::NonZeroUsize,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::runtime::{Builder, Runtime};

use crate::config::ServeArgs;

/// The runtime for `args`: `--worker-threads` threads, one per core by default; pinned one to
/// each core when they are exactly as many as the cores this process may run on and
/// `--pin-workers` allows. Fewer threads than cores are left to the kernel to place: pinning
/// them would crowd every instance on a machine onto the same first cores.
pub fn build(args: &ServeArgs) -> io::Result<Runtime> {
    let workers = args
        .worker_threads
        .map_or_else(default_workers, NonZeroUsize::get);
    let mut builder = Builder::new_multi_thread();
    builder.worker_threads(workers).enable_all();
    if args.pin_workers
        && let Some(cpus) = allowed_cpus().filter(|cpus| cpus.len() == workers)
    {
        // Set before the threads start, so each pins itself the first time it parks, which
        // is as soon as it starts: it has no work yet.
        let _ = PINNED_TO.set(cpus);
        builder
            .on_thread_park(pin_on_first_park)
            .on_thread_start(release_inherited_pin);
    }
    builder.build()
}

/// Whether the runtime's threads are pinned, each to a core of its own.
pub fn pinned() -> bool {
    PINNED_TO.get().is_some()
}

/// tokio's own default, which setting a count explicitly turns off: `TOKIO_WORKER_THREADS`,
/// else one per core (as `available_parallelism` counts them, which heeds a cgroup's CPU
/// quota: under a quota of fewer cores than it may run on, the threads are not pinned).
fn default_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|count| count.parse().ok())
        .filter(|&count| count > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}

static PINNED_TO: OnceLock<Vec<usize>> = OnceLock::new();
static NEXT_CORE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this runtime thread has parked before (it pins itself at its first park).
    static PARKED_BEFORE: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread is a runtime thread pinned to its core.
    static PINNED_HERE: Cell<bool> = const { Cell::new(false) };
}

/// Given to tokio as its `on_thread_park` hook, which it calls only on its runtime threads
/// (never on its blocking pool's), each time one runs out of work: the first call on each
/// thread pins it to the next core. Later calls cost a thread-local read.
fn pin_on_first_park() {
    if PARKED_BEFORE.replace(true) {
        return;
    }
    let Some(cpus) = PINNED_TO.get() else { return };
    // A thread beyond the count (tokio replaces a runtime thread that blocks in
    // `block_in_place`, which this service does not call) stays free.
    let Some(&cpu) = cpus.get(NEXT_CORE.fetch_add(1, Ordering::Relaxed)) else {
        return;
    };
    match set_affinity(&[cpu]) {
        Ok(()) => PINNED_HERE.set(true),
        Err(error) => {
            tracing::warn!(cpu, %error, "a runtime thread could not be pinned to its core");
        }
    }
}

/// A thread starts with the cores of the thread that started it, so one started by a pinned
/// runtime thread would be held to that one core for life: tokio's blocking pool grows from
/// them (given this as its `on_thread_start` hook), and sqlx opens each SQLite connection on a
/// thread of its own started from whichever task asked for it (`store::sqlite_threads` calls
/// this as the connection opens). Such a thread calls this first to be free again. Nothing to
/// do unless the runtime threads are pinned, nor on one of them.
pub fn release_inherited_pin() {
    let Some(cpus) = PINNED_TO.get() else { return };
    if PINNED_HERE.get() {
        return;
    }
    if let Err(error) = set_affinity(cpus) {
        tracing::warn!(%error, "a thread could not be released from a runtime thread's core");
    }
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeros is the empty set; the
    // kernel writes at most the size it is given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // Fails only on a machine with more CPUs than the set can name (1,024): left unpinned.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return None;
    }
    // SAFETY: every index is below CPU_SETSIZE, the set's size in bits.
    let allowed =
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) });
    Some(allowed.collect())
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Option<Vec<usize>> {
    None
}

/// Holds the calling thread to `cpus`.
#[cfg(target_os = "linux")]
fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: as in `allowed_cpus`; every CPU came from the set the kernel returned, so each
    // is below CPU_SETSIZE. Pid 0 is the calling thread.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_affinity(_cpus: &[usize]) -> io::Result<()> {
    Ok(())
}
