//! The operator console in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `./scripts/test.sh` installs), driving a
//! running `projector run`: refused without the token; signed in, it
//! shows the plugins with the numbers `/metrics` shows and charts with
//! axes, deploys a v2 in shadow mode, watches it reach `following`,
//! compares (a mismatch side by side), promotes and rolls back; looks a
//! view up by key; and sends the dead letters of a broken version back
//! through the serving one. Screenshots go to
//! `target/console-screenshots/` for review.

use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use projector_tests::hostile::event;
use projector_tests::{plugin_wasm, plugins_dir, root, InboxShape, Projector};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "console-test-token";
const WAIT: Duration = Duration::from_secs(60);

/// `chromedriver` on a free loopback port, killed on drop.
struct Driver {
    _child: Killed,
    url: String,
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn driver() -> Option<Driver> {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(chromedriver) = chromedriver else {
        assert!(
            std::env::var_os("PROJECTOR_SKIP_BROWSER").is_some(),
            "chromedriver is missing: install Debian's chromium and chromium-driver \
             (./scripts/test.sh does), or set PROJECTOR_SKIP_BROWSER=1 to skip this test"
        );
        eprintln!("PROJECTOR_SKIP_BROWSER is set and chromedriver is missing: skipped");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver {
        _child: Killed(child),
        url,
    })
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            // Only loopback is reachable here: no background networking.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

async fn screenshot(c: &Client, name: &str) {
    let dir = root().join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

async fn wait_for(c: &Client, css: &str) -> Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css} never appeared: {e}"))
}

/// Act on the element at `css`, finding it again when the console
/// re-rendered it between the find and the act (a stale reference).
async fn on_element<F, Fut>(c: &Client, css: &str, act: F)
where
    F: Fn(Element) -> Fut,
    Fut: std::future::Future<Output = Result<(), CmdError>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match act(wait_for(c, css).await).await {
            Ok(()) => return,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {}
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

async fn click(c: &Client, css: &str) {
    on_element(c, css, |e| async move { e.click().await }).await;
}

/// Type `text` into the field at `css`.
async fn type_into(c: &Client, css: &str, text: &str) {
    on_element(c, css, |e| async move { e.send_keys(text).await }).await;
}

/// Click an action, then its confirmation.
async fn confirmed(c: &Client, css: &str) {
    click(c, css).await;
    click(c, "#confirm-yes").await;
}

/// Wait until `check` gives `Some`, polling the page.
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text(c: &Client, css: &str) -> Option<String> {
    let e = c.find(Locator::Css(css)).await.ok()?;
    e.text().await.ok()
}

/// A number as the console writes it (`12,345`).
fn number(shown: &str) -> Option<u64> {
    shown.replace(',', "").trim().parse().ok()
}

/// `name{labels} value` from `/metrics`.
fn metric(text: &str, name: &str, labels: &str) -> Option<u64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// The dead letters `query` selects (`plugin=...&version=...`).
    async fn dead_letters(&self, query: &str) -> Vec<Value> {
        let path = format!("/v1/admin/dead-letters?{query}&limit=1000");
        let (status, body) = self.admin(reqwest::Method::GET, &path, Some(TOKEN)).await;
        assert_eq!(status, 200, "{path}: {body}");
        body["dead_letters"].as_array().cloned().unwrap_or_default()
    }

    /// The view `plugin` stores under `key`, as the admin API answers it.
    async fn stored(&self, plugin: &str, key: &str) -> Option<Value> {
        let path = format!("/v1/admin/plugins/{plugin}/views/{key}");
        let (status, body) = self.admin(reqwest::Method::GET, &path, Some(TOKEN)).await;
        (status == 200).then_some(body)
    }

    async fn serving(&self, plugin: &str) -> String {
        let (_, list) = self.admin(reqwest::Method::GET, "/v1/plugins", None).await;
        list["plugins"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["plugin"] == plugin))
            .and_then(|p| p["id"].as_str())
            .expect("plugin listed")
            .to_string()
    }
}

#[test]
fn the_console_signs_in_shows_the_numbers_deploys_looks_up_views_and_redrives_dead_letters() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = plugins_dir(dir.path(), &["inbox-unread", "subscriptions", "hostile"]);
    let config = dir.path().join("projector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nplugins_dir = {:?}\n[log]\npartitions = 4\n\
             [engine]\ncommit_interval_ms = 50\n[http]\nadmin_token = {TOKEN:?}\n\
             [deploy]\nprobation_events = 20\n\
             [plugins.inbox-unread]\npopulation = \"eager\"\n\
             history = {{ versions = 50, ms = 604800000 }}\n",
            dir.path().join("data"),
            plugins
        ),
    )
    .expect("config");
    // Killed however the test ends, a failed assertion included.
    let run = Projector::run(&config);
    let base = run.base.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let profile = dir.path().join("chromium");
    let outcome = runtime.block_on(async {
        let api = Api {
            base: base.clone(),
            http: reqwest::Client::new(),
        };
        // Traffic for both kinds of plugin: inbox events and counted keys.
        let mut events = projector_tests::inbox_events(InboxShape {
            sites: 20,
            users: 200,
            events: 3_000,
            seed: 3,
        });
        events.extend((0..2_000).map(event));
        for chunk in events.chunks(500) {
            let r = api
                .http
                .post(format!("{base}/v1/events"))
                .body(chunk.join("\n"))
                .send()
                .await
                .expect("ingest");
            assert!(r.status().is_success(), "ingest: {}", r.status());
        }
        let c = browser(&driver, &profile).await;
        let result = flow(&c, &api, &base).await;
        let _ = c.close().await;
        result
    });
    outcome.expect("the console flow");
}

async fn flow(c: &Client, api: &Api, base: &str) -> Result<(), String> {
    // Without the token: the sign-in form, a wrong token refused, and the
    // page's own calls refused too.
    c.goto(&format!("{base}/console"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(c, "#token").await;
    screenshot(c, "1-sign-in").await;
    type_into(c, "#token", "wrong").await;
    click(c, "#sign-in").await;
    let refused = wait_for(c, "#login-error")
        .await
        .text()
        .await
        .unwrap_or_default();
    assert!(refused.contains("not the admin token"), "{refused}");
    c.goto(&format!("{base}/console#/plugin/hostile"))
        .await
        .map_err(|e| e.to_string())?;
    wait_for(c, "#token").await;
    assert!(
        c.find(Locator::Css("#deploy-go")).await.is_err(),
        "no deploy form before sign-in"
    );
    let status = c
        .execute(
            "return fetch('/v1/admin/plugins/hostile/rollback', {method: 'POST'}).then(r => r.status)",
            vec![],
        )
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(status, json!(401), "an action without the token");

    // Signed in: every plugin, with the numbers /metrics has.
    let field = wait_for(c, "#token").await;
    field.clear().await.map_err(|e| e.to_string())?;
    field.send_keys(TOKEN).await.map_err(|e| e.to_string())?;
    click(c, "#sign-in").await;
    c.goto(&format!("{base}/console#/"))
        .await
        .map_err(|e| e.to_string())?;
    for plugin in ["inbox-unread", "subscriptions", "hostile"] {
        wait_for(c, &format!("tr[data-plugin='{plugin}']")).await;
    }
    for plugin in ["inbox-unread", "hostile"] {
        until(
            &format!("{plugin}'s applied count to match /metrics"),
            async || {
                let metrics = api
                    .http
                    .get(format!("{base}/metrics"))
                    .send()
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                let want = metric(
                    &metrics,
                    "projector_events_total",
                    &format!("plugin=\"{plugin}\",outcome=\"applied\""),
                )?;
                let shown = text(
                    c,
                    &format!("tr[data-plugin='{plugin}'] [data-metric='applied']"),
                )
                .await?;
                (want > 0 && number(&shown) == Some(want)).then_some(())
            },
        )
        .await;
    }
    // The charts have a few samples to draw.
    tokio::time::sleep(Duration::from_secs(3)).await;
    screenshot(c, "2-overview").await;

    // A v2 in shadow mode, rebuilt from the log, to `following`.
    let v1 = api.serving("hostile").await;
    click(c, "tr[data-plugin='hostile'] a").await;
    wait_for(c, "#plugin-name").await;
    charts_have_axes(c).await?;
    let v2 = plugin_wasm("hostile-v2");
    type_into(c, "#wasm-file", &v2.display().to_string()).await;
    wait_for(c, "#deploy-method")
        .await
        .select_by_value("rebuild")
        .await
        .map_err(|e| e.to_string())?;
    confirmed(c, "#deploy-go").await;
    wait_for(c, "[data-shadow-phase='following']").await;
    screenshot(c, "3-shadow-following").await;

    // Compared: v2 renders another build, so every key differs, shown side by side.
    click(c, "#compare").await;
    let mismatched = until("a comparison", async || {
        number(&text(c, "#comparison [data-metric='mismatched']").await?)
    })
    .await;
    assert!(mismatched > 0, "the two versions render differently");
    // Each side is named by its role and version.
    let sides = (
        text(c, "#comparison [data-compare='serving']").await,
        text(c, "#comparison [data-compare='other']").await,
    );
    assert!(
        sides
            .0
            .as_deref()
            .is_some_and(|s| s.contains("serving") && s.contains(&v1[..12]))
            && sides.1.as_deref().is_some_and(|s| s.starts_with("shadow")),
        "{sides:?}"
    );
    let left = text(c, "[data-side-by-side] [data-side='left'] .del").await;
    let right = text(c, "[data-side-by-side] [data-side='right'] .add").await;
    assert!(
        left.as_deref().is_some_and(|l| l.contains("\"1\""))
            && right.as_deref().is_some_and(|r| r.contains("\"2\"")),
        "the differing lines marked on each side: {left:?} / {right:?}"
    );
    screenshot(c, "4-comparison").await;

    // Promoted, then rolled back, each after a confirmation.
    assert_eq!(
        api.serving("hostile").await,
        v1,
        "v1 serves until the promotion"
    );
    confirmed(c, "#promote").await;
    until("v2 to serve", async || {
        let now = api.serving("hostile").await;
        (now != v1).then_some(())
    })
    .await;
    wait_for(c, "[role='status']").await;
    // The version replaced is kept for a rollback, not a shadow.
    let kept = until("the kept version to show", async || {
        text(c, "#shadow [data-kept]").await
    })
    .await;
    assert!(
        kept.to_lowercase().contains("kept for rollback") && kept.contains(&v1[..12]),
        "{kept}"
    );
    screenshot(c, "5-promoted").await;
    confirmed(c, "#rollback").await;
    until("v1 to serve again", async || {
        (api.serving("hostile").await == v1).then_some(())
    })
    .await;
    click(c, "#tab-versions").await;
    wait_for(c, "#versions table").await;
    screenshot(c, "6-versions").await;

    // The rollout editor saves rules the API then serves.
    click(c, "#tab-rollout").await;
    let editor = wait_for(c, "#rollout-text").await;
    until("the rollout rules to load", async || {
        let shown = editor.prop("value").await.ok()??;
        shown.contains("default").then_some(())
    })
    .await;
    editor.clear().await.map_err(|e| e.to_string())?;
    editor
        .send_keys(r#"{"default": "projection", "rules": [{"name": "beta", "users": ["ann"], "mode": "projection"}]}"#)
        .await
        .map_err(|e| e.to_string())?;
    confirmed(c, "#rollout-save").await;
    screenshot(c, "7-rollout").await;
    let (_, rollout) = until("the rollout to be saved", async || {
        let (status, r) = api
            .admin(
                reqwest::Method::GET,
                "/v1/admin/rollout/hostile",
                Some(TOKEN),
            )
            .await;
        (r["from"] == "runtime").then_some((status, r))
    })
    .await;
    assert_eq!(rollout["rollout"]["default"], "projection", "{rollout}");
    assert_eq!(rollout["rollout"]["rules"][0]["name"], "beta", "{rollout}");
    // The other tabs answer without an error.
    for (tab, shown) in [("logs", "main"), ("dead", "main"), ("mismatches", "main")] {
        click(c, &format!("#tab-{tab}")).await;
        wait_for(c, shown).await;
        assert!(
            c.find(Locator::Css("main .error")).await.is_err(),
            "the {tab} tab shows an error"
        );
    }

    look_up_a_view(c, api, base).await?;
    redrive_dead_letters(c, api, base).await?;

    // Signed out, the console asks for the token again.
    click(c, "#sign-out").await;
    wait_for(c, "#token").await;
    let (status, _) = api
        .admin(reqwest::Method::GET, "/v1/admin/overview", Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    Ok(())
}

/// The plugin page's charts: a y axis with its unit, a time axis, and the
/// range the operator picks.
async fn charts_have_axes(c: &Client) -> Result<(), String> {
    let y = until("the events/s chart's y axis", async || {
        text(c, ".chart [data-axis='y']").await
    })
    .await;
    assert!(y.contains("events/s"), "the y axis names its unit: {y:?}");
    let time = text(c, ".chart [data-axis='time']")
        .await
        .unwrap_or_default();
    assert!(
        time.contains("5 min") && time.contains("now"),
        "the time axis: {time:?}"
    );
    wait_for(c, "#chart-range")
        .await
        .select_by_value("900")
        .await
        .map_err(|e| e.to_string())?;
    until("the 15-minute range", async || {
        let time = text(c, ".chart [data-axis='time']").await?;
        time.contains("15 min").then_some(())
    })
    .await;
    Ok(())
}

/// The lookup page shows the view the API stores under a key, and says
/// plainly when there is none.
async fn look_up_a_view(c: &Client, api: &Api, base: &str) -> Result<(), String> {
    // A key with a view: a site's owner, as the test's inbox events make them.
    let mut found = None;
    for site in 0..20 {
        let key = format!("u{site}:s{site}");
        if let Some(stored) = api.stored("inbox-unread", &key).await {
            found = Some((key, stored));
            break;
        }
    }
    let (key, stored) = found.expect("an inbox view stored under some site owner's key");
    c.goto(&format!("{base}/console#/plugin/inbox-unread"))
        .await
        .map_err(|e| e.to_string())?;
    click(c, "#tab-lookup").await;
    type_into(c, "#lookup-key", &key).await;
    click(c, "#lookup-go").await;
    let shown = until("the view to be shown", async || {
        let shown = text(c, "#lookup-view").await?;
        serde_json::from_str::<Value>(&shown).ok()
    })
    .await;
    assert_eq!(shown, stored["view"], "the page shows the stored view");
    let versions = text(c, "#lookup-versions").await.unwrap_or_default();
    for (source, version) in stored["versions"].as_object().expect("versions") {
        assert!(
            versions.contains(source.as_str()) && versions.contains(&version.to_string()),
            "{source} {version} in {versions:?}"
        );
    }
    let url = c.current_url().await.map_err(|e| e.to_string())?;
    assert!(
        url.as_str().ends_with(&format!(
            "#/plugin/inbox-unread/lookup/{}",
            key.replace(':', "%3A")
        )),
        "the lookup can be linked: {url}"
    );
    // Its history: the changes kept, the newest the view shown, and the
    // view as of now is the same.
    let newest = wait_for(c, "#history-changes tbody tr").await;
    let rows = c
        .find_all(Locator::Css("#history-changes tbody tr"))
        .await
        .map_err(|e| e.to_string())?;
    assert!(!rows.is_empty(), "changes listed");
    let _ = newest;
    // A minute from now, set as a person picking it would.
    c.execute(
        "const d = new Date(Date.now() + 60000); d.setMilliseconds(0); \
         const v = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19); \
         const el = document.getElementById('as-of'); el.value = v; \
         el.dispatchEvent(new Event('input', { bubbles: true }));",
        vec![],
    )
    .await
    .map_err(|e| e.to_string())?;
    click(c, "#as-of-go").await;
    let past = until("the view as of now", async || {
        let shown = text(c, "#as-of-result pre").await?;
        serde_json::from_str::<Value>(&shown).ok()
    })
    .await;
    assert_eq!(past, stored["view"], "as of now: the view as stored");
    screenshot(c, "8-lookup").await;

    let field = wait_for(c, "#lookup-key").await;
    field.clear().await.map_err(|e| e.to_string())?;
    field
        .send_keys("nobody:nowhere")
        .await
        .map_err(|e| e.to_string())?;
    click(c, "#lookup-go").await;
    let absent = until("the absent view", async || {
        let shown = text(c, "#lookup-view").await?;
        shown.contains("nobody:nowhere").then_some(shown)
    })
    .await;
    assert!(absent.starts_with("No view for key"), "{absent}");
    Ok(())
}

/// A broken version's dead letters, sent back through the version that
/// serves after the runtime rolled the broken one back: they leave the
/// list, the history notes the redrive, and the events are applied.
async fn redrive_dead_letters(c: &Client, api: &Api, base: &str) -> Result<(), String> {
    const KEYS: u64 = 10;
    let v1 = api.serving("hostile").await;
    c.goto(&format!("{base}/console#/plugin/hostile"))
        .await
        .map_err(|e| e.to_string())?;
    let broken = plugin_wasm("hostile-broken");
    type_into(c, "#wasm-file", &broken.display().to_string()).await;
    wait_for(c, "#deploy-mode")
        .await
        .select_by_value("replace")
        .await
        .map_err(|e| e.to_string())?;
    confirmed(c, "#deploy-go").await;
    let broken = until("the broken version to serve", async || {
        let now = api.serving("hostile").await;
        (now != v1).then_some(now)
    })
    .await;
    // One event a key; the broken version traps on each until its
    // probation fails and the runtime brings v1 back.
    let events: Vec<String> = (0..KEYS)
        .map(|i| {
            json!({"id": format!("redrive-{i}"), "type": "count", "source": "redrive",
                   "key": format!("redrive-{i}"), "version": 1, "time": 1_000, "payload": {}})
            .to_string()
        })
        .collect();
    let r = api
        .http
        .post(format!("{base}/v1/events"))
        .body(events.join("\n"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    assert!(r.status().is_success(), "ingest: {}", r.status());
    until("v1 to serve again", async || {
        (api.serving("hostile").await == v1).then_some(())
    })
    .await;
    // Every event either failed in the broken version or was applied by v1.
    let failed = until("every event to be applied or dead-lettered", async || {
        let letters = api
            .dead_letters(&format!("plugin=hostile&version={}", &broken[..12]))
            .await;
        let applied = applied_keys(api, KEYS).await;
        (letters.len() as u64 + applied == KEYS).then_some(letters)
    })
    .await;
    assert!(failed.len() >= 3, "the broken version failed {failed:?}");
    let all_before = api.dead_letters("plugin=hostile").await.len();

    // The dead letters tab, filtered by the broken version (its option
    // comes with the tab's first poll, after the select itself).
    click(c, "#tab-dead").await;
    wait_for(c, &format!("#dead-version option[value='{broken}']")).await;
    wait_for(c, "#dead-version")
        .await
        .select_by_value(&broken)
        .await
        .map_err(|e| e.to_string())?;
    let rows = until("the broken version's letters", async || {
        let rows = c
            .find_all(Locator::Css("#dead-letters tbody tr"))
            .await
            .ok()?;
        (rows.len() == failed.len()).then_some(rows)
    })
    .await;
    for row in rows {
        let version = row
            .find(Locator::Css("[data-version]"))
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            version
                .attr("data-version")
                .await
                .map_err(|e| e.to_string())?,
            Some(broken.clone())
        );
        let shown = version.text().await.map_err(|e| e.to_string())?;
        assert!(
            shown.contains(&broken[..12]) && shown.to_lowercase().contains("rolled back"),
            "{shown}"
        );
    }
    screenshot(c, "9-dead-letters").await;

    confirmed(c, "#redrive").await;
    let said = until("the redrive's answer", async || {
        text(c, "#dead [role='status']")
            .await
            .filter(|t| t.contains("sent back"))
    })
    .await;
    assert!(
        said.starts_with(&format!(
            "{} dead letters sent back through version {}",
            failed.len(),
            &v1[..12]
        )),
        "{said}"
    );
    screenshot(c, "10-redriven").await;

    // Gone from the list at once, noted in the history, then applied by v1.
    let left = api.dead_letters("plugin=hostile").await;
    assert_eq!(left.len(), all_before - failed.len(), "{left:?}");
    assert!(
        left.iter()
            .all(|l| failed.iter().all(|f| f["seq"] != l["seq"])),
        "{left:?}"
    );
    let (_, registry) = api
        .admin(reqwest::Method::GET, "/v1/admin/plugins", Some(TOKEN))
        .await;
    let history = registry["plugins"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["plugin"] == "hostile"))
        .map(|p| p["history"].clone())
        .unwrap_or_default();
    assert!(
        history
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["action"] == "redrive")),
        "{history}"
    );
    let metrics = api
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        metric(
            &metrics,
            "projector_dead_letters_redriven_total",
            "plugin=\"hostile\""
        ),
        Some(failed.len() as u64),
        "the redrive is counted"
    );
    until("the redriven events to be applied", async || {
        (applied_keys(api, KEYS).await == KEYS).then_some(())
    })
    .await;
    assert!(
        api.dead_letters("plugin=hostile").await.len() <= all_before - failed.len(),
        "a redriven event failed again"
    );
    click(c, "#tab-versions").await;
    wait_for(c, "#history tr[data-action='redrive']").await;
    screenshot(c, "11-history").await;
    Ok(())
}

/// How many of the redrive phase's keys hold a view counting their event.
async fn applied_keys(api: &Api, keys: u64) -> u64 {
    let mut applied = 0;
    for i in 0..keys {
        if let Some(v) = api.stored("hostile", &format!("redrive-{i}")).await {
            assert_eq!(v["view"]["count"], 1, "{v}");
            applied += 1;
        }
    }
    applied
}

/// The instances page of a fleet: two `projector run` instances on
/// `projector kafka-dev`, one standby each; the console of one shows
/// every partition with the owner and state `/v1/admin/instances` names,
/// its lag, and the other instance standing by for it.
#[test]
fn the_instances_page_shows_each_partitions_owner_state_and_standby() {
    use projector_tests::instances::{kafka_dev, table, Instance, PARTITIONS};
    let Some(driver) = driver() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (broker, kafka) = kafka_dev(dir.path());
    kafka.produce(&projector_tests::inbox_events(InboxShape {
        sites: 50,
        users: 500,
        events: 2_000,
        seed: 6,
    }));
    let standby = "standby_replicas = 1";
    let a = Instance::start_with(dir.path(), &kafka, 1, standby);
    let b = Instance::start_with(dir.path(), &kafka, 2, standby);
    // Settled: every partition owned and stood by for, as A sees it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let settled = loop {
        let t = table(&a);
        let parts = t["by_partition"].as_array().cloned().unwrap_or_default();
        let done = parts.len() == PARTITIONS as usize
            && parts.iter().all(|p| {
                p["state"] == "owned"
                    && p["standbys"].as_array().is_some_and(|s| s.len() == 1)
                    && p["caught_up"] == true
            });
        if done {
            break parts;
        }
        assert!(Instant::now() < deadline, "never settled: {t}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let profile = dir.path().join("chromium");
    let base = a.run.base.clone();
    runtime.block_on(async {
        let c = browser(&driver, &profile).await;
        c.goto(&format!("{base}/console#/instances"))
            .await
            .expect("the instances page");
        wait_for(&c, "#partitions tr[data-partition]").await;
        let rows = c
            .find_all(Locator::Css("#partitions tr[data-partition]"))
            .await
            .expect("rows");
        assert_eq!(rows.len(), PARTITIONS as usize);
        for p in &settled {
            let css = format!("#partitions tr[data-partition=\"{}\"]", p["partition"]);
            let row = wait_for(&c, &css).await;
            let attr = async |name: &str| row.attr(name).await.ok().flatten().unwrap_or_default();
            assert_eq!(attr("data-state").await, "owned", "{css}");
            assert_eq!(attr("data-owner").await, p["owner"].as_str().unwrap_or(""));
            // The standby is the other instance.
            let standby = row
                .find(Locator::Css("[data-standby]"))
                .await
                .expect("a standby")
                .attr("data-standby")
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            assert_eq!(standby, p["standbys"][0]["instance"].as_str().unwrap_or(""));
            assert_ne!(standby, p["owner"].as_str().unwrap_or(""), "{css}");
        }
        let members = c
            .find_all(Locator::Css("#members tr[data-instance]"))
            .await
            .expect("members");
        assert_eq!(members.len(), 2);
        screenshot(&c, "9-instances").await;
        let _ = c.close().await;
    });
    drop((a, b, broker));
}

/// A gated deploy through the console: a version with a planted defect
/// (it does not count events of type `dropped`) uploaded with promotion
/// `gated`; the shadow panel shows the gate holding it, the conditions
/// that fail with their figures, and the history says so.
#[test]
fn the_console_shows_a_promotion_gate_holding_a_defective_shadow() {
    let Some(driver) = driver() else {
        return;
    };
    let truth = projector_tests::services::Services::start(&["truth"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let plugins = plugins_dir(dir.path(), &["hostile"]);
    let config = dir.path().join("projector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nplugins_dir = {:?}\n[engine]\ncommit_interval_ms = 50\n\
             [plugins.hostile]\ntruth = {{ url = \"http://{}/truth/{{key}}\" }}\n\
             [plugins.hostile.promote]\nsample_keys = 20\nmin_keys = 20\nmin_follow_ms = 500\n\
             min_events = 10\ncheck_ms = 200\n",
            dir.path().join("data"),
            plugins,
            truth.get("truth").addr
        ),
    )
    .expect("config");
    let run = Projector::run(&config);
    let base = run.base.clone();
    // 20 keys, each counted 5 times, 2 of them `dropped`; the truth counts all.
    let event = |i: u64, ty: &str| {
        json!({"id": format!("e{i}"), "type": ty, "source": "t", "key": format!("k{}", i % 20),
               "version": i + 1, "time": i, "payload": {}})
        .to_string()
    };
    let events: Vec<String> = (0..100)
        .map(|i| event(i, if i < 40 { "dropped" } else { "count" }))
        .collect();
    for k in 0..20 {
        truth
            .get("truth")
            .set(&format!("k{k}"), vec![json!({"count": 5, "version": "1"})]);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let profile = dir.path().join("chromium");
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let ingest = |body: String| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let r = http
                    .post(format!("{base}/v1/events"))
                    .body(body)
                    .send()
                    .await
                    .expect("ingest");
                assert!(r.status().is_success(), "ingest: {}", r.status());
            }
        };
        ingest(events.join("\n")).await;
        let c = browser(&driver, &profile).await;
        c.goto(&format!("{base}/console#/plugin/hostile"))
            .await
            .expect("the plugin page");
        let drops = plugin_wasm("hostile-drops");
        type_into(&c, "#wasm-file", &drops.display().to_string()).await;
        for (select, value) in [("#deploy-method", "rebuild"), ("#deploy-promote", "gated")] {
            wait_for(&c, select)
                .await
                .select_by_value(value)
                .await
                .expect("select");
        }
        confirmed(&c, "#deploy-go").await;
        // Live events keep flowing while the gate checks: the truth knows
        // them (all `count`).
        let mut i = 100;
        let mut counts = [5u64; 20];
        until("the gate to hold the shadow", async || {
            ingest(event(i, "count")).await;
            let k = (i % 20) as usize;
            counts[k] += 1;
            truth.get("truth").set(
                &format!("k{k}"),
                vec![json!({"count": counts[k], "version": "1"})],
            );
            i += 1;
            c.find(Locator::Css("#gate[data-gate='held']")).await.ok()
        })
        .await;
        let compared = wait_for(&c, "#gate tr[data-condition='compared']").await;
        assert_eq!(
            compared.attr("data-ok").await.ok().flatten().as_deref(),
            Some("false")
        );
        let figures = compared.text().await.unwrap_or_default();
        assert!(
            figures.contains("differ from the live generation"),
            "{figures}"
        );
        screenshot(&c, "12-gate-held").await;
        // The history names the decision.
        click(&c, "#tab-versions").await;
        wait_for(&c, "#history tr[data-action='held']").await;
        screenshot(&c, "13-gate-history").await;
        let _ = c.close().await;
    });
}
