//! A legacy inbox service: the source of truth of the inbox-unread plugin
//! in the HTTP tests and benchmarks.
//!
//! It keeps a normalized model — conversations, participants, messages —
//! and answers "unread conversations of a user on a site" by a query over
//! it, as the monolith of seed 000 did over MySQL. Every change also
//! yields the event the monolith would have published, so a test can feed
//! the runtime and the source the same history (or, to provoke a
//! mismatch, change the source alone).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One conversation: its site, whether it is archived, its messages.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub site: String,
    pub archived: bool,
    /// (sender, time_ms), in time order.
    pub messages: Vec<(String, i64)>,
}

/// The normalized model.
#[derive(Debug, Default)]
pub struct Model {
    pub conversations: BTreeMap<String, Conversation>,
    /// (conversation, user) → the time the user last read it.
    pub participants: BTreeMap<(String, String), i64>,
    /// Version of the last change (the events' version). Events are keyed
    /// by site, so one site's events stay in order in one partition.
    pub seq: u64,
    /// User → the conversations they take part in (an index, as MySQL's).
    pub by_user: BTreeMap<String, BTreeSet<String>>,
}

impl Model {
    /// The legacy query: unread, unarchived conversations of `user` on
    /// `site`, newest first, with the time of their last message from
    /// someone else.
    pub fn unread(&self, user: &str, site: &str) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = Vec::new();
        let convs = self.by_user.get(user).into_iter().flatten();
        for conv in convs {
            let Some(read_at) = self.participants.get(&(conv.clone(), user.to_string())) else {
                continue;
            };
            let Some(c) = self.conversations.get(conv) else {
                continue;
            };
            if c.site != site || c.archived {
                continue;
            }
            let last_other = c
                .messages
                .iter()
                .filter(|(sender, _)| sender != user)
                .map(|(_, t)| *t)
                .max();
            if let Some(t) = last_other.filter(|t| t > read_at) {
                out.push((conv.clone(), t));
            }
        }
        out.sort_by(|a, b| (b.1, &b.0).cmp(&(a.1, &a.0)));
        out
    }

    fn event(&mut self, ty: &str, payload: Value) -> String {
        self.seq += 1;
        let seq = self.seq;
        json!({
            "id": format!("e{seq}"), "type": ty, "source": "inbox",
            "key": payload["site_id"], "version": seq,
            "time": 1_767_225_600_000i64 + seq as i64 * 1000, "payload": payload,
        })
        .to_string()
    }

    /// `sender` writes in `conv` (created on `site` with `participants` if
    /// new). Returns the event.
    pub fn send(&mut self, site: &str, conv: &str, sender: &str, participants: &[&str]) -> String {
        let m = self;
        let at = 1_767_225_600_000i64 + (m.seq as i64 + 1) * 1000;
        let c = m
            .conversations
            .entry(conv.to_string())
            .or_insert_with(|| Conversation {
                site: site.to_string(),
                ..Default::default()
            });
        c.archived = false;
        c.messages.push((sender.to_string(), at));
        let everyone: BTreeSet<&str> = participants
            .iter()
            .copied()
            .chain(std::iter::once(sender))
            .collect();
        for p in &everyone {
            m.participants
                .entry((conv.to_string(), p.to_string()))
                .or_insert(i64::MIN);
            m.by_user
                .entry(p.to_string())
                .or_default()
                .insert(conv.to_string());
        }
        m.participants
            .insert((conv.to_string(), sender.to_string()), at);
        let participants: Vec<&str> = everyone.into_iter().collect();
        m.event(
            "MessageSent",
            json!({"site_id": site, "conversation_id": conv, "sender_id": sender,
                   "participants": participants}),
        )
    }

    /// `user` reads `conv`. Returns the event.
    pub fn read(&mut self, conv: &str, user: &str) -> String {
        let m = self;
        let at = 1_767_225_600_000i64 + (m.seq as i64 + 1) * 1000;
        let site = m.conversations[conv].site.clone();
        m.participants
            .insert((conv.to_string(), user.to_string()), at);
        m.event(
            "ConversationRead",
            json!({"site_id": site, "conversation_id": conv, "user_id": user}),
        )
    }

    /// `conv` is archived (or unarchived) for everyone. Returns the event.
    pub fn archive(&mut self, conv: &str, archived: bool) -> String {
        let m = self;
        let c = m.conversations.get_mut(conv).expect("conversation");
        c.archived = archived;
        let site = c.site.clone();
        let participants: Vec<String> = m
            .participants
            .range((conv.to_string(), String::new())..)
            .take_while(|((c, _), _)| c == conv)
            .map(|((_, u), _)| u.clone())
            .collect();
        let ty = if archived {
            "ConversationArchived"
        } else {
            "ConversationUnarchived"
        };
        m.event(
            ty,
            json!({"site_id": site, "conversation_id": conv, "participants": participants}),
        )
    }
}

/// The running service.
pub struct Legacy {
    pub model: Arc<Mutex<Model>>,
    down: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    asked: Arc<Mutex<BTreeMap<String, u64>>>,
    gone: Arc<Mutex<BTreeSet<String>>>,
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct Shared {
    model: Arc<Mutex<Model>>,
    down: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    /// Queries per view key (`user:site`).
    asked: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Keys answered 404, as if deleted from the database.
    gone: Arc<Mutex<BTreeSet<String>>>,
}

#[derive(serde::Deserialize)]
struct UnreadQuery {
    user: String,
    site: String,
}

async fn unread(State(s): State<Shared>, Query(q): Query<UnreadQuery>) -> Response {
    if s.down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response();
    }
    s.queries.fetch_add(1, Ordering::Relaxed);
    let key = format!("{}:{}", q.user, q.site);
    *s.asked
        .lock()
        .expect("asked")
        .entry(key.clone())
        .or_default() += 1;
    if s.gone.lock().expect("gone").contains(&key) {
        return (StatusCode::NOT_FOUND, "no such user").into_response();
    }
    let model = s.model.lock().expect("model lock");
    let conversations: Vec<Value> = model
        .unread(&q.user, &q.site)
        .into_iter()
        .map(|(id, t)| json!({"id": id, "last_message_at": t}))
        .collect();
    Json(json!({"conversations": conversations, "version": model.seq})).into_response()
}

impl Legacy {
    /// Start on `127.0.0.1:0`.
    pub fn start() -> Legacy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let shared = Shared {
            model: Arc::default(),
            down: Arc::default(),
            queries: Arc::default(),
            asked: Arc::default(),
            gone: Arc::default(),
        };
        let app = Router::new()
            .route("/unread", get(unread))
            .with_state(shared.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind legacy");
        let addr = listener.local_addr().expect("legacy addr");
        runtime.spawn(async move { axum::serve(listener, app).await });
        Legacy {
            model: shared.model,
            down: shared.down,
            queries: shared.queries,
            asked: shared.asked,
            gone: shared.gone,
            addr,
            _runtime: runtime,
        }
    }

    /// The `[plugins.inbox-unread.truth]` table pointing here.
    pub fn source_config(&self) -> String {
        format!(
            "[plugins.inbox-unread.truth]\nurl = \"http://{}/unread?user={{user}}&site={{site}}\"\nkey = \"{{user}}:{{site}}\"\ntimeout_ms = 2000\nretries = 1\nbackoff_ms = 10\n",
            self.addr
        )
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }

    /// Queries per view key so far.
    pub fn asked(&self) -> BTreeMap<String, u64> {
        self.asked.lock().expect("asked").clone()
    }

    /// Answer 404 for `key` from now on (as if its user were deleted).
    pub fn forget(&self, key: &str) {
        self.gone.lock().expect("gone").insert(key.to_string());
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The legacy answer for a view key `user:site`.
    pub fn unread_of(&self, key: &str) -> Vec<(String, i64)> {
        let (user, site) = key.split_once(':').expect("user:site");
        self.model.lock().expect("model").unread(user, site)
    }

    /// `sender` writes in `conv`; see [`Model::send`].
    pub fn send(&self, site: &str, conv: &str, sender: &str, participants: &[&str]) -> String {
        let mut m = self.model.lock().expect("model");
        m.send(site, conv, sender, participants)
    }

    /// `user` reads `conv`; see [`Model::read`].
    pub fn read(&self, conv: &str, user: &str) -> String {
        self.model.lock().expect("model").read(conv, user)
    }

    /// `conv` is archived or unarchived; see [`Model::archive`].
    pub fn archive(&self, conv: &str, archived: bool) -> String {
        self.model.lock().expect("model").archive(conv, archived)
    }
}
