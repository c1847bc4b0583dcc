//! A session: one plugin instance called for the length of a batch,
//! under its deadline and memory cap, recycled after a failure.

use super::pack::*;
use super::*;
use projector_common::sync::Recover;

pub(super) struct WasmSession<'a> {
    plugin: &'a WasmPlugin,
    live: Option<Live>,
    /// Its events are a replay (see `Session::replaying`).
    replay: bool,
    /// Answers fetched ahead for its batch (see `Session::prefetch`).
    ahead: Option<Arc<crate::fetch::Ahead>>,
    /// The batch whose events the live instance holds, and its handle.
    open: Option<(u64, ResourceAny)>,
}

impl<'a> WasmSession<'a> {
    pub(super) fn new(plugin: &'a WasmPlugin) -> Self {
        let mut live = plugin.idle.lock().recover().pop();
        if let Some((store, _)) = live.as_mut() {
            store.data_mut().services = plugin.services.clone();
            store.data_mut().replay = false;
            store.data_mut().ahead = None;
        }
        WasmSession {
            plugin,
            live,
            replay: false,
            ahead: None,
            open: None,
        }
    }

    pub(super) fn error(&self, message: String) -> Error {
        Error::Guest {
            plugin: self.plugin.meta.name.clone(),
            message,
        }
    }

    /// Instantiate into a fresh store and configure the plugin.
    pub(super) fn start(&mut self) -> Result<wit::PluginInfo, Error> {
        let p = self.plugin;
        p.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open = None;
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max: p.meta.limits.max_memory_bytes,
                current: 0,
                refused: None,
            },
            plugin: Arc::from(p.meta.name.as_str()),
            logs: p.meta.logs.clone(),
            stdout,
            stderr,
            drained: [0, 0],
            calls: 0,
            services: p.services.clone(),
            waited_ticks: 0,
            replay: self.replay,
            ahead: self.ahead.clone(),
            taken: Vec::new(),
            used: Vec::new(),
        };
        let mut store = Store::new(p.pre.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // At the deadline, credit the time spent waiting on fetches (host
        // time, not guest time); with none left to credit, interrupt.
        store.epoch_deadline_callback(|mut ctx| {
            let credit = std::mem::take(&mut ctx.data_mut().waited_ticks);
            if credit > 0 {
                Ok(wasmtime::UpdateDeadline::Continue(credit))
            } else {
                Err(Trap::Interrupt.into())
            }
        });
        let deadline_ms = p.meta.limits.start_deadline_ms.max(1);
        store.set_epoch_deadline(deadline_ms);
        let started = p.pre.instantiate(&mut store).and_then(|instance| {
            let info = instance
                .projector_plugin_projection()
                .call_configure(&mut store, &p.settings)?;
            Ok((instance, info))
        });
        match started {
            Ok((instance, info)) => {
                let info = info.map_err(|e| self.error(format!("configure: {}", e.message)))?;
                self.live = Some((store, instance));
                Ok(info)
            }
            Err(e) => Err(classify(&p.meta.name, e, &mut store, deadline_ms)),
        }
    }

    /// Run `attempt` again while it runs out of time, up to
    /// `timeout_retries` times. Deadlines are wall-clock epochs, so a call
    /// the OS preempted can run out of time through no fault of its own.
    /// Calls are pure functions of their arguments, so a retry is safe.
    pub(super) fn retrying<R>(
        &mut self,
        mut attempt: impl FnMut(&mut Self) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut retries = self.plugin.meta.limits.timeout_retries;
        loop {
            match attempt(self) {
                Err(Error::OutOfTime { deadline_ms, .. }) if retries > 0 => {
                    retries -= 1;
                    tracing::warn!(
                        plugin = self.plugin.meta.name,
                        deadline_ms,
                        "call ran out of time; retrying"
                    );
                }
                done => return done,
            }
        }
    }

    pub(super) fn configure(&mut self) -> Result<Info, Error> {
        let info = self.retrying(Self::start)?;
        Ok(Info {
            name: info.name,
            version: info.version,
            population: match info.population {
                wit::Population::Lazy => Population::Lazy,
                wit::Population::Eager => Population::Eager,
            },
            stale_policy: match info.stale_policy {
                wit::StalePolicy::Invalidate => StalePolicy::Invalidate,
                wit::StalePolicy::Ignore => StalePolicy::Ignore,
            },
            render_uses_time: info.render_uses_time,
        })
    }

    /// Run `f` in the live store with a deadline for `events` events,
    /// retried while it runs out of time; on failure, drop the store so
    /// the next call starts clean.
    pub(super) fn call<R>(
        &mut self,
        events: usize,
        mut f: impl FnMut(&mut Store<HostState>, &exports::Plugin) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        self.retrying(|session| session.call_once(events, &mut f))
    }

    /// A batch export must answer once per item it was given.
    pub(super) fn check_count(
        &self,
        export: &str,
        answers: usize,
        asked: usize,
    ) -> Result<(), Error> {
        if answers == asked {
            return Ok(());
        }
        Err(Error::BadOutput {
            plugin: self.plugin.meta.name.clone(),
            message: format!("{export} gave {answers} answers for {asked} items"),
        })
    }

    /// [`WasmSession::call`] without retries.
    pub(super) fn call_once<R>(
        &mut self,
        events: usize,
        f: &mut impl FnMut(&mut Store<HostState>, &exports::Plugin) -> wasmtime::Result<R>,
    ) -> Result<R, Error> {
        let deadline_ms = self.plugin.meta.limits.epoch_deadline_ms.max(1) * events.max(1) as u64;
        if self.live.is_none() {
            self.start()?;
        }
        let Some((store, instance)) = self.live.as_mut() else {
            unreachable!("start() leaves a live store or fails");
        };
        store.set_epoch_deadline(deadline_ms);
        store.data_mut().calls += 1;
        store.data_mut().waited_ticks = 0;
        store.data_mut().taken.clear();
        let e = match f(store, instance) {
            Ok(r) => return Ok(r),
            Err(e) => classify(&self.plugin.meta.name, e, store, deadline_ms),
        };
        if let Some((mut store, _)) = self.live.take() {
            drain_stdio(store.data_mut());
        }
        // The batch handed over lived in that store.
        self.open = None;
        Err(e)
    }

    /// The plugin's handle on `batch`: the open one, or a new one made by
    /// handing the batch's events over (closing the one before).
    pub(super) fn batch_handle(&mut self, batch: &EventBatch) -> Result<ResourceAny, Error> {
        match self.open {
            Some((id, handle)) if id == batch.id() && self.live.is_some() => return Ok(handle),
            _ => self.close_batch(),
        }
        let (text, list) = pack(batch.events()).map_err(|message| Error::BadOutput {
            plugin: self.plugin.meta.name.clone(),
            message,
        })?;
        let work = list.len().min(MAX_BATCH_DEADLINE_EVENTS);
        let handle = self.call_once(work, &mut |s, i| {
            let packed = wit::PackedEvents {
                text: &text,
                events: &list,
            };
            i.projector_plugin_projection()
                .batch()
                .call_constructor(s, packed)
        })?;
        self.open = Some((batch.id(), handle));
        Ok(handle)
    }

    /// After an `apply` call: when an event failed as transient, forget
    /// the answers fetched ahead that the call used, so the `apply` tried
    /// again asks the service (a lagging replica, a passing failure).
    pub(super) fn forget_failed_answers(&mut self, results: &[wit::ApplyResult]) {
        let transient = results.iter().any(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| matches!(e.kind, wit::ErrorKind::Transient))
        });
        let Some((store, _)) = self.live.as_mut() else {
            return;
        };
        let state = store.data_mut();
        let taken = std::mem::take(&mut state.taken);
        if let (true, Some(ahead)) = (transient, &state.ahead) {
            for (service, path) in &taken {
                ahead.forget(service, path);
            }
        }
    }

    /// Let the plugin free the open batch's events.
    pub(super) fn close_batch(&mut self) {
        if let Some((_, handle)) = self.open.take() {
            if self.live.is_some() {
                // A failure here retires the store, which frees them too.
                let _ = self.call_once(1, &mut |s, _| handle.resource_drop(s));
            }
        }
    }
}

impl Drop for WasmSession<'_> {
    /// Hand a healthy store back for the next session; retire the others.
    fn drop(&mut self) {
        self.close_batch();
        let Some(mut live) = self.live.take() else {
            return;
        };
        let state = live.0.data_mut();
        state.ahead = None;
        state.used.clear();
        drain_stdio(state);
        self.plugin
            .peak_memory
            .fetch_max(state.limiter.current, std::sync::atomic::Ordering::Relaxed);
        let worn = state.limiter.current > state.limiter.max / RECYCLE_MEMORY_SHARE
            || state.calls > RECYCLE_CALLS
            || state.drained.iter().any(|n| *n > STDIO_CAPACITY / 2);
        if !worn {
            self.plugin.idle.lock().recover().push(live);
        }
    }
}

/// Copy what the guest wrote to stdout and stderr since the last drain
/// into the plugin's log. A panic (Rust's hook writes three lines) goes
/// into the plugin's log once, as `panicked at LOC: MESSAGE`, and not to
/// the host's log: the trap's error carries it (see [`classify`]).
pub(super) fn drain_stdio(state: &mut HostState) {
    for (i, stream) in ["stdout", "stderr"].into_iter().enumerate() {
        let pipe = if i == 0 { &state.stdout } else { &state.stderr };
        let bytes = pipe.contents();
        let fresh = &bytes[state.drained[i].min(bytes.len())..];
        state.drained[i] = bytes.len();
        let text = String::from_utf8_lossy(fresh);
        let mut lines = text.lines().filter(|l| !l.is_empty()).peekable();
        while let Some(line) = lines.next() {
            if let Some(at) = panic_location(line) {
                let message = lines.next_if(|l| !is_backtrace_note(l)).unwrap_or_default();
                lines.next_if(|l| is_backtrace_note(l));
                state
                    .logs
                    .push(format!("{stream}: panicked at {at}: {message}"));
                continue;
            }
            tracing::info!(plugin = &*state.plugin, stream, "{line}");
            state.logs.push(format!("{stream}: {line}"));
        }
    }
}

/// `LOC` of the first line of Rust's panic hook,
/// `thread '<name>' panicked at LOC:`.
fn panic_location(line: &str) -> Option<&str> {
    let at = line.find("panicked at ")? + "panicked at ".len();
    line[at..].strip_suffix(':')
}

fn is_backtrace_note(line: &str) -> bool {
    line.starts_with("note: run with `RUST_BACKTRACE=1`")
}

/// The last panic in what the guest wrote to stderr, as
/// `panicked at LOC: MESSAGE`.
pub(super) fn panic_in(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let i = lines.iter().rposition(|l| panic_location(l).is_some())?;
    let at = panic_location(lines[i])?;
    let message = lines
        .get(i + 1)
        .filter(|l| !is_backtrace_note(l))
        .copied()
        .unwrap_or_default();
    Some(format!("panicked at {at}: {message}"))
}

pub(super) fn classify(
    plugin: &str,
    e: wasmtime::Error,
    store: &mut Store<HostState>,
    deadline_ms: u64,
) -> Error {
    let plugin = plugin.to_string();
    if let Some((current, requested)) = store.data_mut().limiter.refused.take() {
        let max = store.data().limiter.max;
        return Error::MemoryLimit {
            plugin,
            current,
            requested,
            max,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Error::OutOfTime {
            plugin,
            deadline_ms,
        },
        _ => {
            // A guest panic is told by its message and location, which the
            // panic hook wrote to stderr, not by the trap's wasm backtrace.
            let state = store.data();
            let bytes = state.stderr.contents();
            let fresh = String::from_utf8_lossy(&bytes[state.drained[1].min(bytes.len())..]);
            Error::Trap {
                plugin,
                message: panic_in(&fresh).unwrap_or_else(|| format!("{e:#}")),
            }
        }
    }
}

impl Session for WasmSession<'_> {
    fn replaying(&mut self, on: bool) {
        self.replay = on;
        if let Some((store, _)) = self.live.as_mut() {
            store.data_mut().replay = on;
        }
    }

    fn prefetch(&mut self, batch: &EventBatch) -> Option<Arc<crate::fetch::Ahead>> {
        let services = self.plugin.services.clone()?;
        if !services.prefetch || services.allowed.is_empty() || !self.plugin.pre.prefetches() {
            return None;
        }
        let (text, list) = pack(batch.events()).ok()?;
        let work = list.len().min(MAX_BATCH_DEADLINE_EVENTS);
        let needs = self.call_once(work, &mut |s, i| {
            let packed = wit::PackedEvents {
                text: &text,
                events: &list,
            };
            match i.projector_plugin_prefetch() {
                Some(p) => p.call_needs(s, packed),
                None => Ok(Vec::new()),
            }
        });
        let needs = match needs {
            Ok(needs) if !needs.is_empty() => needs,
            Ok(_) => return None,
            Err(e) => {
                // `apply` fetches what it needs itself, and says why it fails.
                tracing::debug!(plugin = self.plugin.meta.name, "prefetch: {e}");
                return None;
            }
        };
        // A replay takes recorded answers in `apply`: not fetched ahead.
        let record = services.record.as_ref().filter(|_| self.replay);
        let ahead = services.fetcher.prefetch(
            &services.allowed,
            needs.into_iter().map(|n| (n.service, n.path)),
            |service, path| record.is_some_and(|r| r.recorded(service, path).is_some()),
        );
        self.fetched_ahead(Some(ahead.clone()));
        Some(ahead)
    }

    fn answers_used(&mut self) -> Vec<crate::fetch_record::AnswerUsed> {
        match self.live.as_mut() {
            Some((store, _)) => std::mem::take(&mut store.data_mut().used),
            None => Vec::new(),
        }
    }

    fn fetched_ahead(&mut self, ahead: Option<Arc<crate::fetch::Ahead>>) {
        if let Some((store, _)) = self.live.as_mut() {
            store.data_mut().ahead = ahead.clone();
        }
        self.ahead = ahead;
    }

    fn keys(&mut self, events: &[&Event]) -> Result<Vec<Result<Vec<String>, GuestError>>, Error> {
        let list: Vec<wit::Event> = events.iter().map(|e| to_wit(e)).collect();
        let out = self.call(events.len(), |s, i| {
            i.projector_plugin_projection().call_keys(s, &list)
        })?;
        self.check_count("keys", out.len(), events.len())?;
        Ok(out.into_iter().map(|r| r.map_err(from_wit_error)).collect())
    }

    fn apply(
        &mut self,
        key: &str,
        state: Option<&[u8]>,
        events: &[&Event],
    ) -> Result<ApplyResult, Error> {
        let list: Vec<wit::Event> = events.iter().map(|e| to_wit(e)).collect();
        let r = self.call(events.len(), |s, i| {
            i.projector_plugin_projection()
                .call_apply(s, key, state, &list)
        })?;
        self.forget_failed_answers(std::slice::from_ref(&r));
        Ok(from_wit_result(r))
    }

    fn batch_keys(
        &mut self,
        batch: &EventBatch,
        start: usize,
        count: usize,
    ) -> Result<Vec<Result<Vec<String>, GuestError>>, Error> {
        let out = self.retrying(|session| {
            let handle = session.batch_handle(batch)?;
            session.call_once(count, &mut |s, i| {
                i.projector_plugin_projection().batch().call_keys(
                    s,
                    handle,
                    start as u32,
                    count as u32,
                )
            })
        })?;
        self.check_count("keys", out.len(), count)?;
        Ok(out.into_iter().map(|r| r.map_err(from_wit_error)).collect())
    }

    fn apply_batch(
        &mut self,
        batch: &EventBatch,
        runs: &[KeyRun],
    ) -> Result<Vec<ApplyResult>, Error> {
        let (keys, states, events, list) = pack_runs(runs).map_err(|message| Error::BadOutput {
            plugin: self.plugin.meta.name.clone(),
            message,
        })?;
        // The deadline grows with the work, up to a bound: a guest stuck on
        // one key must not hold the whole batch for long (the engine then
        // goes key by key, each under its own deadline).
        let work = runs
            .iter()
            .map(|r| r.events.len())
            .sum::<usize>()
            .min(MAX_BATCH_DEADLINE_EVENTS);
        // Not retried when out of time: the engine's key-by-key fallback is
        // the retry, each call there with its own deadline and retries.
        let handle = self.batch_handle(batch)?;
        let out = self.call_once(work, &mut |s, i| {
            let packed = wit::PackedRuns {
                keys: &keys,
                states: &states,
                events: &events,
                runs: &list,
            };
            i.projector_plugin_projection()
                .batch()
                .call_apply(s, handle, packed)
        })?;
        self.check_count("batch.apply", out.len(), runs.len())?;
        self.forget_failed_answers(&out);
        Ok(out.into_iter().map(from_wit_result).collect())
    }

    fn render(
        &mut self,
        key: &str,
        state: &[u8],
        now_ms: i64,
    ) -> Result<Result<String, GuestError>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_projection()
                .call_render(s, key, state, now_ms)
        })?;
        Ok(r.map_err(from_wit_error))
    }

    fn snapshot(
        &mut self,
        key: &str,
        answer: &str,
    ) -> Result<Result<(Vec<u8>, Vec<(String, u64)>), GuestError>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_projection()
                .call_from_snapshot(s, key, answer)
        })?;
        Ok(r.map(|s| (s.state, s.versions)).map_err(from_wit_error))
    }

    fn migrate(
        &mut self,
        key: &str,
        state: &[u8],
        from: &str,
    ) -> Result<Result<Option<Vec<u8>>, GuestError>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_projection()
                .call_migrate(s, key, state, from)
        })?;
        Ok(r.map_err(from_wit_error))
    }

    fn compare(
        &mut self,
        key: &str,
        projection: &str,
        truth: &str,
    ) -> Result<Vec<Difference>, Error> {
        let r = self.call(1, |s, i| {
            i.projector_plugin_comparison()
                .call_compare(s, key, projection, truth)
        })?;
        Ok(match r {
            wit::Verdict::Equal => Vec::new(),
            wit::Verdict::Different(d) => d
                .into_iter()
                .map(|d| Difference {
                    path: d.path,
                    reason: d.reason,
                    projection: d.projection,
                    source: d.source,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod panic_tests {
    use super::panic_in;

    #[test]
    fn a_panic_is_told_by_its_location_and_message_once() {
        let stderr = "before\nthread '<unnamed>' panicked at src/lib.rs:41:56:\nboom\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_in(stderr).as_deref(),
            Some("panicked at src/lib.rs:41:56: boom")
        );
        assert_eq!(panic_in("just a line\n"), None);
    }
}
