//! inbox-unread: a user's unread conversations on a site (seed 000).
//!
//! View key: `{user_id}:{site_id}`, the read pattern of the inbox. The view
//! holds that user's unread conversation ids on that site, newest first,
//! bounded (`max_unread`, default 1000) so a read costs the same however
//! busy the site. Versions per key with the invalidate policy; lazy
//! population from the legacy endpoint's answer.
//!
//! Events (payload fields; every event's `time_ms` is its update time):
//! - `MessageSent {site_id, conversation_id, sender_id, participants}`:
//!   unread for every participant but the sender, read for the sender, and
//!   unarchived for all;
//! - `ConversationRead {site_id, conversation_id, user_id}`;
//! - `ConversationArchived` / `ConversationUnarchived` / `ConversationDeleted
//!   {site_id, conversation_id, participants}`;
//! - `ParticipantAdded {site_id, conversation_id, user_id, unread?}` and
//!   `ParticipantRemoved {site_id, conversation_id, user_id}`.

use compact_str::CompactString;
use projector_guest::{
    Change, Difference, Error, Event, Info, Json, Population, Projection, StalePolicy,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The plugin, configured.
pub struct InboxUnread {
    max_unread: usize,
    source: String,
}

/// One unread conversation in a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Ids are short: kept inline (no allocation) up to 24 bytes (12 in
    /// Wasm), which keeps decoding a state cheap.
    pub id: CompactString,
    /// Time of the last message, ms since the epoch.
    pub updated: i64,
    /// Archived conversations stay tracked but are not shown.
    pub archived: bool,
}

/// A view's state: unread entries, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unread {
    pub entries: Vec<Entry>,
}

impl Unread {
    fn position(&self, id: &str) -> Option<usize> {
        self.entries.iter().position(|e| same_id(&e.id, id))
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.position(id) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Mark `id` unread at `updated`, keeping newest first and the bound.
    fn touch(&mut self, id: &str, updated: i64, max: usize) {
        let updated = match self.position(id) {
            Some(i) => self.entries.remove(i).updated.max(updated),
            None => updated,
        };
        let at = self
            .entries
            .iter()
            .position(|e| (e.updated, e.id.as_str()) < (updated, id))
            .unwrap_or(self.entries.len());
        self.entries.insert(
            at,
            Entry {
                id: id.into(),
                updated,
                archived: false,
            },
        );
        self.entries.truncate(max);
    }

    fn set_archived(&mut self, id: &str, archived: bool) -> bool {
        match self.position(id) {
            Some(i) if self.entries[i].archived != archived => {
                self.entries[i].archived = archived;
                true
            }
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct Settings {
    #[serde(default = "default_max_unread")]
    max_unread: usize,
    #[serde(default = "default_source")]
    source: String,
}

fn default_max_unread() -> usize {
    1000
}

fn default_source() -> String {
    "inbox".to_string()
}

// Payloads are parsed once per event (`Event::parsed`) and shared by
// `keys` and by `apply` for each key the event touches. Their ids are
// `CompactString`s: short ones need no allocation.

#[derive(Deserialize)]
struct Message {
    site_id: CompactString,
    conversation_id: CompactString,
    sender_id: CompactString,
    participants: Vec<CompactString>,
}

#[derive(Deserialize)]
struct ForUser {
    site_id: CompactString,
    conversation_id: CompactString,
    user_id: CompactString,
    #[serde(default)]
    unread: bool,
}

#[derive(Deserialize)]
struct ForConversation {
    site_id: CompactString,
    conversation_id: CompactString,
    participants: Vec<CompactString>,
}

/// The view key for a user on a site.
pub fn view_key(user_id: &str, site_id: &str) -> Result<String, Error> {
    if user_id.is_empty() || site_id.is_empty() || user_id.contains(':') || site_id.contains(':') {
        return Err(Error::bad_input(format!(
            "bad user or site id: {user_id:?}, {site_id:?}"
        )));
    }
    let mut key = String::with_capacity(user_id.len() + 1 + site_id.len());
    key.push_str(user_id);
    key.push(':');
    key.push_str(site_id);
    Ok(key)
}

/// Whether two ids are equal, compared from their last byte: the ids of
/// one view tend to share a prefix (`c42-7`, `c42-19`), so a scan of a
/// view's entries mostly stops at the first byte it looks at, with no
/// call to `memcmp` (a byte loop in Wasm's libc).
fn same_id(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().rev().eq(b.bytes().rev())
}

fn user_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(user, _)| user)
}

/// One conversation in a rendered or legacy answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Shown {
    id: String,
    last_message_at: i64,
}

#[derive(Deserialize)]
struct Answer {
    conversations: Vec<Shown>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    versions: Option<std::collections::BTreeMap<String, u64>>,
}

impl Projection for InboxUnread {
    type State = Unread;
    /// The fields of [`Settings`]: any other name is refused at deploy.
    const SETTINGS: Option<&'static [&'static str]> = Some(&["max_unread", "source"]);

    fn configure(settings: &Json) -> Result<Self, Error> {
        let s: Settings = serde_json::from_value(settings.clone())
            .map_err(|e| Error::bad_input(format!("inbox-unread settings: {e}")))?;
        if s.max_unread == 0 {
            return Err(Error::bad_input(
                "inbox-unread settings: max_unread must be at least 1",
            ));
        }
        Ok(InboxUnread {
            max_unread: s.max_unread,
            source: s.source,
        })
    }

    fn info(&self) -> Info {
        Info {
            name: "inbox-unread".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            population: Population::Lazy,
            stale_policy: StalePolicy::Invalidate,
            // Unread conversations do not age: a rendered inbox stays
            // right until the view changes.
            render_uses_time: false,
        }
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, Error> {
        match event.event_type.as_str() {
            "MessageSent" => {
                let m = event.parsed::<Message>()?;
                let mut keys = Vec::with_capacity(1 + m.participants.len());
                keys.push(view_key(&m.sender_id, &m.site_id)?);
                for p in m.participants.iter().filter(|p| **p != m.sender_id) {
                    keys.push(view_key(p, &m.site_id)?);
                }
                keys.dedup();
                Ok(keys)
            }
            "ConversationRead" | "ParticipantAdded" | "ParticipantRemoved" => {
                let u = event.parsed::<ForUser>()?;
                Ok(vec![view_key(&u.user_id, &u.site_id)?])
            }
            "ConversationArchived" | "ConversationUnarchived" | "ConversationDeleted" => {
                let c = event.parsed::<ForConversation>()?;
                c.participants
                    .iter()
                    .map(|p| view_key(p, &c.site_id))
                    .collect()
            }
            _ => Ok(Vec::new()),
        }
    }

    fn apply(&self, key: &str, state: &mut Unread, event: &Event) -> Result<Change, Error> {
        let changed = match event.event_type.as_str() {
            "MessageSent" => {
                let m = event.parsed::<Message>()?;
                if user_of(key) == m.sender_id {
                    state.remove(&m.conversation_id)
                } else {
                    state.touch(&m.conversation_id, event.time_ms, self.max_unread);
                    true
                }
            }
            "ConversationRead" | "ParticipantRemoved" => {
                let u = event.parsed::<ForUser>()?;
                state.remove(&u.conversation_id)
            }
            "ParticipantAdded" => {
                let u = event.parsed::<ForUser>()?;
                if u.unread {
                    state.touch(&u.conversation_id, event.time_ms, self.max_unread);
                }
                u.unread
            }
            "ConversationArchived" => {
                let c = event.parsed::<ForConversation>()?;
                state.set_archived(&c.conversation_id, true)
            }
            "ConversationUnarchived" => {
                let c = event.parsed::<ForConversation>()?;
                state.set_archived(&c.conversation_id, false)
            }
            "ConversationDeleted" => {
                let c = event.parsed::<ForConversation>()?;
                state.remove(&c.conversation_id)
            }
            _ => false,
        };
        Ok(if changed {
            Change::Updated
        } else {
            Change::Unchanged
        })
    }

    fn render(&self, _key: &str, state: &Unread, _now_ms: i64) -> Result<Json, Error> {
        let shown: Vec<Json> = state
            .entries
            .iter()
            .filter(|e| !e.archived)
            .map(|e| json!({"id": e.id, "last_message_at": e.updated}))
            .collect();
        Ok(json!({"count": shown.len(), "conversations": shown}))
    }

    fn snapshot(&self, key: &str, answer: &Json) -> Result<(Unread, Vec<(String, u64)>), Error> {
        let a: Answer = serde_json::from_value(answer.clone())
            .map_err(|e| Error::bad_input(format!("legacy answer for {key}: {e}")))?;
        let mut state = Unread::default();
        for c in &a.conversations {
            state.touch(&c.id, c.last_message_at, self.max_unread);
        }
        let mut versions: Vec<(String, u64)> = a.versions.unwrap_or_default().into_iter().collect();
        if let Some(v) = a.version {
            versions.push((self.source.clone(), v));
        }
        Ok((state, versions))
    }

    /// Equal when both hold the same conversations with the same times, in
    /// newest-first order; ids sharing a timestamp may come in any order.
    fn compare(&self, _key: &str, projection: &Json, source: &Json) -> Vec<Difference> {
        let (a, b) = match (shown_of(projection), shown_of(source)) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => {
                return vec![Difference {
                    path: "/".into(),
                    reason: "unreadable".into(),
                    projection: a.err(),
                    source: b.err(),
                }]
            }
        };
        let mut diffs = Vec::new();
        let by_id = |list: &[Shown]| -> std::collections::BTreeMap<String, i64> {
            list.iter()
                .map(|s| (s.id.clone(), s.last_message_at))
                .collect()
        };
        let (ma, mb) = (by_id(&a), by_id(&b));
        for (id, ta) in &ma {
            match mb.get(id) {
                None => diffs.push(diff(
                    format!("/conversations/{id}"),
                    "extra",
                    Some(ta),
                    None,
                )),
                Some(tb) if tb != ta => diffs.push(diff(
                    format!("/conversations/{id}/last_message_at"),
                    "timestamp",
                    Some(ta),
                    Some(tb),
                )),
                _ => {}
            }
        }
        for (id, tb) in mb.iter().filter(|(id, _)| !ma.contains_key(*id)) {
            diffs.push(diff(
                format!("/conversations/{id}"),
                "missing",
                None,
                Some(tb),
            ));
        }
        if diffs.is_empty() {
            let order = |list: &[Shown]| list.iter().map(|s| s.last_message_at).collect::<Vec<_>>();
            let sorted_desc = |v: &[i64]| v.windows(2).all(|w| w[0] >= w[1]);
            if !sorted_desc(&order(&a)) || !sorted_desc(&order(&b)) {
                diffs.push(Difference {
                    path: "/conversations".into(),
                    reason: "order".into(),
                    projection: Some(format!("{:?}", order(&a))),
                    source: Some(format!("{:?}", order(&b))),
                });
            }
        }
        diffs
    }
}

fn shown_of(answer: &Json) -> Result<Vec<Shown>, String> {
    let list = answer
        .get("conversations")
        .cloned()
        .ok_or("no `conversations` field")?;
    serde_json::from_value(list).map_err(|e| e.to_string())
}

fn diff(path: String, reason: &str, projection: Option<&i64>, source: Option<&i64>) -> Difference {
    Difference {
        path,
        reason: reason.into(),
        projection: projection.map(i64::to_string),
        source: source.map(i64::to_string),
    }
}

projector_guest::export!(InboxUnread);
