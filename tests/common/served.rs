//! A runtime in the test's own process, following its embedded log and
//! serving the read API on `127.0.0.1:0`, for the HTTP tests. Its API is
//! read through [`Api`]; the tests that need a process of their own (to
//! kill it) use [`crate::process::Projector`] instead.

use crate::api::Api;
use crate::open_app;

/// A served runtime; it stops on drop. Derefs to its [`Api`]
/// (`s.get(..)`, `s.base`, `s.client`).
pub struct Served {
    pub app: projector::app::App,
    pub api: Api,
    stop: projector_common::shutdown::Shutdown,
    running: Option<projector::app::Running>,
    _dir: tempfile::TempDir,
}

impl Served {
    /// The named plugins with `extra` TOML appended to the config.
    pub fn start(plugins: &[&str], extra: &str) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = open_app(
            dir.path(),
            plugins,
            // Token reads wait long: a loaded CI machine is slow, not wrong.
            // An `[engine]` table in `extra` gets the commit interval too.
            &match extra.contains("[engine]\n") {
                true => format!(
                    "[http]\nconsistency_timeout_ms = 30000\n{}",
                    extra.replacen("[engine]\n", "[engine]\ncommit_interval_ms = 100\n", 1)
                ),
                false => format!(
                    "[engine]\ncommit_interval_ms = 100\n[http]\nconsistency_timeout_ms = 30000\n{extra}"
                ),
            },
        );
        let log = app.open_log().expect("embedded log");
        let stop = projector_common::shutdown::Shutdown::new();
        let running = app
            .start(
                std::sync::Arc::new(log),
                Some("127.0.0.1:0"),
                stop.clone(),
                false,
            )
            .expect("runtime starts");
        let api = Api::new(format!("http://{}", running.addr().expect("listening")));
        Served {
            app,
            api,
            stop,
            running: Some(running),
            _dir: dir,
        }
    }
}

impl std::ops::Deref for Served {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(running) = self.running.take() {
            if let Err(e) = running.wait() {
                eprintln!("runtime stopped with an error: {e:#}");
            }
        }
    }
}
