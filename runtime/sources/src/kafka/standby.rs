//! Standby replicas (`standby_replicas = 1`): each partition has, besides
//! its owner, one standby: the next live instance after the owner in the
//! order of their ids. A standby follows the partition's changelogs into
//! its own store as they grow, with their offsets, so when it is assigned
//! the partition (its owner died) the restore only reads what the standby
//! had not yet, and the partition is served at once. Reads that accept a
//! stale answer (`stale=ok`) are answered from a standby's views, marked
//! as such.

use super::members::Members;
use super::restore::{Follower, Followers};
use projector_common::shutdown::Shutdown;
use projector_common::sync::Recover;
use projector_core::source::SourceHost;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Records a step reads of one changelog partition at most, so the
/// consumer's restore never waits long for the followers' lock.
const STEP: u64 = 20_000;

/// Follow the changelogs of the partitions this instance stands by for,
/// until `stop`.
pub(crate) fn run_standby(
    host: &dyn SourceHost,
    members: &Members,
    followers: &Followers,
    stop: &Shutdown,
) -> anyhow::Result<()> {
    let config = members.config();
    while !stop.is_stopped() {
        let want: BTreeSet<u32> = members.standby_for();
        // Each partition's changelog records not read yet, over every plugin.
        let mut behind: BTreeMap<u32, Option<i64>> = want.iter().map(|p| (*p, None)).collect();
        {
            let mut standby = members.standby.lock().recover();
            for (p, b) in behind.iter_mut() {
                *b = standby.get(p).copied().flatten();
            }
            *standby = behind.clone();
        }
        let plugins: Vec<String> = host.plugins();
        let mut read = 0;
        {
            // A partition whose owner is gone keeps its follower until
            // someone owns it again: it may be this instance.
            let orphans = members.orphaned();
            let mut f = followers.lock().recover();
            f.retain(|(plugin, p), _| {
                let p = *p as u32;
                (want.contains(&p) || orphans.contains(&p)) && plugins.contains(plugin)
            });
        }
        for p in &want {
            for plugin in &plugins {
                if stop.is_stopped() {
                    break;
                }
                let mut f = followers.lock().recover();
                // Assigned here since `want` was read: the restore takes
                // (or took) the follower; nothing more is written for it.
                if members.claimed(*p) {
                    continue;
                }
                let key = (plugin.clone(), *p as i32);
                if !f.contains_key(&key) {
                    match Follower::new(config, plugin, *p as i32) {
                        Ok(new) => {
                            f.insert(key.clone(), new);
                        }
                        Err(e) => {
                            tracing::warn!(plugin, partition = p, "standby: {e:#}");
                            continue;
                        }
                    }
                }
                let follower = f.get_mut(&key).expect("inserted above");
                match follower.step(host, STEP) {
                    Ok((records, _)) => {
                        read += records;
                        let b = behind.entry(*p).or_default();
                        *b = Some(b.unwrap_or(0).max(follower.behind()));
                    }
                    Err(e) => {
                        tracing::warn!(plugin, partition = p, "standby: {e:#}");
                        f.remove(&key);
                    }
                }
            }
        }
        {
            // Only partitions still stood by for (a restore may have
            // taken one since `want` was read).
            let mut standby = members.standby.lock().recover();
            for (p, b) in behind {
                if let Some(now) = standby.get_mut(&p) {
                    *now = b;
                }
            }
        }
        if read == 0 {
            let _ = stop.wait(Duration::from_millis(200));
        }
    }
    Ok(())
}
