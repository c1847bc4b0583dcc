//! What a deploy may do without the operator saying `replace`: add a
//! plugin under the name its component calls itself (`info().name`), or
//! build a shadow generation of a new version of the running plugin (the
//! same own name). Replacing a running plugin, running a component under
//! a name it does not call itself, or running the same version with other
//! settings ([`Refusal::reconfigure`]) takes the operator's `replace`
//! (`--replace`, `?replace=true`).
//!
//! The deployer calls [`check`] once the new code is loaded (its own name
//! is known only then, and its settings are accepted) and before anything
//! is swapped or stored; this module never swaps or touches the registry.

use projector_guest::Info;
use serde::Serialize;

/// A plugin as it names itself: its own name and version label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Named {
    /// The name the component reports (`info().name`).
    pub name: String,
    /// Its version label (`info().version`).
    pub version: String,
}

impl Named {
    fn of(info: &Info) -> Self {
        Named {
            name: info.name.clone(),
            version: info.version.clone(),
        }
    }
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} version {:?}", self.name, self.version)
    }
}

/// A deploy refused for want of the operator's `replace`: the name
/// deployed to, the plugin running there (if any) and the incoming one;
/// for the version already running, the settings it would change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The name deployed to.
    pub target: String,
    /// The plugin running under that name, if it is taken (boxed, as the
    /// settings are, so the error carrying a refusal stays small).
    pub running: Option<Box<Named>>,
    /// The component deployed.
    pub incoming: Named,
    /// The running version deployed again with other settings: those it
    /// runs with and those it would run with (the config's, with the
    /// deploy's over them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Box<SettingsChange>>,
}

/// The settings a plugin runs with, and those a deploy would give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettingsChange {
    /// The settings it runs with now.
    pub from: serde_json::Value,
    /// The settings the deploy gives it.
    pub to: serde_json::Value,
}

impl Refusal {
    /// Deploying the version `target` runs (`running`) again with other
    /// settings, `from` to `to`, replaces the running plugin: it takes
    /// `replace` like any replace.
    pub(crate) fn reconfigure(
        target: &str,
        running: &Info,
        from: serde_json::Value,
        to: serde_json::Value,
    ) -> Refusal {
        Refusal {
            target: target.to_string(),
            running: Some(Box::new(Named::of(running))),
            incoming: Named::of(running),
            settings: Some(Box::new(SettingsChange { from, to })),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = &self.target;
        match (self.running.as_deref(), self.settings.as_deref()) {
            (_, Some(SettingsChange { from, to })) => write!(
                f,
                "plugin {target:?} already runs this version ({}); its settings would \
                 change from {from} to {to}",
                self.incoming
            )?,
            (Some(running), None) => write!(
                f,
                "plugin {target:?} is taken by {running}: deploying {} there replaces it",
                self.incoming
            )?,
            (None, None) => write!(
                f,
                "the component deployed as {target:?} calls itself {}",
                self.incoming
            )?,
        }
        write!(
            f,
            "; deploy again with replace (`--replace`, `?replace=true`) if that is meant"
        )
    }
}

/// Whether deploying `incoming` as `target`, where `running` runs now,
/// may go ahead without `replace`. A `shadow` deploy builds beside the
/// running plugin and needs only the same own name; any other deploy
/// needs a free name that is the component's own.
pub(crate) fn check(
    target: &str,
    running: Option<&Info>,
    incoming: &Info,
    shadow: bool,
) -> Result<(), Refusal> {
    let allowed = if shadow {
        running.is_some_and(|r| r.name == incoming.name)
    } else {
        running.is_none() && incoming.name == target
    };
    if allowed {
        return Ok(());
    }
    Err(Refusal {
        target: target.to_string(),
        running: running.map(|r| Box::new(Named::of(r))),
        incoming: Named::of(incoming),
        settings: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_guest::{Population, StalePolicy};

    fn info(name: &str, version: &str) -> Info {
        Info {
            name: name.into(),
            version: version.into(),
            population: Population::Eager,
            stale_policy: StalePolicy::Ignore,
            render_uses_time: false,
        }
    }

    #[test]
    fn a_new_name_that_is_the_components_own_is_an_add() {
        assert_eq!(check("counter", None, &info("counter", "1"), false), Ok(()));
    }

    #[test]
    fn another_name_than_the_components_own_is_refused_naming_both() {
        let e = check("billing", None, &info("counter", "1"), false).expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("\"billing\""), "{text}");
        assert!(text.contains("\"counter\" version \"1\""), "{text}");
        assert!(text.contains("--replace"), "{text}");
    }

    #[test]
    fn a_taken_name_is_refused_even_for_the_same_plugin() {
        let running = info("counter", "1");
        let e =
            check("counter", Some(&running), &info("counter", "2"), false).expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("\"counter\" version \"1\""), "{text}");
        assert!(text.contains("\"counter\" version \"2\""), "{text}");
    }

    #[test]
    fn new_settings_for_the_running_version_are_refused_naming_both() {
        let running = info("inbox-unread", "0.1.0");
        let from = serde_json::json!({"max_unread": 1000});
        let to = serde_json::json!({"max_unread": 5});
        let text = Refusal::reconfigure("inbox-unread", &running, from, to).to_string();
        assert_eq!(
            text,
            "plugin \"inbox-unread\" already runs this version (\"inbox-unread\" version \
             \"0.1.0\"); its settings would change from {\"max_unread\":1000} to \
             {\"max_unread\":5}; deploy again with replace (`--replace`, `?replace=true`) \
             if that is meant"
        );
    }

    #[test]
    fn a_shadow_of_the_same_plugin_is_allowed_and_of_another_refused() {
        let running = info("counter", "1");
        assert_eq!(
            check("counter", Some(&running), &info("counter", "2"), true),
            Ok(())
        );
        assert!(check("counter", Some(&running), &info("billing", "1"), true).is_err());
    }
}
