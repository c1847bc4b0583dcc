//! Per-key state of a long job over many view keys (a backfill): which
//! keys are still to do, done, or failed and why, kept in their own tree
//! so that a job killed halfway resumes where it stopped.
//!
//! Tree `jobs`; keys `k 0 job 0 view_key` → state, `m 0 job` → the job's
//! own settings (bytes its owner chooses). A state is one byte (`0` to
//! do, `1` stored, `2` kept: a newer view was there) or `3` and the
//! failure's reason in UTF-8.

use super::{Result, Store};

/// Where one key of a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Not started, or started and not finished before a stop.
    Pending,
    /// Its view was stored.
    Stored,
    /// A view newer than the answer was already there and was left alone.
    Kept,
    /// It failed, for this reason.
    Failed(String),
}

impl KeyState {
    fn encode(&self) -> Vec<u8> {
        match self {
            KeyState::Pending => vec![0],
            KeyState::Stored => vec![1],
            KeyState::Kept => vec![2],
            KeyState::Failed(why) => {
                let mut out = vec![3];
                out.extend_from_slice(why.as_bytes());
                out
            }
        }
    }

    fn decode(bytes: &[u8]) -> KeyState {
        match bytes.split_first() {
            Some((1, _)) => KeyState::Stored,
            Some((2, _)) => KeyState::Kept,
            Some((3, why)) => KeyState::Failed(String::from_utf8_lossy(why).into_owned()),
            _ => KeyState::Pending,
        }
    }
}

/// The keys of one job (see the module's doc).
pub struct KeyStates {
    tree: sled::Tree,
    job: String,
    /// The store's database, for flushes within its bound.
    open: std::sync::Arc<super::Open>,
}

impl Store {
    /// The key states of job `job` (e.g. `backfill/inbox-unread`).
    pub fn key_states(&self, job: &str) -> Result<KeyStates> {
        Ok(KeyStates {
            tree: self.db.open_tree("jobs")?,
            job: job.to_string(),
            open: self.open.clone(),
        })
    }

    /// The jobs that have settings, by name, starting with `prefix`.
    pub fn jobs(&self, prefix: &str) -> Result<Vec<String>> {
        let tree = self.db.open_tree("jobs")?;
        let mut scan = b"m\0".to_vec();
        scan.extend_from_slice(prefix.as_bytes());
        let mut out = Vec::new();
        for item in tree.scan_prefix(scan) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[2..]).into_owned());
        }
        Ok(out)
    }
}

impl KeyStates {
    fn key(&self, view_key: &str) -> Vec<u8> {
        let mut k = self.keys_prefix();
        k.extend_from_slice(view_key.as_bytes());
        k
    }

    fn keys_prefix(&self) -> Vec<u8> {
        let mut k = b"k\0".to_vec();
        k.extend_from_slice(self.job.as_bytes());
        k.push(0);
        k
    }

    fn meta_key(&self) -> Vec<u8> {
        let mut k = b"m\0".to_vec();
        k.extend_from_slice(self.job.as_bytes());
        k
    }

    /// Start the job over: its keys (each to do) and settings replace
    /// what it held, atomically and durably. Duplicate keys count once;
    /// returns how many keys it has.
    pub fn start<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
        settings: &[u8],
    ) -> Result<u64> {
        self.clear()?;
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            if seen.insert(key) {
                batch.insert(self.key(key), KeyState::Pending.encode());
            }
        }
        batch.insert(self.meta_key(), settings);
        self.tree.apply_batch(batch)?;
        self.open.flush(&format!("starting job {}", self.job))?;
        Ok(seen.len() as u64)
    }

    /// The job's settings, if it exists.
    pub fn settings(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(self.meta_key())?.map(|v| v.to_vec()))
    }

    /// Remove the job and its keys.
    pub fn clear(&self) -> Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.tree.scan_prefix(self.keys_prefix()) {
            batch.remove(item?.0);
        }
        batch.remove(self.meta_key());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Record `state` for `view_key` (durable within the store's flush
    /// interval, 200 ms).
    pub fn set(&self, view_key: &str, state: &KeyState) -> Result<()> {
        self.tree.insert(self.key(view_key), state.encode())?;
        Ok(())
    }

    /// Up to `limit` keys still to do, in key order, after `after`.
    pub fn pending(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let prefix = self.keys_prefix();
        let start = match after {
            Some(k) => {
                let mut k = self.key(k);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() == limit {
                break;
            }
            if KeyState::decode(&v) == KeyState::Pending {
                out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
            }
        }
        Ok(out)
    }

    /// Every key with its state, in key order.
    pub fn all(&self) -> impl Iterator<Item = Result<(String, KeyState)>> + '_ {
        let skip = self.keys_prefix().len();
        self.tree.scan_prefix(self.keys_prefix()).map(move |item| {
            let (k, v) = item?;
            Ok((
                String::from_utf8_lossy(&k[skip..]).into_owned(),
                KeyState::decode(&v),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_its_keys_states_across_a_reopen_and_lists_what_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("store");
            let job = store.key_states("backfill/p").expect("job");
            let n = job.start(["b", "a", "c", "a", "d"], b"{}").expect("start");
            assert_eq!(n, 4);
            job.set("a", &KeyState::Stored).expect("set");
            job.set("c", &KeyState::Failed("503".into())).expect("set");
            // Another job's keys are its own.
            let other = store.key_states("backfill/q").expect("job");
            other.start(["a"], b"").expect("start");
            store.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("reopen");
        let job = store.key_states("backfill/p").expect("job");
        assert_eq!(job.pending(None, 10).expect("pending"), ["b", "d"]);
        assert_eq!(job.pending(Some("b"), 10).expect("pending"), ["d"]);
        assert_eq!(job.pending(None, 1).expect("pending"), ["b"]);
        let all: Vec<_> = job.all().collect::<Result<_>>().expect("all");
        assert_eq!(all[2], ("c".to_string(), KeyState::Failed("503".into())));
        assert_eq!(
            job.settings().expect("settings").as_deref(),
            Some(&b"{}"[..])
        );
        assert_eq!(
            store.jobs("backfill/").expect("jobs"),
            ["backfill/p", "backfill/q"]
        );
        job.clear().expect("clear");
        assert!(job.settings().expect("settings").is_none());
        assert_eq!(store.jobs("backfill/").expect("jobs"), ["backfill/q"]);
    }
}
