//! The registry: versions, activations, the rollback stack, the event
//! log and their persistence, on a store in a scratch directory.

use super::*;
use std::path::{Path, PathBuf};

/// A directory of the test's own under the system's temporary one,
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("projector-registry-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Path) -> (Store, Registry) {
    let store = Store::open(dir).expect("store");
    let registry = Registry::open(&store).expect("registry");
    (store, registry)
}

fn entry(r: &Registry, name: &str) -> Entry {
    r.entry(name).expect("readable").expect("recorded")
}

fn ids(versions: &[Version]) -> Vec<&str> {
    versions.iter().map(|v| v.id.as_str()).collect()
}

/// Activate `id` as a replace deploy does.
fn deploy(r: &Registry, name: &str, bytes: &[u8]) -> String {
    let v = r.add(name, bytes, "test").expect("add");
    r.activate(name, &v.id, false).expect("activate");
    v.id
}

/// Roll back as the deployer does: to the last version of the stack.
fn roll_back(r: &Registry, name: &str) -> Option<String> {
    let previous = entry(r, name).rollback.last().cloned()?;
    r.activate(name, &previous, true).expect("activate");
    Some(previous)
}

#[test]
fn a_version_id_is_the_sha256_of_the_module_in_hex() {
    assert_eq!(
        content_id(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        content_id(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_ne!(content_id(b"v1"), content_id(b"v2"));
}

#[test]
fn versions_are_recorded_in_deploy_order_with_their_code() {
    let dir = Scratch::new("order");
    let (_store, r) = open(dir.path());
    assert_eq!(r.entry("inbox").expect("readable"), None);
    assert!(r.names().is_empty());

    let before = projector_core::now_ms();
    let v1 = r
        .add("inbox", b"module one", "plugins_dir")
        .expect("add v1");
    let v2 = r.add("inbox", b"module two!", "api").expect("add v2");
    let v3 = r.add("inbox", b"three", "deploy.wasm").expect("add v3");
    let after = projector_core::now_ms();

    assert_eq!(v1.id, content_id(b"module one"));
    assert_eq!((v1.size, v2.size, v3.size), (10, 11, 5));
    assert_eq!(
        (v1.from.as_str(), v2.from.as_str(), v3.from.as_str()),
        ("plugins_dir", "api", "deploy.wasm")
    );
    for v in [&v1, &v2, &v3] {
        assert!(
            (before..=after).contains(&v.deployed_ms),
            "{v:?} recorded between {before} and {after}"
        );
        assert_eq!(v.rolled_back, None);
    }
    assert!(v1.deployed_ms <= v2.deployed_ms && v2.deployed_ms <= v3.deployed_ms);

    let e = entry(&r, "inbox");
    assert_eq!(e.versions, [v1.clone(), v2.clone(), v3.clone()]);
    // Recorded is not active: activation is the deploy's own step.
    assert_eq!(e.active, None);
    assert!(e.rollback.is_empty());
    assert_eq!(
        r.code(&v2.id).expect("code").as_deref(),
        Some(&b"module two!"[..])
    );
    assert_eq!(r.code(&content_id(b"never added")).expect("code"), None);
    assert_eq!(r.names(), ["inbox"]);
}

#[test]
fn the_same_module_is_recorded_once_per_plugin() {
    let dir = Scratch::new("once");
    let (_store, r) = open(dir.path());
    let first = r.add("inbox", b"same bytes", "plugins_dir").expect("add");
    r.add("inbox", b"other bytes", "api").expect("add");
    // Deployed again from elsewhere: the first record stands.
    let again = r.add("inbox", b"same bytes", "api").expect("add again");
    assert_eq!(again, first);
    let e = entry(&r, "inbox");
    assert_eq!(
        ids(&e.versions),
        [content_id(b"same bytes"), content_id(b"other bytes")]
    );
    // Another plugin with the same module has its own record of it.
    let shared = r.add("copy", b"same bytes", "api").expect("add copy");
    assert_eq!(shared.id, first.id);
    assert_eq!(shared.from, "api");
    assert_eq!(ids(&entry(&r, "copy").versions), [first.id.as_str()]);
    assert_eq!(ids(&entry(&r, "inbox").versions).len(), 2);
    assert_eq!(r.names(), ["copy", "inbox"]);
}

#[test]
fn each_activation_keeps_the_one_it_replaced_and_a_rollback_returns_to_it() {
    let dir = Scratch::new("rollback");
    let (_store, r) = open(dir.path());
    let v1 = deploy(&r, "inbox", b"v1");
    let e = entry(&r, "inbox");
    assert_eq!(e.active.as_deref(), Some(v1.as_str()));
    assert!(e.rollback.is_empty(), "the first version replaced nothing");

    let v2 = deploy(&r, "inbox", b"v2");
    let v3 = deploy(&r, "inbox", b"v3");
    let e = entry(&r, "inbox");
    assert_eq!(e.active.as_deref(), Some(v3.as_str()));
    assert_eq!(e.rollback, [v1.clone(), v2.clone()]);
    // Activating the active version again changes nothing.
    r.activate("inbox", &v3, false).expect("activate");
    assert_eq!(entry(&r, "inbox"), e);

    assert_eq!(roll_back(&r, "inbox").as_deref(), Some(v2.as_str()));
    let e = entry(&r, "inbox");
    assert_eq!(e.active.as_deref(), Some(v2.as_str()));
    assert_eq!(e.rollback, std::slice::from_ref(&v1));
    assert_eq!(roll_back(&r, "inbox").as_deref(), Some(v1.as_str()));
    let e = entry(&r, "inbox");
    assert_eq!(e.active.as_deref(), Some(v1.as_str()));
    assert!(e.rollback.is_empty());
    // Nothing earlier: the deployer refuses the rollback.
    assert_eq!(roll_back(&r, "inbox"), None);
    // A rollback forgets no version.
    assert_eq!(ids(&e.versions), [v1.as_str(), v2.as_str(), v3.as_str()]);

    // A version deployed again after a rollback goes on the stack
    // like any other.
    deploy(&r, "inbox", b"v3");
    let e = entry(&r, "inbox");
    assert_eq!(e.active.as_deref(), Some(v3.as_str()));
    assert_eq!(e.rollback, [v1]);
    assert_eq!(e.versions.len(), 3);
}

#[test]
fn the_shadow_entry_is_kept_and_cleared() {
    let dir = Scratch::new("shadow");
    let (_store, r) = open(dir.path());
    let v1 = deploy(&r, "inbox", b"v1");
    let v2 = r.add("inbox", b"v2", "api").expect("add").id;

    // A shadow being built: kept beside the active one.
    r.set_shadow("inbox", Some((&v2, "inbox~v2")), false)
        .expect("shadow");
    let e = entry(&r, "inbox");
    assert_eq!(e.shadow.as_deref(), Some(v2.as_str()));
    assert_eq!(e.shadow_ns.as_deref(), Some("inbox~v2"));
    assert!(!e.promoted);
    assert_eq!(e.active.as_deref(), Some(v1.as_str()));

    // Promoted: the old version is the one kept, for a rollback.
    r.activate("inbox", &v2, false).expect("activate");
    r.set_ns("inbox", "inbox~v2").expect("ns");
    r.set_shadow("inbox", Some((&v1, "inbox")), true)
        .expect("promoted");
    let e = entry(&r, "inbox");
    assert_eq!(e.active.as_deref(), Some(v2.as_str()));
    assert_eq!(e.ns.as_deref(), Some("inbox~v2"));
    assert_eq!(e.shadow.as_deref(), Some(v1.as_str()));
    assert_eq!(e.shadow_ns.as_deref(), Some("inbox"));
    assert!(e.promoted);

    // Retired: nothing kept, and no promotion without a kept version.
    r.set_shadow("inbox", None, true).expect("retired");
    let e = entry(&r, "inbox");
    assert_eq!((e.shadow, e.shadow_ns, e.promoted), (None, None, false));
    // Views under the plugin's own name are not an other place.
    r.set_ns("inbox", "inbox").expect("ns");
    assert_eq!(entry(&r, "inbox").ns, None);
}

#[test]
fn a_removal_clears_the_kept_generation_and_a_dropped_one_its_views() {
    let dir = Scratch::new("removed");
    let (_store, r) = open(dir.path());
    let v1 = deploy(&r, "inbox", b"v1");
    let v2 = deploy(&r, "inbox", b"v2");
    r.set_ns("inbox", "inbox~v2").expect("ns");
    r.set_shadow("inbox", Some((&v1, "inbox")), true)
        .expect("shadow");

    // Removed, views kept: where they live is remembered.
    r.set_removed("inbox", true, false).expect("removed");
    let e = entry(&r, "inbox");
    assert!(e.removed);
    assert_eq!(e.ns.as_deref(), Some("inbox~v2"));
    assert_eq!((e.shadow, e.shadow_ns, e.promoted), (None, None, false));
    assert_eq!(e.active.as_deref(), Some(v2.as_str()));
    assert_eq!(e.versions.len(), 2);

    // Added back: no longer removed, the rest as it was.
    r.set_removed("inbox", false, false).expect("back");
    let e = entry(&r, "inbox");
    assert!(!e.removed);
    assert_eq!(e.ns.as_deref(), Some("inbox~v2"));

    // Removed with its views dropped: where they lived is forgotten.
    r.set_removed("inbox", true, true).expect("dropped");
    let e = entry(&r, "inbox");
    assert!(e.removed);
    assert_eq!(e.ns, None);
    assert_eq!(e.rollback, [v1]);
}

#[test]
fn a_runtime_rollback_is_noted_on_its_version_only() {
    let dir = Scratch::new("noted");
    let (_store, r) = open(dir.path());
    let v1 = deploy(&r, "inbox", b"v1");
    let v2 = deploy(&r, "inbox", b"v2");
    r.mark_rolled_back("inbox", &v2, "trapped 5 times in 100 events")
        .expect("mark");
    let e = entry(&r, "inbox");
    let of = |id: &str| e.versions.iter().find(|v| v.id == id).cloned();
    assert_eq!(
        of(&v2).and_then(|v| v.rolled_back).as_deref(),
        Some("trapped 5 times in 100 events")
    );
    assert_eq!(of(&v1).and_then(|v| v.rolled_back), None);
    // An id the plugin never had changes nothing.
    r.mark_rolled_back("inbox", &content_id(b"never"), "no")
        .expect("mark");
    assert_eq!(entry(&r, "inbox"), e);
}

#[test]
fn the_registry_outlives_reopening_the_store() {
    let dir = Scratch::new("reopen");
    let (v1, v2, kept) = {
        let (_store, r) = open(dir.path());
        let v1 = deploy(&r, "inbox", b"v1");
        let v2 = deploy(&r, "inbox", b"v2");
        r.set_shadow("inbox", Some((&v1, "inbox")), true)
            .expect("shadow");
        r.mark_rolled_back("inbox", &v1, "why").expect("mark");
        deploy(&r, "subscriptions", b"s1");
        (v1, v2, entry(&r, "inbox"))
    };
    let (_store, r) = open(dir.path());
    assert_eq!(entry(&r, "inbox"), kept);
    assert_eq!(kept.active.as_deref(), Some(v2.as_str()));
    assert_eq!(kept.rollback, std::slice::from_ref(&v1));
    assert_eq!(r.code(&v1).expect("code").as_deref(), Some(&b"v1"[..]));
    assert_eq!(r.names(), ["inbox", "subscriptions"]);
    // And a rollback after the restart still finds its version.
    assert_eq!(roll_back(&r, "inbox"), Some(v1));
}

#[test]
fn an_entry_that_does_not_decode_is_refused_naming_its_plugin() {
    let dir = Scratch::new("corrupt");
    let (store, r) = open(dir.path());
    for bad in [&b"not json"[..], &br#"{"versions": 7}"#[..], &b"[]"[..]] {
        store
            .set_setting("registry/inbox", Some(bad))
            .expect("write");
        match r.entry("inbox") {
            Err(Error::Corrupt { name, reason }) => {
                assert_eq!(name, "inbox");
                assert!(!reason.is_empty());
            }
            other => panic!("{:?} read as {other:?}", String::from_utf8_lossy(bad)),
        }
        // Nothing is recorded over it.
        assert!(matches!(
            r.add("inbox", b"v1", "api"),
            Err(Error::Corrupt { .. })
        ));
    }
    // The other plugins read on.
    deploy(&r, "other", b"v1");
    assert_eq!(entry(&r, "other").versions.len(), 1);
}

#[test]
fn an_entry_of_an_older_registry_reads_with_the_later_fields_unset() {
    let dir = Scratch::new("older");
    let (store, r) = open(dir.path());
    let (id, old) = (content_id(b"v1"), content_id(b"v0"));
    let older = format!(
        r#"{{"versions":[{{"id":"{id}","size":2,"deployed_ms":5,"from":"plugins_dir"}}],"active":"{id}","history":["{old}"]}}"#
    );
    store
        .set_setting("registry/inbox", Some(older.as_bytes()))
        .expect("write");
    let e = entry(&r, "inbox");
    assert_eq!(e.versions[0].rolled_back, None);
    assert_eq!(e.active.as_deref(), Some(id.as_str()));
    assert_eq!((e.ns, e.shadow, e.shadow_ns), (None, None, None));
    assert!(!e.promoted && !e.removed);
    // Its `history` was the rollback stack; it has no events yet.
    assert_eq!(e.rollback, [old]);
    assert!(e.history.is_empty());
}

fn acts(e: &Entry) -> Vec<(Action, &str, Option<&str>)> {
    e.history
        .iter()
        .map(|ev| (ev.action, ev.id.as_str(), ev.previous.as_deref()))
        .collect()
}

#[test]
fn the_history_lists_each_act_in_order_with_its_versions() {
    let dir = Scratch::new("events");
    let (_store, r) = open(dir.path());
    let before = projector_core::now_ms();
    // As the deployer does: deploy v1, shadow v2, promote, roll back.
    let v1 = deploy(&r, "inbox", b"v1");
    r.record("inbox", Action::Deploy, &v1, None, None)
        .expect("record");
    let v2 = r.add("inbox", b"v2", "api").expect("add").id;
    r.record("inbox", Action::Shadow, &v2, Some(&v1), None)
        .expect("record");
    r.activate("inbox", &v2, false).expect("activate");
    r.record("inbox", Action::Promote, &v2, Some(&v1), None)
        .expect("record");
    roll_back(&r, "inbox").expect("an earlier version");
    r.record("inbox", Action::Rollback, &v1, Some(&v2), None)
        .expect("record");
    // Rolling back emptied the stack; the history keeps every act.
    let e = entry(&r, "inbox");
    assert!(e.rollback.is_empty());
    assert_eq!(
        acts(&e),
        [
            (Action::Deploy, v1.as_str(), None),
            (Action::Shadow, v2.as_str(), Some(v1.as_str())),
            (Action::Promote, v2.as_str(), Some(v1.as_str())),
            (Action::Rollback, v1.as_str(), Some(v2.as_str())),
        ]
    );
    let after = projector_core::now_ms();
    assert!(e
        .history
        .iter()
        .all(|ev| (before..=after).contains(&ev.at_ms)));
    assert!(e.history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));

    // The runtime's own rollback and a removal are noted too, the
    // first with its reason.
    let v3 = deploy(&r, "inbox", b"v3");
    r.activate("inbox", &v1, true).expect("activate");
    r.mark_rolled_back("inbox", &v3, "trapped").expect("mark");
    r.set_removed("inbox", true, false).expect("removed");
    let e = entry(&r, "inbox");
    let last: Vec<_> = e.history[4..].to_vec();
    assert_eq!(
        acts(&e)[4..],
        [
            (Action::RuntimeRollback, v1.as_str(), Some(v3.as_str())),
            (Action::Remove, v1.as_str(), None),
        ]
    );
    assert_eq!(last[0].reason.as_deref(), Some("trapped"));
    assert_eq!(last[1].reason, None);
    // Stored as JSON with snake_case actions.
    let json = serde_json::to_value(&last[0]).expect("json");
    assert_eq!(json["action"], "runtime_rollback");
}

#[test]
fn the_history_keeps_the_last_acts_only() {
    let dir = Scratch::new("bounded");
    let (_store, r) = open(dir.path());
    let v1 = deploy(&r, "inbox", b"v1");
    for n in 0..HISTORY_LEN + 5 {
        let reason = n.to_string();
        r.record("inbox", Action::Replace, &v1, None, Some(&reason))
            .expect("record");
    }
    let e = entry(&r, "inbox");
    assert_eq!(e.history.len(), HISTORY_LEN);
    assert_eq!(e.history[0].reason.as_deref(), Some("5"));
    let last = e.history.last().and_then(|ev| ev.reason.as_deref());
    assert_eq!(last, Some((HISTORY_LEN + 4).to_string().as_str()));
}
