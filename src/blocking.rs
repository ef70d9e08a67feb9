//! Blocking work reached from a request of `bento serve` (file opens and reads, directory
//! listings and scans, fsyncs, renames, unlinks of the cache port, the dashboard and SFTP
//! sessions) runs here: on tokio's blocking threads, never on the runtime's workers that
//! answer the cache, and at most [`MAX_AT_ONCE`] jobs at once in the process, so that a
//! fleet uploading reports at once, or a flood of dashboard loads, neither stalls the
//! workers nor makes hundreds of threads. A job waits for its turn without holding a thread.
//!
//! Long NAR streams are not jobs of this kind: each holds its blocking thread for the whole
//! body and is bounded by the cache's NAR stream places instead (`cache::limits`).
//!
//! May import: nothing of ours.

use thiserror::Error;
use tokio::sync::Semaphore;

/// Blocking jobs running at once in the process. Each is a few syscalls to a few
/// milliseconds of disk work (an fsync is the slowest), so 32 keep a disk busy while
/// leaving most of tokio's blocking threads to the NAR streams.
pub const MAX_AT_ONCE: usize = 32;

static TURNS: Semaphore = Semaphore::const_new(MAX_AT_ONCE);

#[derive(Debug, Error)]
pub enum BlockingError {
    #[error("the blocking work '{what}' did not finish: {why}; see the log for its cause")]
    Failed { what: &'static str, why: String },
}

/// Runs `work` on a blocking thread once one of the [`MAX_AT_ONCE`] turns is free, and
/// returns what it returned. `what` names the work in the error.
pub async fn run<T, F>(what: &'static str, work: F) -> Result<T, BlockingError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let turn = TURNS.acquire().await.map_err(|e| BlockingError::Failed {
        what,
        why: e.to_string(),
    })?;
    let result = tokio::task::spawn_blocking(work).await;
    drop(turn);
    result.map_err(|e| {
        tracing::error!(what, error = %e, "blocking work failed");
        BlockingError::Failed {
            what,
            why: e.to_string(),
        }
    })
}

/// Turns free now (for tests and the benchmark's log).
pub fn free_turns() -> usize {
    TURNS.available_permits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn jobs_beyond_the_bound_wait_and_the_runtime_stays_free() {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Arc::new(std::sync::Mutex::new(held));
        let mut stuck = Vec::new();
        for _ in 0..MAX_AT_ONCE {
            let held = held.clone();
            stuck.push(tokio::spawn(run("stuck", move || {
                let _ = held.lock().unwrap().recv();
            })));
        }
        // All turns taken: one more job waits, while the one worker still runs tasks.
        while free_turns() > 0 {
            tokio::task::yield_now().await;
        }
        let waiting = tokio::spawn(run("waiting", || 7));
        let answered = tokio::spawn(async { 42 }).await.unwrap();
        assert_eq!(answered, 42);
        assert!(!waiting.is_finished(), "a job ran beyond the bound");
        for _ in 0..MAX_AT_ONCE {
            release.send(()).unwrap();
        }
        for s in stuck {
            s.await.unwrap().unwrap();
        }
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        assert_eq!(free_turns(), MAX_AT_ONCE);
    }
}
