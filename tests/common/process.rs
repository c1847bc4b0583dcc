//! `projector` processes for the end-to-end tests that need the binary
//! itself (to signal it, kill it, or run its CLI beside it): started,
//! awaited until they announce they are ready (with a deadline), their
//! stderr kept for error messages, their API read through [`Api`],
//! stopped by SIGTERM or SIGKILL, and killed however the test ends.
//!
//! `run` is ready when it prints `read API on <url>` on stderr;
//! `kafka-dev` when it prints its bootstrap address on stdout. Commands
//! that run to their end are `std::process::Command`'s `output()`.

use crate::api::Api;
use crate::projector_bin;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a process prints when it is ready.
enum Ready {
    /// `read API on <url>` on stderr.
    Api,
    /// A first line on stdout.
    StdoutLine,
}

/// How to start a `projector` process; [`Launch::start`] starts it.
pub struct Launch {
    command: Command,
    what: String,
    ready: Ready,
    within: Duration,
    keep_stdout: bool,
    deaf: bool,
}

impl Launch {
    /// `projector --config <config> run --listen 127.0.0.1:0`.
    pub fn run(config: &Path) -> Launch {
        let mut command = Command::new(projector_bin());
        command
            .arg("--config")
            .arg(config)
            .args(["run", "--listen", "127.0.0.1:0"]);
        Launch::of(command, "projector run".into(), Ready::Api)
    }

    /// `projector <args>` in `dir` (its `projector.toml` there), a `run`
    /// serving its API where that config says.
    pub fn in_dir(dir: &Path, args: &[&str]) -> Launch {
        let mut command = Command::new(projector_bin());
        command.current_dir(dir).args(args);
        Launch::of(command, format!("projector {}", args.join(" ")), Ready::Api)
    }

    /// `projector kafka-dev <args>` in `dir`, ready when it prints its
    /// bootstrap address ([`Projector::announced`]).
    pub fn kafka_dev(dir: &Path, args: &[&str]) -> Launch {
        let mut command = Command::new(projector_bin());
        command.current_dir(dir).arg("kafka-dev").args(args);
        Launch::of(
            command,
            format!("projector kafka-dev {}", args.join(" ")),
            Ready::StdoutLine,
        )
    }

    fn of(command: Command, what: String, ready: Ready) -> Launch {
        Launch {
            command,
            what,
            ready,
            within: Duration::from_secs(60),
            keep_stdout: false,
            deaf: false,
        }
    }

    /// Run in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Launch {
        self.command.current_dir(dir);
        self
    }

    /// Set the environment variable `key`.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.command.env(key, value);
        self
    }

    /// Wait at most `within` (60 s unless set) for it to be ready.
    pub fn within(mut self, within: Duration) -> Launch {
        self.within = within;
        self
    }

    /// Keep what it prints on stdout (the summary of a `run`), for
    /// [`Exit::stdout`].
    pub fn keep_stdout(mut self) -> Launch {
        self.keep_stdout = true;
        self
    }

    /// Close both its pipes' only readers once it is ready (the dead
    /// pipes of a supervisor that went away): what it prints after that
    /// is lost to it.
    pub fn deaf_once_ready(mut self) -> Launch {
        self.deaf = true;
        self
    }

    /// Start it and wait until it is ready; panics with what it said on
    /// stderr when it ends or the deadline passes first.
    pub fn start(mut self) -> Projector {
        let piped = self.keep_stdout || self.deaf || matches!(self.ready, Ready::StdoutLine);
        let child = self
            .command
            .stdout(match piped {
                true => Stdio::piped(),
                false => Stdio::null(),
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.what));
        let mut p = Projector {
            child,
            what: self.what,
            announced: String::new(),
            api: None,
            stderr: Arc::default(),
            readers: Vec::new(),
            stdout: None,
        };
        // The announcement comes from one pipe's reader; the channel
        // closes when that reader ends without it.
        let serves_api = matches!(self.ready, Ready::Api);
        let (tx, rx) = mpsc::channel();
        let (api_tx, line_tx) = match serves_api {
            true => (Some(tx), None),
            false => (None, Some(tx)),
        };
        let err = p.child.stderr.take().expect("stderr");
        let (lines, deaf) = (p.stderr.clone(), self.deaf);
        p.readers.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let url = line.split("read API on ").nth(1).map(|rest| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string()
                });
                let ready = url.is_some();
                if let (Some(url), Some(tx)) = (url, &api_tx) {
                    let _ = tx.send(url);
                }
                lines.lock().expect("stderr lines").push(line);
                if ready && deaf {
                    return;
                }
            }
        }));
        match (p.child.stdout.take(), line_tx) {
            (Some(out), Some(tx)) => {
                // The first line, then the pipe closes: kafka-dev says
                // nothing more there.
                p.readers.push(std::thread::spawn(move || {
                    if let Some(Ok(line)) = BufReader::new(out).lines().next() {
                        let _ = tx.send(line);
                    }
                }));
            }
            (Some(mut out), None) if self.keep_stdout => {
                p.stdout = Some(std::thread::spawn(move || {
                    let mut text = String::new();
                    let _ = out.read_to_string(&mut text);
                    text
                }));
            }
            // Deaf: its stdout has no reader from the start.
            (out, _) => drop(out),
        }
        p.announced = rx.recv_timeout(self.within).unwrap_or_else(|e| {
            let why = match e {
                mpsc::RecvTimeoutError::Timeout => format!("within {:?}", self.within),
                mpsc::RecvTimeoutError::Disconnected => "before its pipe closed".into(),
            };
            panic!(
                "{} was not ready {why}; it said:\n{}",
                p.what,
                p.stderr_tail(40)
            )
        });
        if serves_api {
            p.api = Some(Api::new(p.announced.clone()));
        }
        p
    }
}

/// A started `projector` process, killed and reaped on drop. Derefs to
/// its [`Api`] (`run.get(..)`, `run.base`) when it serves one.
pub struct Projector {
    child: Child,
    what: String,
    announced: String,
    api: Option<Api>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    stdout: Option<JoinHandle<String>>,
}

/// How a process ended.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// What it printed on stdout, when it was kept.
    pub stdout: String,
}

impl Projector {
    /// `projector run` on `config` with its API on a free loopback port.
    pub fn run(config: &Path) -> Projector {
        Launch::run(config).start()
    }

    /// `projector kafka-dev <args>` in `dir`.
    pub fn kafka_dev(dir: &Path, args: &[&str]) -> Projector {
        Launch::kafka_dev(dir, args).start()
    }

    /// What it announced when ready: the API's base URL of a `run`, the
    /// bootstrap address of a `kafka-dev`.
    pub fn announced(&self) -> &str {
        &self.announced
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// How many lines it printed on stderr so far contain `text`.
    pub fn said(&self, text: &str) -> usize {
        let lines = self.stderr.lock().expect("stderr lines");
        lines.iter().filter(|l| l.contains(text)).count()
    }

    /// The last `n` lines it printed on stderr, for a message.
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines = self.stderr.lock().expect("stderr lines");
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Send it SIGTERM (a stop after its current batch).
    pub fn sigterm(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "kill -TERM {}", self.what);
    }

    /// SIGKILL it and reap it.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Wait for it to end.
    pub fn wait(&mut self) -> Exit {
        let status = self.child.wait().expect("wait");
        self.exit(status)
    }

    /// SIGTERM, then its end, which must be clean.
    pub fn stop(mut self) -> Exit {
        self.sigterm();
        let exit = self.wait();
        self.assert_clean(&exit);
        exit
    }

    /// SIGTERM, then its end within `within` (else SIGKILL and a panic),
    /// which must be clean.
    pub fn stop_within(mut self, within: Duration) -> Exit {
        self.sigterm();
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not stop within {within:?} of SIGTERM; it said:\n{}",
                    self.what,
                    self.stderr_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let exit = self.exit(status);
        self.assert_clean(&exit);
        exit
    }

    fn exit(&mut self, status: ExitStatus) -> Exit {
        for reader in self.readers.drain(..) {
            reader.join().expect("a pipe's reader");
        }
        let stdout = self
            .stdout
            .take()
            .map(|r| r.join().expect("the stdout reader"))
            .unwrap_or_default();
        Exit { status, stdout }
    }

    fn assert_clean(&self, exit: &Exit) {
        assert!(
            exit.status.success(),
            "{} stops cleanly on SIGTERM: {:?}; it said:\n{}",
            self.what,
            exit.status,
            self.stderr_tail(40)
        );
    }
}

impl std::ops::Deref for Projector {
    type Target = Api;

    fn deref(&self) -> &Api {
        self.api
            .as_ref()
            .unwrap_or_else(|| panic!("{} serves no API", self.what))
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its pipes are closed now: the readers end.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}
