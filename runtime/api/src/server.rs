//! The API listening on its own runtime threads until stopped.

use crate::state::ServeState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The API listening on its own runtime threads until stopped.
pub struct Serving {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Serving {
    /// Bind `listen` and serve `state` on a two-thread runtime.
    pub fn start(state: Arc<ServeState>, listen: &str) -> anyhow::Result<Serving> {
        crate::auth::check_listen(&state.http, listen)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("projector-http")
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|e| anyhow::anyhow!("http.listen {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        crate::auth::check_addr(&state.http, addr)?;
        let _ = state.exposure.set(crate::auth::Exposure::of(addr));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Backfills a previous run left unfinished go on.
        {
            let _entered = runtime.enter();
            crate::backfill::resume(&state);
            crate::history::start(&state);
        }
        // Promotion gates verify against sources of truth on this runtime.
        if let Some(d) = &state.deployer {
            d.set_verifier(Arc::new(crate::verify::TruthVerifier {
                state: Arc::downgrade(&state),
                runtime: runtime.handle().clone(),
            }));
        }
        let app = crate::router(state);
        // Answers are small and latency matters: no Nagle delay.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        });
        let task = runtime.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("http server stopped: {e}");
            }
        });
        Ok(Serving {
            addr,
            shutdown: Some(tx),
            task: Some(task),
            runtime: Some(runtime),
        })
    }

    /// The address the server listens on (the bound port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let requests in flight finish (bounded), and stop.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            if let Some(task) = self.task.take() {
                let drained =
                    rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
                if drained.is_err() {
                    tracing::warn!("requests still in flight after 5 s; stopping anyway");
                }
            }
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}
