//! Generations: a shadow generation of a plugin built beside the live
//! one (rebuilt or seeded), joined to the live path, switched, retired.

use super::*;
use projector_common::sync::Recover;

impl Engine {
    /// A new generation of plugin `code.name()`: its views in their own
    /// namespace, built by [`Engine::build`] from the start of the log
    /// beside the live one, which it joins with [`Engine::follow`].
    pub fn new_generation(
        &self,
        code: SharedCode,
        population: Option<Population>,
    ) -> Result<Arc<Projection>> {
        let ns = format!("{}~{}", code.name(), &code.id()[..12.min(code.id().len())]);
        self.new_generation_in(code, population, ns)
    }

    /// A generation whose views are in namespace `ns` already (one taken
    /// up again after a restart): built from its own offsets on.
    pub fn new_generation_in(
        &self,
        code: SharedCode,
        population: Option<Population>,
        ns: String,
    ) -> Result<Arc<Projection>> {
        let name = code.name().to_string();
        let mut list = self.projections.write().recover();
        if list.iter().any(|p| p.ns == ns) {
            return Err(Error::Duplicate(ns));
        }
        let population = population.unwrap_or(code.info().population);
        let p = Arc::new(Projection {
            code,
            counters: Mutex::new(self.store.counters(&ns)?),
            ns,
            population,
            views: Arc::default(),
            dirty: Arc::default(),
            rendered: RwLock::new(RenderCache::default()),
            retried: AtomicU64::new(0),
            shadow: AtomicBool::new(true),
            building: AtomicBool::new(true),
            behind: AtomicBool::new(false),
            retry: self.policy(&name).retry,
            // A shadow is never paused: its breaker never records.
            breaker: Arc::new(Breaker::new(self.policy(&name).breaker)),
            failures: AtomicU64::new(0),
            last_failure: Mutex::default(),
            expiry: Arc::new(Expiry::new(self.policy(&name).ttl_ms)),
            keeping: Arc::new(super::Keeping::new(self.policy(&name).history)),
        });
        list.push(p.clone());
        Ok(p)
    }

    /// Apply `records` of (source, partition) to generation `p` only (a
    /// rebuild); how many were applied. Anyone else waiting for the
    /// engine (a live batch, a commit, a retry) goes first: a build holds
    /// it up by one call at most, so a caller keeps `records` to what it
    /// applies in a short while.
    pub fn build(
        &self,
        p: &Arc<Projection>,
        source: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<Counters> {
        let mut pending = self.write.lock_last().recover();
        self.build_locked(&mut pending, p, source, partition, records)
    }

    pub(super) fn build_locked(
        &self,
        pending: &mut Pending,
        p: &Arc<Projection>,
        source: &str,
        partition: u32,
        records: &[Record],
    ) -> Result<Counters> {
        let decoded: Vec<Result<Event, DecodeError>> =
            records.iter().map(|r| r.decode(self.format)).collect();
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        let batch = BatchIn {
            source,
            partition,
            records,
            decoded: &decoded,
            route: None,
            placed: None,
        };
        let delta = self.apply_batch(pending, &mut writer, p, &batch);
        pending.writer = Some(writer);
        self.commit_due(pending)?;
        // Readers (lag, position tokens) see where `p` is now.
        let k = (p.ns.clone(), source.to_string(), partition);
        if let Some(o) = pending.offsets.get(&k) {
            self.applied.write().recover().insert(k, *o);
        }
        delta
    }

    /// The next offset generation `p` applies from.
    pub fn generation_offset(&self, p: &Projection, source: &str, partition: u32) -> Result<u64> {
        let mut pending = self.write.lock().recover();
        pending.offset(&self.store, &p.ns, source, partition)
    }

    /// Join generation `p` to the live path: with batches stopped,
    /// `catch_up(source, partition, from, to)` gives the records it still
    /// lacks, from `from` up to `to`, where the live path is (it runs under
    /// the engine's write lock: it must not call back into the engine), and
    /// from the next batch on it is fed with the others.
    pub fn follow(
        &self,
        p: &Arc<Projection>,
        partitions: &[(String, u32)],
        catch_up: impl FnMut(&str, u32, u64, u64) -> Result<Vec<Record>>,
    ) -> Result<()> {
        self.join(p, partitions, catch_up, || {
            p.building.store(false, Ordering::Relaxed)
        })?;
        Ok(())
    }

    /// With batches stopped, bring `p` up to where the live path is in
    /// each partition (`catch_up(source, partition, from, to)` gives the
    /// records it lacks), commit, and `then` make it part of the live path.
    /// What it counted doing so.
    pub(super) fn join(
        &self,
        p: &Arc<Projection>,
        partitions: &[(String, u32)],
        mut catch_up: impl FnMut(&str, u32, u64, u64) -> Result<Vec<Record>>,
        then: impl FnOnce(),
    ) -> Result<Counters> {
        let mut pending = self.write.lock().recover();
        let mut counted = Counters::default();
        for (source, partition) in partitions {
            let from = pending.offset(&self.store, &p.ns, source, *partition)?;
            let to = pending.offset(&self.store, DECODE_NS, source, *partition)?;
            if from >= to {
                continue;
            }
            let records = catch_up(source, *partition, from, to)?;
            if !records.is_empty() {
                counted.add(&self.build_locked(&mut pending, p, source, *partition, &records)?);
            }
        }
        self.commit_locked(&mut pending)?;
        then();
        Ok(counted)
    }

    /// Whether generation `p` (not serving reads) lacks records of
    /// (source, partition) before a batch starting at `first`: its next
    /// offset is before the batch and before where the live path was
    /// (`live`), as when a partition moved here while `p` was being built
    /// and the source resumed past it. `p` then leaves the live path
    /// (building again, marked [`Projection::take_behind`]) until it is
    /// caught up from its own offsets; applying the batch would leave a
    /// hole in its views.
    pub(super) fn lacks(
        &self,
        pending: &mut Pending,
        p: &Projection,
        source: &str,
        partition: u32,
        first: u64,
        live: u64,
    ) -> Result<bool> {
        let from = pending.offset(&self.store, &p.ns, source, partition)?;
        if from >= first || from >= live {
            return Ok(false);
        }
        tracing::warn!(
            plugin = p.name(),
            ns = %p.ns,
            source,
            partition,
            from,
            first,
            "this generation lacks records before the batch; it leaves the live path until caught up"
        );
        p.building.store(true, Ordering::Relaxed);
        p.behind.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Seed generation `p` from the views of `from` (the live one) and join
    /// it to the live path, all between two batches: `migrate` turns each
    /// live view into the new one (`None`: left absent, to be populated
    /// again from the source of truth), and `p` starts at `from`'s
    /// offsets. Calls `progress(done, total)` as it goes; returns (views
    /// migrated, views left absent).
    pub fn seed(
        &self,
        p: &Arc<Projection>,
        from: &Projection,
        mut migrate: impl FnMut(&str, &ViewRecord) -> Option<ViewRecord>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(u64, u64)> {
        let mut pending = self.write.lock().recover();
        self.commit_locked(&mut pending)?;
        let total = self.store.views(&from.ns).count() as u64;
        let (mut migrated, mut absent) = (0u64, 0u64);
        let mut writer = self.store.writer();
        let mut in_batch = 0;
        for item in self.store.views(&from.ns) {
            let (key, record) = item?;
            match migrate(&key, &record) {
                Some(new) => {
                    writer.put_view(&p.ns, &key, &new);
                    migrated += 1;
                }
                None => absent += 1,
            }
            in_batch += 1;
            if in_batch == 1024 {
                self.store
                    .commit(std::mem::replace(&mut writer, self.store.writer()))?;
                in_batch = 0;
                progress(migrated + absent, total);
            }
        }
        for (source, partition, next) in self.store.offsets(&from.ns)? {
            writer.set_offset(&p.ns, &source, partition, next);
            pending
                .offsets
                .insert((p.ns.clone(), source, partition), next);
        }
        self.store.commit(writer)?;
        progress(migrated + absent, total);
        p.building.store(false, Ordering::Relaxed);
        Ok((migrated, absent))
    }

    /// Make generation `to` of its plugin serve reads, and the active one
    /// a shadow (still fed, so a switch back finds it current).
    pub fn switch(&self, to: &Arc<Projection>) -> Result<()> {
        let mut pending = self.write.lock().recover();
        self.commit_locked(&mut pending)?;
        if to.is_building() {
            return Err(Error::Guest {
                plugin: to.name().into(),
                message: "the new generation is still being built".into(),
            });
        }
        let current = self.projection(to.name())?;
        current.shadow.store(true, Ordering::Relaxed);
        to.shadow.store(false, Ordering::Relaxed);
        if let Some(changelog) = self.changelog() {
            let n = self.spool_generation(&*changelog, &mut pending, &current, to)?;
            tracing::info!(
                plugin = to.name(),
                records = n,
                "the changelog follows the serving generation"
            );
        }
        Ok(())
    }

    /// The generations of `plugin` other than the one serving reads.
    pub fn shadows(&self, plugin: &str) -> Vec<Arc<Projection>> {
        self.all()
            .into_iter()
            .filter(|p| p.name() == plugin && p.is_shadow())
            .collect()
    }

    /// Drop generation `p` (a shadow) and delete its data.
    pub fn retire(&self, p: &Arc<Projection>) -> Result<()> {
        if !p.is_shadow() {
            return Err(Error::Guest {
                plugin: p.name().into(),
                message: "the generation serving reads cannot be retired".into(),
            });
        }
        let mut pending = self.write.lock().recover();
        self.commit_locked(&mut pending)?;
        self.projections.write().recover().retain(|q| q.ns != p.ns);
        pending.offsets.retain(|(ns, _, _), _| *ns != p.ns);
        pending.audit.retain(|(ns, _, _), _| *ns != p.ns);
        self.store.delete_ns(&p.ns)?;
        Ok(())
    }

    /// Make `p` serve reads: the first generation of a plugin added at
    /// runtime, once it is built and follows the live path.
    pub fn go_live(&self, p: &Arc<Projection>) -> Result<()> {
        let _batch = self.write.lock().recover();
        if p.is_building() {
            return Err(Error::Guest {
                plugin: p.name().into(),
                message: "the new generation is still being built".into(),
            });
        }
        if self.projection(p.name()).is_ok() {
            return Err(Error::Duplicate(p.name().into()));
        }
        p.shadow.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Take every generation of `plugin` off the live path between two
    /// batches; with `drop_views`, delete their views, offsets, counters
    /// and audit too (otherwise they stay, for the plugin to come back
    /// and resume from its offsets). The namespaces it held.
    pub fn remove(&self, plugin: &str, drop_views: bool) -> Result<Vec<String>> {
        let mut pending = self.write.lock().recover();
        self.commit_locked(&mut pending)?;
        let gone: Vec<String> = {
            let mut list = self.projections.write().recover();
            let gone = list
                .iter()
                .filter(|p| p.name() == plugin)
                .map(|p| p.ns.clone())
                .collect::<Vec<_>>();
            list.retain(|p| p.name() != plugin);
            gone
        };
        if gone.is_empty() {
            return Err(Error::UnknownPlugin(plugin.into()));
        }
        pending.offsets.retain(|(ns, _, _), _| !gone.contains(ns));
        pending.audit.retain(|(ns, _, _), _| !gone.contains(ns));
        self.applied
            .write()
            .recover()
            .retain(|(ns, _, _), _| !gone.contains(ns));
        if drop_views {
            for ns in &gone {
                self.store.delete_ns(ns)?;
            }
        }
        Ok(gone)
    }

    /// Start generation `p` where the live path is in each of
    /// `partitions`, with no view (a lazy plugin added at runtime: its
    /// views populate from reads), and let it follow from the next batch.
    pub fn start_at_live(&self, p: &Arc<Projection>, partitions: &[(String, u32)]) -> Result<()> {
        let mut pending = self.write.lock().recover();
        let mut writer = pending.writer.take().unwrap_or_else(|| self.store.writer());
        for (source, partition) in partitions {
            let live = pending.offset(&self.store, DECODE_NS, source, *partition)?;
            writer.set_offset(&p.ns, source, *partition, live);
            pending
                .offsets
                .insert((p.ns.clone(), source.clone(), *partition), live);
        }
        pending.writer = Some(writer);
        self.commit_locked(&mut pending)?;
        p.building.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Whether namespace `ns` holds applied offsets (a plugin removed with
    /// its views kept, coming back).
    pub fn has_offsets(&self, ns: &str) -> Result<bool> {
        Ok(!self.store.offsets(ns)?.is_empty())
    }
}
