//! `projector build [--dir DIR]`: a plugin project built into its
//! component with the right target and profile, whatever its language: a
//! Cargo crate (`Cargo.toml`) with `cargo build --target wasm32-wasip2
//! --profile plugin`, an npm package (`package.json`) with `npm run
//! build`. The build's own output goes to stderr; the component's path is
//! the one line on stdout.

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn run(dir: &Path) -> anyhow::Result<()> {
    let wasm = if dir.join("Cargo.toml").exists() {
        rust(dir)?
    } else if dir.join("package.json").exists() {
        npm(dir)?
    } else {
        bail!(
            "{}: no Cargo.toml or package.json, so no plugin project; pass --dir to point at one",
            dir.display()
        );
    };
    if !wasm.exists() {
        bail!(
            "the build said it succeeded, but {} is missing",
            wasm.display()
        );
    }
    println!("{}", wasm.display());
    Ok(())
}

/// Run `program args` in `dir`, its output on stderr; an error unless it succeeds.
fn build(dir: &Path, program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("{program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    build(
        dir,
        &cargo,
        &["build", "--target", "wasm32-wasip2", "--profile", "plugin"],
    )?;
    // Where cargo put it: the crate's cdylib, under its target directory.
    let out = Command::new(&cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .context("cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    }
    let metadata: Value = serde_json::from_slice(&out.stdout).context("cargo metadata")?;
    let manifest = dir.join("Cargo.toml").canonicalize()?;
    let lib = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .find(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .and_then(|t| t["name"].as_str())
        .with_context(|| format!("{}: no cdylib crate, so no component", manifest.display()))?;
    let target = metadata["target_directory"]
        .as_str()
        .context("cargo metadata: no target directory")?;
    Ok(Path::new(target)
        .join("wasm32-wasip2/plugin")
        .join(format!("{}.wasm", lib.replace('-', "_"))))
}

fn npm(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(dir.join("package.json"))?;
    let package: Value = serde_json::from_str(&text).context("package.json: not JSON")?;
    let script = package["scripts"]["build"]
        .as_str()
        .context("package.json has no build script")?;
    build(dir, "npm", &["run", "--silent", "build"])?;
    // `projector-js-build ENTRY OUT`: the component is its last argument.
    match script.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["projector-js-build", _, out] if dir == Path::new(".") => Ok(PathBuf::from(out)),
        ["projector-js-build", _, out] => Ok(dir.join(out)),
        _ => bail!("the build script is not `projector-js-build ENTRY OUT.wasm`, so where it wrote the component is unknown: {script}"),
    }
}
