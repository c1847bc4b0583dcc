//! A view's history: each committed change of a view, kept under
//! `h 0 ns 0 key 0 seq` (the seq grows with time: microseconds since the
//! epoch, strictly increasing), with when it was committed, the plugin
//! version that made it, the namespace's offsets then, and the view as
//! stored (none: deleted). Written in the commit's atomic batch beside the
//! view itself; read newest first for an `as_of` read; pruned by the
//! engine's sweep within the plugin's bounds.

use super::*;

/// One change of a view, as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// When the change was committed, in ms since the epoch.
    pub at_ms: i64,
    /// The content id of the plugin version that made it (its first 16
    /// hex digits).
    pub version: String,
    /// The namespace's next offsets when it was committed: (source,
    /// partition, next offset).
    pub offsets: Vec<(String, u32, u64)>,
    /// The view's stored form after the change (`encode_view`); `None`:
    /// the view was deleted (or expired).
    pub view: Option<Vec<u8>>,
    /// The fetched answers the change was built from (plugins that record
    /// their fetches; empty otherwise).
    pub answers: Vec<AnswerUsed>,
}

/// The fields every entry has, in their stored order. The answers, when
/// there are any, follow them: an entry written before answers were kept
/// ends after `view`, and reads with none.
#[derive(Serialize, Deserialize)]
struct Head<S, O, V> {
    at_ms: i64,
    version: S,
    offsets: O,
    view: V,
}

impl HistoryEntry {
    /// The view after the change, decoded.
    pub fn record(&self) -> Result<Option<ViewRecord>> {
        self.view.as_deref().map(decode_view).transpose()
    }
}

/// A history entry as the pruning sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Where it is in the store.
    pub(crate) store_key: Vec<u8>,
    /// The view it is a change of.
    pub(crate) key: String,
    pub(crate) seq: u64,
    /// When it was committed.
    pub(crate) at_ms: i64,
    /// It records the view's deletion.
    pub(crate) deleted: bool,
}

/// `h 0 ns 0 key 0`: where the entries of one view start.
fn key_prefix(ns: &str, view_key: &str) -> Vec<u8> {
    let mut k = key(b'h', &[ns.as_bytes(), view_key.as_bytes()]);
    k.push(0);
    k
}

/// `h 0 ns 0`: where the entries of a namespace start.
pub(super) fn ns_prefix(ns: &str) -> Vec<u8> {
    let mut k = key(b'h', &[ns.as_bytes()]);
    k.push(0);
    k
}

/// The store key of `view_key`'s entry `seq` in `ns`.
pub(super) fn history_key(ns: &str, view_key: &str, seq: u64) -> Vec<u8> {
    let mut k = key_prefix(ns, view_key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// (view key, seq) of a store key under `ns_prefix` (`None`: not one).
fn parse(ns_prefix: &[u8], k: &[u8]) -> Option<(String, u64)> {
    let rest = k.strip_prefix(ns_prefix)?;
    let (key, seq) = rest.split_at_checked(rest.len().checked_sub(9)?)?;
    let (0, seq) = seq.split_first()? else {
        return None;
    };
    let seq = u64::from_be_bytes(seq.try_into().ok()?);
    Some((String::from_utf8_lossy(key).into_owned(), seq))
}

fn decode_entry(bytes: &[u8]) -> Result<HistoryEntry> {
    let corrupt = |e: postcard::Error| Error::Corrupt {
        what: "view history entry".into(),
        reason: e.to_string(),
    };
    let (head, rest) =
        postcard::take_from_bytes::<Head<String, Vec<(String, u32, u64)>, Option<Vec<u8>>>>(bytes)
            .map_err(corrupt)?;
    let answers = match rest {
        [] => Vec::new(),
        rest => postcard::from_bytes(rest).map_err(corrupt)?,
    };
    Ok(HistoryEntry {
        at_ms: head.at_ms,
        version: head.version,
        offsets: head.offsets,
        view: head.view,
        answers,
    })
}

impl Writer {
    /// Keep a history entry in its stored form as change `seq` of
    /// `view_key` in `ns`. Like the views, it goes in the commit's one
    /// record, applied to its key by the materializer off the commit.
    pub(crate) fn put_history_encoded(&mut self, ns: &str, view_key: &str, seq: u64, bytes: &[u8]) {
        self.views
            .put_encoded(&history_key(ns, view_key, seq), Some(bytes));
    }

    /// Drop change `seq` of `view_key` in `ns`.
    pub(crate) fn remove_history(&mut self, ns: &str, view_key: &str, seq: u64) {
        self.views
            .put_encoded(&history_key(ns, view_key, seq), None);
    }
}

/// A history entry in its stored form, for the changelog.
pub fn encode_history(entry: &HistoryEntry) -> Vec<u8> {
    let head = Head {
        at_ms: entry.at_ms,
        version: &entry.version,
        offsets: &entry.offsets,
        view: &entry.view,
    };
    let mut out = postcard::to_allocvec(&head).expect("postcard encodes a history entry");
    if !entry.answers.is_empty() {
        out.extend(postcard::to_allocvec(&entry.answers).expect("postcard encodes answers"));
    }
    out
}

impl Store {
    /// The changes of `view_key` in `ns` kept now, oldest first, each with
    /// its seq.
    pub fn history(&self, ns: &str, view_key: &str) -> Result<Vec<(u64, HistoryEntry)>> {
        self.unapplied.settle()?;
        let prefix = key_prefix(ns, view_key);
        let mut out = Vec::new();
        for item in self.state.scan_prefix(&prefix) {
            let (k, v) = item?;
            // A longer key that starts like this one is another view's.
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let seq = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or([0; 8]));
            out.push((seq, decode_entry(&v)?));
        }
        Ok(out)
    }

    /// The newest change of `view_key` in `ns` whose seq is at most `seq`
    /// and that `fits`, if any.
    pub fn history_at(
        &self,
        ns: &str,
        view_key: &str,
        seq: u64,
        fits: impl Fn(&HistoryEntry) -> bool,
    ) -> Result<Option<(u64, HistoryEntry)>> {
        self.unapplied.settle()?;
        let prefix = key_prefix(ns, view_key);
        let end = history_key(ns, view_key, seq);
        for item in self.state.range(prefix.clone()..=end).rev() {
            let (k, v) = item?;
            if k.len() != prefix.len() + 8 {
                continue;
            }
            let entry = decode_entry(&v)?;
            if fits(&entry) {
                let s = u64::from_be_bytes(k[prefix.len()..].try_into().unwrap_or([0; 8]));
                return Ok(Some((s, entry)));
            }
        }
        Ok(None)
    }

    /// Up to `limit` entries of `ns` after store key `after` (from the
    /// start when `None`), in key order. For the pruning sweep.
    pub(crate) fn history_page(
        &self,
        ns: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Kept>> {
        let prefix = ns_prefix(ns);
        let mut page = Vec::new();
        for (k, v) in self.page(&prefix, after.map(<[u8]>::to_vec), limit)? {
            let Some((key, seq)) = parse(&prefix, &k) else {
                continue;
            };
            let entry = decode_entry(&v)?;
            page.push(Kept {
                store_key: k.to_vec(),
                key,
                seq,
                at_ms: entry.at_ms,
                deleted: entry.view.is_none(),
            });
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_key_names_its_view_and_seq() {
        let k = history_key("inbox", "u1:s1", 42);
        assert_eq!(parse(&ns_prefix("inbox"), &k), Some(("u1:s1".into(), 42)));
        assert_eq!(parse(&ns_prefix("other"), &k), None);
        // A view key holding NUL bytes parses whole.
        let k = history_key("inbox", "a\0b", 7);
        assert_eq!(parse(&ns_prefix("inbox"), &k), Some(("a\0b".into(), 7)));
    }

    /// How an entry was stored before answers were kept (the form of
    /// entries already on disk and in changelogs).
    #[derive(Serialize)]
    struct Before {
        at_ms: i64,
        version: String,
        offsets: Vec<(String, u32, u64)>,
        view: Option<Vec<u8>>,
    }

    #[test]
    fn an_entry_keeps_its_answers_and_one_stored_before_reads_with_none() {
        let mut entry = HistoryEntry {
            at_ms: 1_700_000_000_123,
            version: "0123456789abcdef".into(),
            offsets: vec![("t".into(), 3, 42)],
            view: Some(vec![1, 2, 3]),
            answers: Vec::new(),
        };
        let before = Before {
            at_ms: entry.at_ms,
            version: entry.version.clone(),
            offsets: entry.offsets.clone(),
            view: entry.view.clone(),
        };
        let old = postcard::to_allocvec(&before).expect("encodes");
        // Without answers an entry is stored as before, byte for byte.
        assert_eq!(encode_history(&entry), old);
        assert_eq!(decode_entry(&old).expect("decodes"), entry);
        entry.answers = vec![AnswerUsed {
            service: "billing".into(),
            path: "/billing/a1".into(),
            status: 200,
            digest: "00112233aabbccdd".into(),
            from_record: false,
            stale: false,
        }];
        entry.view = None;
        let new = encode_history(&entry);
        assert_eq!(decode_entry(&new).expect("decodes"), entry);
        assert!(
            decode_entry(&new[..new.len() - 1]).is_err(),
            "a cut entry is corrupt"
        );
    }
}
