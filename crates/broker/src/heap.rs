//! Giving freed memory back to the system. glibc keeps freed memory in its arenas, resident,
//! and a later allocation of the same size may land on other pages: a broker whose clients
//! connect and disconnect (2,000 connections opened and closed, again and again) grew by
//! about 19 MiB a round with almost nothing in use. `malloc_trim` returns the free pages
//! of every arena (`MADV_DONTNEED`), not only the top of the heap.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Connections closed between two trims: one trim costs about what a few connections do.
const CLOSES_PER_TRIM: usize = 256;

static CLOSED: AtomicUsize = AtomicUsize::new(0);

/// A response at least this large was built in memory: it, and what its handler built
/// (a Metadata answer for 10,000 partitions is 250 KiB, made of about 2 MiB of small
/// allocations), stay resident once freed: 200 bytes more per partition after a client
/// asked for every topic.
const LARGE_RESPONSE: usize = 64 << 10;

/// How long after a large response the heap is trimmed: one trim for a burst of them.
const LARGE_RESPONSE_TRIM_DELAY: Duration = Duration::from_secs(1);

static LARGE_RESPONSE_TRIM_DUE: AtomicBool = AtomicBool::new(false);

/// Returns free memory to the system now.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointer.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A client connection ended; every [`CLOSES_PER_TRIM`] of them, the heap is trimmed on a
/// blocking thread (it walks every free chunk).
pub fn connection_closed() {
    if CLOSED.fetch_add(1, Ordering::Relaxed) % CLOSES_PER_TRIM == CLOSES_PER_TRIM - 1 {
        trim_after(Duration::ZERO);
    }
}

/// Trims the heap on a blocking thread after `delay` (at once outside a runtime).
fn trim_after(delay: Duration) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(async move {
            tokio::time::sleep(delay).await;
            // Cleared first: a large response sent during the trim schedules the next.
            LARGE_RESPONSE_TRIM_DUE.store(false, Ordering::Release);
            let _ = tokio::task::spawn_blocking(trim).await;
        })),
        Err(_) => {
            LARGE_RESPONSE_TRIM_DUE.store(false, Ordering::Release);
            trim();
        }
    }
}

/// A response of `len` bytes was sent and freed: a large one has the heap trimmed a
/// little later (at most once per [`LARGE_RESPONSE_TRIM_DELAY`], and after the last one
/// of a burst).
pub fn response_sent(len: usize) {
    if len < LARGE_RESPONSE || LARGE_RESPONSE_TRIM_DUE.swap(true, Ordering::AcqRel) {
        return;
    }
    trim_after(LARGE_RESPONSE_TRIM_DELAY);
}
