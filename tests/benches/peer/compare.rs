//! (d) of the peer bench: the sample of keys read through both read APIs
//! and compared by what each view means (unread ids and their times), not
//! its bytes. It fails the bench when a view differs; it never times.

use crate::Run;
use std::collections::BTreeMap;

/// One read API: where it listens, the path a key follows, and where a
/// body keeps the rendered view.
pub(crate) struct Side {
    pub(crate) name: &'static str,
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) path: String,
    pub(crate) answer: fn(&serde_json::Value) -> &serde_json::Value,
}

/// (d) The sample read through both APIs and compared: what each view
/// means (unread ids and their times), not its bytes. An error when one
/// differs.
pub(crate) fn compare(run: &Run, sides: &[Side; 2]) -> anyhow::Result<()> {
    let client = reqwest::blocking::Client::new();
    let mut differ = Vec::new();
    let mut unread = 0;
    for key in &run.keys {
        let [ours, theirs] = [&sides[0], &sides[1]].map(|side| {
            let url = format!("http://{}{}{key}", side.addr, side.path);
            client
                .get(url)
                .send()
                .map_err(anyhow::Error::from)
                .and_then(|r| meaning(r, side.answer))
        });
        let (ours, theirs) = (ours?, theirs?);
        unread += ours.as_ref().map_or(0, BTreeMap::len);
        if ours != theirs {
            differ.push(format!(
                "{key}: projector {ours:?}, Kafka Streams {theirs:?}"
            ));
        }
    }
    println!(
        "(d) {} views compared (after both restores; {unread} unread conversations in all): {} differ",
        run.keys.len(),
        differ.len()
    );
    for d in differ.iter().take(5) {
        println!("    {d}");
    }
    anyhow::ensure!(
        differ.is_empty(),
        "the views differ: the two compare different work"
    );
    Ok(())
}

/// What a view means: its unread conversations, id → last message time
/// (`None` for a 404). `answer` picks the rendered view from the body.
pub(crate) fn meaning(
    response: reqwest::blocking::Response,
    answer: impl Fn(&serde_json::Value) -> &serde_json::Value,
) -> anyhow::Result<Option<BTreeMap<String, i64>>> {
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    anyhow::ensure!(status.is_success(), "{} answered {status}", response.url());
    let body: serde_json::Value = serde_json::from_slice(&response.bytes()?)?;
    let list = answer(&body)["conversations"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no conversations in {body}"))?;
    Ok(Some(
        list.iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_string(),
                    c["last_message_at"].as_i64().unwrap_or(-1),
                )
            })
            .collect(),
    ))
}
