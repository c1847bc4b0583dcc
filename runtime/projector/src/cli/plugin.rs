//! `projector plugin ...`: deploys, shadows and versions of a running
//! runtime, through its admin API.

use super::PluginAction;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use projector::config::Config;
use std::process::ExitCode;

/// Call the admin API; the JSON answer, or its error message.
pub(crate) fn admin(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<serde_json::Value> {
    admin_with(method, url, body, "application/wasm")
}

/// Call the admin API with a body of `content_type`.
pub(crate) fn admin_with(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    content_type: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut request = ureq::request(method, url).timeout(std::time::Duration::from_secs(3600));
    if let Some(token) = ADMIN_TOKEN.get() {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(b) => request.set("content-type", content_type).send_bytes(b),
        None => request.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            let body = serde_json::from_str::<serde_json::Value>(&text).ok();
            let error = body.as_ref().and_then(|v| v["error"].as_str());
            let message = body
                .as_ref()
                .and_then(|v| v["message"].as_str())
                .unwrap_or(&text);
            return Err(Refused {
                url: url.to_string(),
                status: code,
                error: error.unwrap_or_default().to_string(),
                message: message.to_string(),
            }
            .into());
        }
        Err(e) => bail!("{url}: {e} (is `projector run` serving its API there?)"),
    };
    Ok(serde_json::from_reader(response.into_reader())?)
}

/// An error answer of the admin API: its status, error code and message.
#[derive(Debug)]
pub(crate) struct Refused {
    url: String,
    status: u16,
    error: String,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.url, self.status, self.message)
    }
}

impl std::error::Error for Refused {}

/// The admin token the commands send (`[http] admin_token` or
/// `PROJECTOR_ADMIN_TOKEN`), set by [`api_base`].
static ADMIN_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The admin token set by [`api_base`], if any.
pub(crate) fn admin_token() -> Option<&'static str> {
    ADMIN_TOKEN.get().map(String::as_str)
}

/// The admin API's base URL: `--api`, else `http.listen` of the config;
/// the calls that follow send the config's admin token.
pub(crate) fn api_base(config: &Config, api: Option<String>) -> String {
    if let Some(token) = &config.http.admin_token {
        let _ = ADMIN_TOKEN.set(token.clone());
    }
    let base = api.unwrap_or_else(|| format!("http://{}", config.http.listen));
    base.trim_end_matches('/').to_string()
}

/// Show a shadow build's progress until it follows live events (or
/// fails); its last status.
fn follow_shadow(base: &str, name: &str) -> anyhow::Result<serde_json::Value> {
    follow_build(base, name, "shadow", "building")
}

/// Show a generation's build (`what`: `shadow`, or `build` for a plugin
/// being added) until its phase is no longer `busy`; its last status. On
/// a terminal, a progress bar on stderr; otherwise a line on stderr every
/// few seconds.
fn follow_build(
    base: &str,
    name: &str,
    what: &str,
    busy: &str,
) -> anyhow::Result<serde_json::Value> {
    use std::io::IsTerminal;
    const LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    let bar = match std::io::stderr().is_terminal() {
        true => ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr()),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {name} [{{bar:40}}] {{pos}}/{{len}} records {{msg}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut printed: Option<std::time::Instant> = None;
    loop {
        let s = admin(
            "GET",
            &format!("{base}/v1/admin/plugins/{name}/{what}"),
            None,
        )?;
        let phase = s["phase"].as_str().unwrap_or_default();
        let line = progress_line(&s);
        bar.set_length(s["total"].as_u64().unwrap_or(0));
        bar.set_position(s["done"].as_u64().unwrap_or(0));
        bar.set_message(line.clone());
        if bar.is_hidden() && printed.is_none_or(|at| at.elapsed() >= LINE_EVERY) {
            printed = Some(std::time::Instant::now());
            eprintln!("{what} {name}: {phase}, {line}");
        }
        if phase.starts_with("failed") {
            bar.abandon();
            bail!("{what} of {name}: {phase}");
        }
        if phase != busy && phase != "building" {
            bar.finish();
            if bar.is_hidden() {
                eprintln!("{what} {name}: {phase}, {line}");
            }
            return Ok(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A build's progress as the server reports it: records done of total,
/// percent, rate and time left.
fn progress_line(s: &serde_json::Value) -> String {
    let eta = match s["eta_s"].as_f64() {
        Some(secs) => format!(
            ", eta {}",
            indicatif::HumanDuration(std::time::Duration::from_secs_f64(secs.max(0.0)))
        ),
        None => String::new(),
    };
    format!(
        "{} of {} records ({:.0}%), {:.0} records/s{eta}",
        s["done"].as_u64().unwrap_or(0),
        s["total"].as_u64().unwrap_or(0),
        s["percent"].as_f64().unwrap_or(0.0),
        s["events_per_s"].as_f64().unwrap_or(0.0),
    )
}

/// Run `action`; exit code 1 when a deploy would replace without
/// `--replace` (the refusal names both plugins), 0 when done.
pub(crate) fn run(
    config: &Config,
    action: PluginAction,
    api: Option<String>,
) -> anyhow::Result<ExitCode> {
    match act(config, action, api) {
        Err(e)
            if e.downcast_ref::<Refused>()
                .is_some_and(|r| r.error == "replace_required") =>
        {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
        done => done.map(|()| ExitCode::SUCCESS),
    }
}

fn act(config: &Config, action: PluginAction, api: Option<String>) -> anyhow::Result<()> {
    let base = api_base(config, api);
    let base = base.as_str();
    let answer = match action {
        PluginAction::Deploy {
            file,
            name,
            mode,
            method,
            replace,
            settings,
            promote,
        } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .context("--name: the file has no stem to name the plugin by")?,
            };
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let from: String = percent_encoding::utf8_percent_encode(
                &file.display().to_string(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .collect();
            let settings = deploy_settings(&settings)?;
            let promote = match promote {
                Some(projector_deploy::PromoteMode::Gated) => "&promote=gated",
                Some(projector_deploy::PromoteMode::Manual) => "&promote=manual",
                None => "",
            };
            let started = admin(
                "POST",
                &format!(
                    "{base}/v1/admin/plugins/{name}?from={from}&mode={mode}&method={method}&replace={replace}{settings}{promote}"
                ),
                Some(&bytes),
            )?;
            if mode == "shadow" {
                follow_shadow(base, &name)?
            } else if started["replaced"].is_null() && started["changed"] == true {
                // A new plugin: its views are built before it is live.
                follow_build(base, &name, "build", "joining")?
            } else {
                started
            }
        }
        PluginAction::Shadow { name } => admin(
            "GET",
            &format!("{base}/v1/admin/plugins/{name}/shadow"),
            None,
        )?,
        PluginAction::Compare { name, sample } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/compare?sample={sample}"),
            Some(&[]),
        )?,
        PluginAction::Promote { name, force } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/promote?force={force}"),
            Some(&[]),
        )?,
        PluginAction::Retire { name } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/retire"),
            Some(&[]),
        )?,
        PluginAction::Audit { name } => admin(
            "GET",
            &format!("{base}/v1/admin/plugins/{name}/audit"),
            None,
        )?,
        PluginAction::Remove { name, drop_views } => admin(
            "DELETE",
            &format!("{base}/v1/admin/plugins/{name}?drop_views={drop_views}"),
            None,
        )?,
        PluginAction::List => admin("GET", &format!("{base}/v1/admin/plugins"), None)?,
        PluginAction::Rollback { name } => admin(
            "POST",
            &format!("{base}/v1/admin/plugins/{name}/rollback"),
            Some(&[]),
        )?,
        PluginAction::Logs { name } => {
            let v = admin("GET", &format!("{base}/v1/admin/plugins/{name}/logs"), None)?;
            for line in v["lines"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// `--setting key=value`s as the deploy route's `&settings=` (a JSON
/// object, URL-encoded), or nothing when there are none. A value is JSON
/// when it parses as JSON, else a string.
fn deploy_settings(pairs: &[String]) -> anyhow::Result<String> {
    if pairs.is_empty() {
        return Ok(String::new());
    }
    let mut settings = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--setting {pair:?}: expected KEY=VALUE"))?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        settings.insert(key.to_string(), value);
    }
    let json = serde_json::Value::Object(settings).to_string();
    let encoded: String =
        percent_encoding::utf8_percent_encode(&json, percent_encoding::NON_ALPHANUMERIC).collect();
    Ok(format!("&settings={encoded}"))
}
