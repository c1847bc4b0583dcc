//! `projector new NAME [--lang rust|ts]`: a plugin project to start from.
//! A Cargo crate (or an npm package in TypeScript) with a plugin that
//! counts each key's events, sample events, golden views that `projector
//! test` passes out of the box, a native test (Rust), and a README that
//! says how to build, test, deploy in shadow mode and promote. Both are
//! pinned to what the SDK was tested with: its `Cargo.lock`, or its npm
//! packages' versions (TypeScript's too).

use anyhow::{bail, Context};
use projector::args::Lang;
pub(crate) use projector::args::NewArgs as Args;
use serde_json::{json, Value};
use std::path::{Component, Path, PathBuf};

/// The SDK beside this build of projector (a checkout), if there is one.
fn sdk_here() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk");
    sdk.join("Cargo.toml")
        .exists()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    let ok = !args.name.is_empty()
        && args.name.len() <= 64
        && args.name.starts_with(|c: char| c.is_ascii_lowercase())
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "{:?}: a plugin's name is 1 to 64 lower-case letters, digits and '-', starting with a letter",
            args.name
        );
    }
    let sdk = match args.sdk.or_else(sdk_here) {
        Some(sdk) => sdk
            .canonicalize()
            .with_context(|| format!("--sdk {}", sdk.display()))?,
        None => {
            bail!("where is the plugin SDK (guest-sdk/ of a projector checkout)? Pass --sdk PATH")
        }
    };
    if args.lang == Lang::Ts && !sdk.join("js/package.json").exists() {
        bail!(
            "{}: no TypeScript SDK (js/) in it; pass --sdk PATH to a projector checkout's guest-sdk",
            sdk.display()
        );
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{}: not empty; choose another --dir", dir.display());
    }
    let krate = args.name.replace('-', "_");
    let ty: String = args
        .name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    // The TypeScript compiler the SDK's build type-checks with.
    let typescript = match args.lang {
        Lang::Rust => String::new(),
        Lang::Ts => read_json(&sdk.join("js/package.json"))?["dependencies"]["typescript"]
            .as_str()
            .context("the SDK's js/package.json names no typescript version")?
            .to_owned(),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{typescript}}", &typescript)
            .replace("{{crate}}", &krate)
            .replace("{{type}}", &ty)
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    // What the sample events make: a counts 3, b 2, c 1.
    let golden = [
        ("golden/a.json", "{\n  \"count\": 3\n}\n"),
        ("golden/b.json", "{\n  \"count\": 2\n}\n"),
        ("golden/c.json", "{\n  \"count\": 1\n}\n"),
        ("events.ndjson", include_str!("new/events.ndjson.tmpl")),
    ];
    let files: Vec<(&str, &str)> = match args.lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("new/Cargo.toml.tmpl")),
            ("src/lib.rs", include_str!("new/lib.rs.tmpl")),
            ("tests/harness.rs", include_str!("new/harness.rs.tmpl")),
            ("README.md", include_str!("new/README.md.tmpl")),
            (".gitignore", "/target\n"),
        ],
        Lang::Ts => vec![
            ("package.json", include_str!("new/ts-package.json.tmpl")),
            ("tsconfig.json", include_str!("new/ts-tsconfig.json.tmpl")),
            ("src/index.ts", include_str!("new/ts-index.ts.tmpl")),
            ("README.md", include_str!("new/ts-README.md.tmpl")),
            (".gitignore", "/node_modules\n/dist\n"),
        ],
    };
    let files = files.into_iter().chain(golden);
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, fill(text)).with_context(|| format!("writing {}", path.display()))?;
    }
    let next = match args.lang {
        Lang::Rust => {
            // The SDK's own lock file pins what it was tested with.
            let lock = sdk.join("../Cargo.lock");
            if lock.exists() {
                std::fs::copy(&lock, dir.join("Cargo.lock"))?;
            }
            "cargo build --target wasm32-wasip2 --profile plugin, then projector test"
        }
        Lang::Ts => {
            if let Some(lock) = npm_lock(&sdk, &dir, &args.name, &typescript)? {
                std::fs::write(dir.join("package-lock.json"), lock)?;
            }
            "npm install, npm run build, then projector test"
        }
    };
    eprintln!(
        "made {} in {}: see its README ({next})",
        args.name,
        dir.display()
    );
    Ok(())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

/// The project's `package-lock.json`, as `npm install` writes it: the SDK
/// linked, and TypeScript with the integrity the SDK's own lock file pins.
/// None when the SDK has no lock file beside it (then `npm install` writes one).
fn npm_lock(
    sdk: &Path,
    dir: &Path,
    name: &str,
    typescript: &str,
) -> anyhow::Result<Option<String>> {
    let root_lock = sdk.join("../package-lock.json");
    if !root_lock.exists() {
        return Ok(None);
    }
    let pinned = &read_json(&root_lock)?["packages"]["node_modules/typescript"];
    if pinned["version"] != typescript {
        return Ok(None);
    }
    let mut pinned = pinned.clone();
    pinned["dev"] = json!(true);
    let js = read_json(&sdk.join("js/package.json"))?;
    let mut linked = json!({});
    for field in ["name", "version", "license", "dependencies", "bin"] {
        if !js[field].is_null() {
            linked[field] = js[field].clone();
        }
    }
    let link = relative(&dir.canonicalize()?, &sdk.join("js"))
        .to_string_lossy()
        .into_owned();
    let lock = json!({
        "name": name,
        "version": "0.1.0",
        "lockfileVersion": 3,
        "requires": true,
        "packages": {
            "": {
                "name": name,
                "version": "0.1.0",
                "dependencies": { "@projector/guest": format!("file:{}/js", sdk.display()) },
                "devDependencies": { "typescript": typescript },
            },
            link.clone(): linked,
            "node_modules/@projector/guest": { "resolved": link, "link": true },
            "node_modules/typescript": pinned,
        },
    });
    Ok(Some(serde_json::to_string_pretty(&lock)? + "\n"))
}

/// `to` as a path relative to `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let up = std::iter::repeat_n(Component::ParentDir, from.len() - common);
    up.chain(to[common..].iter().copied()).collect()
}
