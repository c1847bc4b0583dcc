//! subscriptions: one row per premium asset of a user — a site plan, a
//! domain, a mailbox — aggregated from four source services (seed 002).
//!
//! View key: `{user_id}:{asset_id}`. Each row keeps one part per source,
//! each with that source's entity version:
//!
//! | source (service) | event type | entity |
//! | --- | --- | --- |
//! | `subscriptions` | `SubscriptionChanged` | product, plan, trial end, expiry |
//! | `billing` | `BillingChanged` | payment status, next charge, amount |
//! | `domains` | `DomainChanged` | domain name, its expiry |
//! | `sites` | `SiteChanged` | site name and url |
//!
//! Events come in both of seed 002's flavours. With the entity in the
//! payload (`{user_id, asset_id, entity: {...}}`) the row takes it; with
//! only the ids (`{user_id, asset_id}`) the plugin fetches the entity from
//! the source service (`GET /<source>/<asset_id>`). Stale data is ignored
//! (the ignore policy, and an entity version at or below the part's is
//! dropped). A fetched entity older than the event announcing it (a lagging
//! replica) is fetched again, up to `refetches` times, then the event fails
//! as transient so it is retried later.
//!
//! Render computes the read-time fields — status and trial days left — at
//! the read's time, never storing them. `projector recollect` rebuilds
//! rows from all four sources (after a source model changes, seed 002).

use projector_guest::{
    fetch, fetch_fresh, Change, Difference, Error, Event, Info, Json, Need, Population, Projection,
    StalePolicy, RECOLLECT,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The plugin, configured.
pub struct Subscriptions {
    refetches: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub version: u64,
    /// `site-plan`, `domain` or `mailbox`.
    pub product: String,
    pub plan: String,
    #[serde(default)]
    pub trial_end_ms: Option<i64>,
    #[serde(default)]
    pub expires_ms: Option<i64>,
    #[serde(default)]
    pub cancelled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Billing {
    pub version: u64,
    /// `paid`, `failed` or `pending`.
    pub payment_status: String,
    #[serde(default)]
    pub next_charge_ms: Option<i64>,
    pub amount_cents: u64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub version: u64,
    pub name: String,
    #[serde(default)]
    pub expires_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub version: u64,
    pub name: String,
    pub url: String,
}

/// One asset's row: a part per source, each as its source last said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub subscription: Option<Subscription>,
    pub billing: Option<Billing>,
    pub domain: Option<Domain>,
    pub site: Option<Site>,
}

#[derive(Deserialize)]
struct Settings {
    #[serde(default = "default_refetches")]
    refetches: u32,
}

fn default_refetches() -> u32 {
    2
}

/// The ids every event carries, and the entity when it carries one.
#[derive(Deserialize)]
struct Ids {
    user_id: String,
    asset_id: String,
    #[serde(default)]
    entity: Option<Json>,
}

/// What [`Projection::needs`] reads of an event: its asset, and whether it
/// carries its entity (not parsed: only its presence matters here).
#[derive(Deserialize)]
struct Announced {
    asset_id: String,
    #[serde(default)]
    entity: Option<serde::de::IgnoredAny>,
}

/// The source service of an event type.
fn source_of(event_type: &str) -> Option<&'static str> {
    match event_type {
        "SubscriptionChanged" => Some("subscriptions"),
        "BillingChanged" => Some("billing"),
        "DomainChanged" => Some("domains"),
        "SiteChanged" => Some("sites"),
        _ => None,
    }
}

/// The view key of a user's asset.
pub fn view_key(user_id: &str, asset_id: &str) -> Result<String, Error> {
    let ok = |s: &str| !s.is_empty() && !s.contains(':') && !s.contains('/');
    if !ok(user_id) || !ok(asset_id) {
        return Err(Error::bad_input(format!(
            "bad user or asset id: {user_id:?}, {asset_id:?}"
        )));
    }
    Ok(format!("{user_id}:{asset_id}"))
}

/// An entity's version, from its `version` field.
fn version_of(entity: &Json) -> Result<u64, Error> {
    entity["version"]
        .as_u64()
        .ok_or_else(|| Error::bad_input("entity without a numeric `version`"))
}

impl Subscriptions {
    /// The entity an event announces: its payload, or fetched from the
    /// source (again while the answer is older than the event).
    fn entity(&self, source: &str, ids: &Ids, event: &Event) -> Result<Option<Json>, Error> {
        if let Some(entity) = &ids.entity {
            return Ok(Some(entity.clone()));
        }
        let path = format!("/{source}/{}", ids.asset_id);
        let mut attempt = 0;
        loop {
            let answer = if attempt == 0 {
                fetch(source, &path)?
            } else {
                fetch_fresh(source, &path)?
            };
            if answer.status == 404 {
                // The source no longer knows the entity: the part goes.
                return Ok(None);
            }
            if answer.status != 200 {
                return Err(Error::transient(format!(
                    "{source}{path} answered {}",
                    answer.status
                )));
            }
            let entity: Json = answer.json()?;
            let version = version_of(&entity)?;
            if version >= event.version || answer.stale {
                // A stale (cached) answer is the best there is while the
                // source is down; the next event refreshes it.
                return Ok(Some(entity));
            }
            if attempt == self.refetches {
                return Err(Error::transient(format!(
                    "{source}{path} gave version {version}, older than the event's {}",
                    event.version
                )));
            }
            attempt += 1;
        }
    }
}

impl Subscriptions {
    /// Rebuild the row from all four sources, trusting what they say now.
    fn recollect(&self, key: &str, row: &mut Row) -> Result<Change, Error> {
        let (_, asset) = key
            .split_once(':')
            .ok_or_else(|| Error::bad_input(format!("key {key:?} is not user:asset")))?;
        let get = |source: &str| -> Result<Option<Json>, Error> {
            let answer = fetch(source, &format!("/{source}/{asset}"))?;
            match answer.status {
                200 => Ok(Some(answer.json()?)),
                404 => Ok(None),
                status => Err(Error::transient(format!(
                    "{source}/{asset} answered {status}"
                ))),
            }
        };
        let fresh = Row {
            subscription: part(get("subscriptions")?)?,
            billing: part(get("billing")?)?,
            domain: part(get("domains")?)?,
            site: part(get("sites")?)?,
        };
        if fresh == *row {
            return Ok(Change::Unchanged);
        }
        *row = fresh;
        Ok(Change::Updated)
    }
}

/// An entity as a row part.
fn part<T: for<'de> Deserialize<'de>>(entity: Option<Json>) -> Result<Option<T>, Error> {
    entity
        .map(|e| serde_json::from_value(e).map_err(|e| Error::bad_input(format!("entity: {e}"))))
        .transpose()
}

/// Replace `part` with `entity` unless it is not newer; whether it changed.
fn set_part<T: for<'de> Deserialize<'de> + PartialEq>(
    slot: &mut Option<T>,
    stored_version: Option<u64>,
    entity: Option<Json>,
) -> Result<bool, Error> {
    let Some(entity) = entity else {
        return Ok(slot.take().is_some());
    };
    let version = version_of(&entity)?;
    if stored_version.is_some_and(|v| version <= v) {
        return Ok(false);
    }
    *slot = part(Some(entity))?;
    Ok(true)
}

impl Projection for Subscriptions {
    type State = Row;
    /// The fields of [`Settings`]: any other name is refused at deploy.
    const SETTINGS: Option<&'static [&'static str]> = Some(&["refetches"]);

    fn configure(settings: &Json) -> Result<Self, Error> {
        let s: Settings = serde_json::from_value(settings.clone())
            .map_err(|e| Error::bad_input(format!("subscriptions settings: {e}")))?;
        Ok(Subscriptions {
            refetches: s.refetches,
        })
    }

    fn info(&self) -> Info {
        Info {
            name: "subscriptions".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            population: Population::Eager,
            stale_policy: StalePolicy::Ignore,
            // Trial days left and status depend on the read time.
            render_uses_time: true,
        }
    }

    fn keys(&self, event: &Event) -> Result<Vec<String>, Error> {
        if source_of(&event.event_type).is_none() {
            return Ok(Vec::new());
        }
        let ids = event.parsed::<Ids>()?;
        Ok(vec![view_key(&ids.user_id, &ids.asset_id)?])
    }

    /// An id-only event fetches its entity, a recollection all four
    /// parts: named ahead so a batch's fetches go at once. An unreadable
    /// event names none (`apply` says why it fails).
    fn needs(&self, event: &Event) -> Vec<Need> {
        if event.event_type == RECOLLECT {
            // A recollection asks all four sources of the row.
            let Some((_, asset)) = event.key.split_once(':') else {
                return Vec::new();
            };
            return ["subscriptions", "billing", "domains", "sites"]
                .into_iter()
                .map(|source| Need::new(source, format!("/{source}/{asset}")))
                .collect();
        }
        let Some(source) = source_of(&event.event_type) else {
            return Vec::new();
        };
        match event.payload::<Announced>() {
            Ok(a) if a.entity.is_none() => {
                vec![Need::new(source, format!("/{source}/{}", a.asset_id))]
            }
            _ => Vec::new(),
        }
    }

    fn apply(&self, key: &str, row: &mut Row, event: &Event) -> Result<Change, Error> {
        if event.event_type == RECOLLECT {
            return self.recollect(key, row);
        }
        let Some(source) = source_of(&event.event_type) else {
            return Ok(Change::Unchanged);
        };
        let ids = event.parsed::<Ids>()?;
        let entity = self.entity(source, &ids, event)?;
        let changed = match source {
            "subscriptions" => {
                let v = row.subscription.as_ref().map(|p| p.version);
                set_part(&mut row.subscription, v, entity)?
            }
            "billing" => {
                let v = row.billing.as_ref().map(|p| p.version);
                set_part(&mut row.billing, v, entity)?
            }
            "domains" => {
                let v = row.domain.as_ref().map(|p| p.version);
                set_part(&mut row.domain, v, entity)?
            }
            _ => {
                let v = row.site.as_ref().map(|p| p.version);
                set_part(&mut row.site, v, entity)?
            }
        };
        Ok(if changed {
            Change::Updated
        } else {
            Change::Unchanged
        })
    }

    fn render(&self, key: &str, row: &Row, now_ms: i64) -> Result<Json, Error> {
        let (user, asset) = key.split_once(':').unwrap_or((key, ""));
        let s = row.subscription.as_ref();
        let trial_days_left = s
            .and_then(|s| s.trial_end_ms)
            .filter(|end| *end > now_ms)
            .map(|end| (end - now_ms + DAY_MS - 1) / DAY_MS);
        let status = match s {
            None => "unknown",
            Some(s) if s.cancelled => "cancelled",
            Some(s) if s.expires_ms.is_some_and(|e| e <= now_ms) => "expired",
            Some(_) if trial_days_left.is_some() => "trial",
            Some(_)
                if row
                    .billing
                    .as_ref()
                    .is_some_and(|b| b.payment_status == "failed") =>
            {
                "payment-failed"
            }
            Some(_) => "active",
        };
        Ok(json!({
            "user_id": user,
            "asset_id": asset,
            "product": s.map(|s| &s.product),
            "plan": s.map(|s| &s.plan),
            "status": status,
            "trial_days_left": trial_days_left,
            "expires_ms": s.and_then(|s| s.expires_ms),
            "payment_status": row.billing.as_ref().map(|b| &b.payment_status),
            "next_charge_ms": row.billing.as_ref().and_then(|b| b.next_charge_ms),
            "amount": row.billing.as_ref().map(|b| json!({"cents": b.amount_cents, "currency": b.currency})),
            "domain": row.domain.as_ref().map(|d| &d.name),
            "domain_expires_ms": row.domain.as_ref().and_then(|d| d.expires_ms),
            "site": row.site.as_ref().map(|s| json!({"name": s.name, "url": s.url})),
        }))
    }

    /// A row from an aggregate answer: `{subscription, billing, domain,
    /// site}`, each an entity with its version (or null).
    fn snapshot(&self, key: &str, answer: &Json) -> Result<(Row, Vec<(String, u64)>), Error> {
        let row: Row = serde_json::from_value(answer.clone())
            .map_err(|e| Error::bad_input(format!("source answer for {key}: {e}")))?;
        let mut versions = Vec::new();
        let parts = [
            (
                "subscriptions",
                row.subscription.as_ref().map(|p| p.version),
            ),
            ("billing", row.billing.as_ref().map(|p| p.version)),
            ("domains", row.domain.as_ref().map(|p| p.version)),
            ("sites", row.site.as_ref().map(|p| p.version)),
        ];
        for (source, v) in parts {
            if let Some(v) = v {
                versions.push((source.to_string(), v));
            }
        }
        Ok((row, versions))
    }

    /// seed 002's compare tool: the stored facts must match; the read-time
    /// fields (status, trial days left) are derived, so not compared.
    fn compare(&self, _key: &str, projection: &Json, source: &Json) -> Vec<Difference> {
        const FACTS: [&str; 9] = [
            "product",
            "plan",
            "expires_ms",
            "payment_status",
            "next_charge_ms",
            "amount",
            "domain",
            "domain_expires_ms",
            "site",
        ];
        FACTS
            .iter()
            .filter(|f| projection.get(**f) != source.get(**f))
            .map(|f| Difference {
                path: format!("/{f}"),
                reason: "value".into(),
                projection: projection.get(*f).map(Json::to_string),
                source: source.get(*f).map(Json::to_string),
            })
            .collect()
    }
}

projector_guest::export!(Subscriptions);
