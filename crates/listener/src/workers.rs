//! Workers, one per core: a thread each with its own single-threaded Tokio runtime,
//! as nginx runs a worker process per core. Every worker accepts on the listeners it
//! is given and serves each connection it accepted to its end on its own thread, so a
//! request, its upstream connection and the tasks they wake never cross threads (no
//! cross-thread wake-ups, no work stealing).
//!
//! [`current`] tells code on a worker which one it is, so that per-worker state (the
//! proxy's pools of upstream connections) is used only from the thread that drives it.

use std::cell::Cell;
use std::io;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The number of the worker whose thread calls this, from 1; 0 off the workers.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Threads each running a single-threaded Tokio runtime; stopped when the last clone
/// is dropped (their tasks are dropped with them).
#[derive(Clone, Debug)]
pub struct Workers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    handles: Vec<Handle>,
    /// Dropped with the last clone: every worker's runtime then returns.
    _stop: watch::Sender<()>,
}

impl Workers {
    /// Starts `count` workers, numbered 1 to `count`.
    ///
    /// # Errors
    ///
    /// When a runtime or a thread cannot be made.
    pub fn start(count: NonZeroUsize) -> io::Result<Self> {
        let (stop, stopped) = watch::channel(());
        let mut handles = Vec::with_capacity(count.get());
        for number in 1..=count.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("sluice-worker-{number}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(number));
                    // Runs the tasks spawned onto this worker until every sender is
                    // gone (`changed` then fails).
                    runtime.block_on(async move { while stopped.changed().await.is_ok() {} });
                })?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                handles,
                _stop: stop,
            }),
        })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.inner.handles.len()
    }

    /// Never: a set of workers has at least one.
    pub fn is_empty(&self) -> bool {
        self.inner.handles.is_empty()
    }

    /// The runtimes of the workers, in their order.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.inner.handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_knows_its_number_and_the_caller_is_none() {
        let workers = Workers::start(NonZeroUsize::new(3).unwrap()).unwrap();
        assert_eq!(workers.len(), 3);
        let mut seen = Vec::new();
        for handle in workers.handles() {
            seen.push(handle.spawn(async { current() }).await.unwrap());
        }
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(current(), 0);
    }

    #[test]
    fn workers_stop_when_the_last_clone_goes() {
        let workers = Workers::start(NonZeroUsize::new(1).unwrap()).unwrap();
        let handle = workers.handles()[0].clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // A task that would run forever holds `tx` until its runtime drops it.
        handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The receive ends (Err) once the worker's runtime dropped the task.
        assert!(rx.recv().is_err());
    }
}
