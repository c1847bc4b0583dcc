//! SIGINT and SIGTERM stop the runtime after its current batch.

use projector_common::shutdown::Shutdown;

/// Stop the signal listener (if no signal stopped it) and wait for it.
pub(crate) fn stop_signals(stop: &Shutdown, signals: std::thread::JoinHandle<()>) {
    stop.stop();
    let _ = signals.join();
}

/// Listen for SIGINT and SIGTERM, and stop `stop` when one arrives (the
/// listener ends when `stop` is stopped otherwise). The
/// handlers are installed before this returns, so a signal sent once the
/// runtime reports it is running always stops it cleanly.
pub(crate) fn spawn_signal_handler(stop: Shutdown) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = {
        let _entered = rt.enter();
        StopSignals::install()?
    };
    let handle = std::thread::Builder::new()
        .name("projector-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    () = signals.recv() => {
                        // Stop first: a stderr whose reader is gone must
                        // not keep the runtime from stopping.
                        stop.stop();
                        use std::io::Write;
                        let _ = writeln!(std::io::stderr(), "stopping after the current batch");
                    }
                    () = stop.stopped() => {}
                }
            });
        })?;
    Ok(handle)
}

/// SIGINT and, on Unix, SIGTERM, registered up front.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    #[cfg(unix)]
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals {})
    }

    #[cfg(unix)]
    async fn recv(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn recv(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
