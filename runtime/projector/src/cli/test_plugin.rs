//! `projector test PLUGIN.wasm --events FILE --expect DIR`: a plugin run
//! under the real host and its limits over a temporary store, every view
//! rendered and compared with the golden file `DIR/<key>.json`. The events
//! go through twice, in two stores, to check that the plugin is
//! deterministic. `--update` writes the golden files instead. Exit code 1
//! on any difference, for CI. The differences and the summary go to
//! stdout; the log (the host's, the plugin's) to stderr.
//!
//! Dead letters are part of the golden set: `DIR/dead-letters.json` lists
//! those expected (line, key, stage, reason); any other dead letter fails
//! the test. An event line that does not decode always fails it, named by
//! its line number (from 1) and the decode error.

use anyhow::{bail, Context};
use projector::app::App;
pub(crate) use projector::args::TestArgs as Args;
use projector::config::Config;
use projector_sources::run;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Every view of one run: key → rendered answer (or its status when it
/// has none), and the dead letters with their errors.
struct Outcome {
    views: BTreeMap<String, Value>,
    dead_letters: Vec<(Letter, String)>,
    at_ms: i64,
}

/// The golden file of the expected dead letters, in the golden directory.
const DEAD_LETTERS: &str = "dead-letters.json";

/// A dead letter as the golden set expects it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Letter {
    /// Line of the events file, from 1.
    line: u64,
    /// The view key, where the failure belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// `decode`, `keys` or `apply`.
    stage: String,
    /// The short reason (`bad-input`, `trap`, ...).
    reason: String,
}

impl std::fmt::Display for Letter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: ", self.line)?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}: {}", self.stage, self.reason)
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = args
        .wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("the plugin file has no name")?;
    let settings: Value = match &args.settings {
        Some(text) => serde_json::from_str(text).context("--settings: expected a JSON object")?,
        None => Value::Object(Default::default()),
    };
    // The second run loads the code the first compiled.
    let compiled = tempfile::tempdir().context("a temporary compile cache")?;
    let first = once(&args, &name, &settings, compiled.path())?;
    // The second run only checks determinism: its log would repeat the first's.
    let quiet = tracing::subscriber::NoSubscriber::default();
    let second = tracing::subscriber::with_default(quiet, || {
        once(&args, &name, &settings, compiled.path())
    })?;
    let mut failed = false;
    if let Some(key) = first
        .views
        .keys()
        .chain(second.views.keys())
        .find(|k| first.views.get(*k) != second.views.get(*k))
    {
        println!("not deterministic: {key} differs between two runs of the same events");
        failed = true;
    }
    // A line that does not decode is a broken test input: never expected.
    let (undecoded, dead_letters): (Vec<_>, Vec<_>) = first
        .dead_letters
        .iter()
        .cloned()
        .partition(|(l, _)| l.stage == "decode");
    for (letter, error) in &undecoded {
        eprintln!("line {}: the event does not decode: {error}", letter.line);
        failed = true;
    }
    for (letter, error) in &dead_letters {
        eprintln!("dead letter: {letter}: {error}");
    }
    if args.update {
        let letters: Vec<Letter> = dead_letters.iter().map(|(l, _)| l.clone()).collect();
        write_golden(&args.expect, &first.views, &letters)?;
        eprintln!(
            "wrote {} files to {}: {} golden views (rendered at {} ms), {} dead letters{}",
            first.views.len() + usize::from(!letters.is_empty()),
            args.expect.display(),
            first.views.len(),
            first.at_ms,
            letters.len(),
            if letters.is_empty() {
                String::new()
            } else {
                format!(" ({DEAD_LETTERS})")
            }
        );
        return Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let golden = read_golden(&args.expect)?;
    let keys: std::collections::BTreeSet<&String> =
        golden.keys().chain(first.views.keys()).collect();
    let mut differences = 0;
    for key in keys {
        match (golden.get(key), first.views.get(key)) {
            (Some(want), Some(got)) if want != got => {
                for d in diff("", want, got) {
                    println!("{key}: {d}");
                }
                differences += 1;
            }
            (Some(_), None) => {
                println!("{key}: expected a view, there is none");
                differences += 1;
            }
            (None, Some(_)) => {
                println!(
                    "{key}: a view with no golden file ({}); --update writes it",
                    file_of(&args.expect, key).display()
                );
                differences += 1;
            }
            _ => {}
        }
    }
    // Each key was counted from both sides when it is in both.
    let keys: std::collections::BTreeSet<&String> =
        golden.keys().chain(first.views.keys()).collect();
    let unexpected = check_dead_letters(&args.expect, &dead_letters)?;
    println!(
        "{} views, {} golden, {} differ, {} dead letters ({} not expected), {} lines that do not decode",
        first.views.len(),
        golden.len(),
        differences.min(keys.len()),
        dead_letters.len(),
        unexpected,
        undecoded.len()
    );
    Ok(if failed || differences > 0 || unexpected > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Run the events through the plugin in a store of its own.
fn once(
    args: &Args,
    name: &str,
    settings: &Value,
    compiled: &std::path::Path,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir().context("a temporary store")?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(&args.wasm, plugins.join(format!("{name}.wasm")))
        .with_context(|| format!("reading {}", args.wasm.display()))?;
    let mut plugin = toml::Table::new();
    plugin.insert("population".into(), args.population.clone().into());
    plugin.insert(
        "settings".into(),
        toml::Value::try_from(settings).context("--settings: not representable in the config")?,
    );
    let mut doc = toml::Table::new();
    doc.insert("data_dir".into(), "data".into());
    doc.insert("plugins_dir".into(), "plugins".into());
    let mut engine = toml::Table::new();
    engine.insert("watch_plugins".into(), false.into());
    engine.insert("commit_interval_ms".into(), 0.into());
    engine.insert(
        "compile_cache_dir".into(),
        compiled.display().to_string().into(),
    );
    doc.insert("engine".into(), engine.into());
    let mut http = toml::Table::new();
    http.insert("listen".into(), "off".into());
    doc.insert("http".into(), http.into());
    // A test reports every failure at once, as a dead letter: no delayed
    // retry to wait for, no breaker pausing the plugin until a service
    // it has no access to here comes back.
    let mut retry = toml::Table::new();
    retry.insert("attempts".into(), 0.into());
    doc.insert("retry".into(), retry.into());
    let mut breaker = toml::Table::new();
    breaker.insert("min_failures".into(), 0.into());
    doc.insert("breaker".into(), breaker.into());
    let mut table = toml::Table::new();
    table.insert(name.into(), plugin.into());
    doc.insert("plugins".into(), table.into());
    let config = Config::parse(&toml::to_string(&doc)?, "projector test", dir.path())?;
    let app = App::open(config)?;
    run::replay_file(&app.engine, &args.events, 4096, |_| {})
        .with_context(|| format!("replaying {}", args.events.display()))?;
    app.engine.commit()?;
    let p = app.engine.projection(name)?;
    let records: Vec<(String, projector_core::store::ViewRecord)> =
        app.engine.store().views(p.ns()).collect::<Result<_, _>>()?;
    // Render at the time of the last event unless told: a golden file
    // must not depend on when the test runs.
    let at_ms = args
        .at_ms
        .unwrap_or_else(|| records.iter().map(|(_, r)| r.updated_ms).max().unwrap_or(0));
    let mut views = BTreeMap::new();
    for (key, _) in records {
        let value = match app.engine.read(name, &key, at_ms)? {
            Some(v) => match v.json() {
                Some(body) => body,
                None => serde_json::json!({"status": format!("{:?}", v.status).to_lowercase()}),
            },
            None => continue,
        };
        views.insert(key, value);
    }
    let mut dead_letters = app
        .engine
        .store()
        .dead_letters()
        .filter_map(Result::ok)
        .map(|d| {
            let letter = Letter {
                line: d.offset + 1,
                key: d.key,
                stage: d.stage,
                reason: d.reason,
            };
            (letter, d.error)
        })
        .collect::<Vec<_>>();
    dead_letters.sort();
    Ok(Outcome {
        views,
        dead_letters,
        at_ms,
    })
}

/// Compare the run's dead letters with those the golden set expects;
/// report each one unexpected or missing, and count them.
fn check_dead_letters(dir: &Path, letters: &[(Letter, String)]) -> anyhow::Result<usize> {
    let path = dir.join(DEAD_LETTERS);
    let mut expected: Vec<Letter> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a list of {{line, key, stage, reason}}",
                path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut wrong = 0;
    for (letter, error) in letters {
        match expected.iter().position(|e| e == letter) {
            Some(i) => {
                expected.swap_remove(i);
            }
            None => {
                eprintln!("{letter}: an unexpected dead letter: {error} ({DEAD_LETTERS} lists those expected; --update writes it)");
                wrong += 1;
            }
        }
    }
    for letter in expected {
        eprintln!("{letter}: expected a dead letter, there is none");
        wrong += 1;
    }
    Ok(wrong)
}

/// The golden file of `key`: `/` and `%` are percent-encoded, and so is
/// the `-` of a key named like the dead letters' file.
fn file_of(dir: &Path, key: &str) -> PathBuf {
    let mut safe = key.replace('%', "%25").replace('/', "%2F");
    if format!("{safe}.json") == DEAD_LETTERS {
        safe = safe.replace('-', "%2D");
    }
    dir.join(format!("{safe}.json"))
}

fn key_of(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    if name == DEAD_LETTERS {
        return None;
    }
    let stem = name.strip_suffix(".json")?;
    Some(
        stem.replace("%2F", "/")
            .replace("%2D", "-")
            .replace("%25", "%"),
    )
}

fn read_golden(dir: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading {} (--update writes it)", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(key) = key_of(&path) else { continue };
        let text = std::fs::read_to_string(&path)?;
        let value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        out.insert(key, value);
    }
    Ok(out)
}

fn write_golden(
    dir: &Path,
    views: &BTreeMap<String, Value>,
    letters: &[Letter],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(DEAD_LETTERS);
    if letters.is_empty() {
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
    } else {
        let mut sorted = letters.to_vec();
        sorted.sort();
        let mut text = serde_json::to_string_pretty(&sorted)?;
        text.push('\n');
        std::fs::write(&path, text)?;
    }
    for (key, _) in read_golden(dir).unwrap_or_default() {
        if !views.contains_key(&key) {
            std::fs::remove_file(file_of(dir, &key))?;
        }
    }
    for (key, value) in views {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        std::fs::write(file_of(dir, key), text)?;
    }
    Ok(())
}

/// Where `want` and `got` differ, as `path: expected X, got Y` lines.
fn diff(path: &str, want: &Value, got: &Value) -> Vec<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let p = format!("{path}/{k}");
                    match (a.get(k), b.get(k)) {
                        (Some(x), Some(y)) => diff(&p, x, y),
                        (Some(x), None) => vec![format!("{p}: expected {x}, missing")],
                        (None, Some(y)) => vec![format!("{p}: unexpected {y}")],
                        (None, None) => vec![],
                    }
                })
                .collect()
        }
        (Value::Array(a), Value::Array(b)) => {
            let mut out: Vec<String> = a
                .iter()
                .zip(b)
                .enumerate()
                .flat_map(|(i, (x, y))| diff(&format!("{path}/{i}"), x, y))
                .collect();
            if a.len() != b.len() {
                out.push(format!(
                    "{path}: expected {} items, got {}",
                    a.len(),
                    b.len()
                ));
            }
            out
        }
        _ if want == got => vec![],
        _ => vec![format!(
            "{}: expected {want}, got {got}",
            if path.is_empty() { "/" } else { path }
        )],
    }
}

/// Refuse a golden directory that is a file.
pub(crate) fn check(args: &Args) -> anyhow::Result<()> {
    if args.expect.is_file() {
        bail!("--expect {}: expected a directory", args.expect.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_field_that_differs() {
        let want = json!({"count": 2, "conversations": [{"id": "c1"}, {"id": "c2"}]});
        let got = json!({"count": 3, "conversations": [{"id": "c1"}], "extra": true});
        assert_eq!(
            diff("", &want, &got),
            [
                "/conversations: expected 2 items, got 1",
                "/count: expected 2, got 3",
                "/extra: unexpected true",
            ]
        );
        assert!(diff("", &want, &want).is_empty());
    }

    #[test]
    fn keys_round_trip_through_file_names() {
        for key in ["u1:s1", "a/b", "50%/x", "dead-letters", "dead%2D"] {
            let f = file_of(Path::new("g"), key);
            assert_eq!(key_of(&f).as_deref(), Some(key), "{}", f.display());
        }
    }
}
