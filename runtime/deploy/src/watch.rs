//! The plugins directory's watcher: a `<plugin>.wasm` that appears or
//! changes there is deployed in replace mode once it stops changing (a
//! new name adds a plugin), when it is a version of the plugin running
//! under that name: another plugin's component put over a running one is
//! refused with a warning. A file that leaves does not remove its plugin.

use crate::deployer::Consent;
use crate::Deployer;
use projector_common::shutdown::Shutdown;
use std::sync::Arc;

/// How long a file must stay unchanged before it is deployed: a copy in
/// progress keeps changing it.
const QUIET: std::time::Duration = std::time::Duration::from_millis(300);

/// Watch `dir` and deploy (replace mode) each `<plugin>.wasm` that
/// appears or changes, once it has stopped changing: a new version of a
/// loaded plugin, or a new plugin. Write a
/// new version elsewhere and rename it into place for an atomic swap; a
/// file still being written is not deployed, and one that does not
/// compile is rejected with a warning while the running version goes on.
/// Hidden files (`.name`) are ignored. Runs until `stop` is set.
pub fn watch_dir(
    deployer: Arc<Deployer>,
    dir: &std::path::Path,
    stop: Shutdown,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use notify::Watcher;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    let dir = dir.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("plugin-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            let mut pending: std::collections::HashMap<std::path::PathBuf, std::time::Instant> =
                Default::default();
            while !stop.is_stopped() {
                if let Ok(path) = rx.recv_timeout(std::time::Duration::from_millis(50)) {
                    let wanted = path.extension().is_some_and(|x| x == "wasm")
                        && path.parent() == Some(dir.as_path())
                        && !path
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                    if wanted {
                        pending.insert(path, std::time::Instant::now());
                    }
                    continue;
                }
                let quiet: Vec<_> = pending
                    .iter()
                    .filter(|(_, at)| at.elapsed() >= QUIET)
                    .map(|(p, _)| p.clone())
                    .collect();
                for path in quiet {
                    pending.remove(&path);
                    deploy_file(&deployer, &path);
                }
            }
        })?;
    Ok(handle)
}

fn deploy_file(deployer: &Arc<Deployer>, path: &std::path::Path) {
    let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        return;
    };
    let Ok(bytes) = std::fs::read(path) else {
        // Removed, or renamed away.
        if !path.exists() && deployer.engine.projection(&name).is_ok() {
            tracing::info!(
                plugin = name,
                "{} left the plugins directory; the plugin stays loaded (`projector plugin remove {name}` takes it out)",
                path.display()
            );
        }
        return;
    };
    let new = deployer.engine.projection(&name).is_err();
    // A file carries no settings: a version runs with those it was last
    // deployed with, as at start (the running one is not reconfigured).
    let settings = match deployer.registry.entry(&name) {
        Ok(entry) => entry.and_then(|e| e.settings_of(&crate::content_id(&bytes)).cloned()),
        Err(e) => {
            tracing::warn!(plugin = name, "{}: {e}", path.display());
            return;
        }
    };
    // A file put under a name in the plugins directory is the operator's
    // say-so for a new version of the plugin running there (the same own
    // name), or for a new plugin under that name, as at start; another
    // plugin's component put over a running one is refused (the deploy
    // CLI's --replace does that on purpose).
    let from = path.display().to_string();
    match deployer.deploy_as(&name, &bytes, &from, Consent::SamePlugin, settings.as_ref()) {
        Ok(d) if d.changed && new => tracing::info!(
            plugin = name,
            id = &d.id[..12],
            "{}: a new plugin; its views are being built",
            path.display()
        ),
        Ok(d) if d.changed => tracing::info!(
            plugin = name,
            id = &d.id[..12],
            "deployed from the plugins directory"
        ),
        Ok(_) => {}
        Err(crate::Error::ReplaceRequired(refusal)) => tracing::warn!(
            plugin = name,
            "{}: not deployed: {refusal}; to replace it on purpose: projector plugin deploy {} --name {name} --replace",
            path.display(),
            path.display()
        ),
        Err(e) => tracing::warn!(
            plugin = name,
            "{}: {e}; the running version goes on",
            path.display()
        ),
    }
}
