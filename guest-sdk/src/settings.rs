//! The settings a plugin declares ([`crate::Projection::SETTINGS`]),
//! checked before `configure` sees them: a setting the plugin does not
//! declare is refused as bad input that names it and the declared one it
//! most likely meant. It never reads a setting's value; that is the
//! plugin's `configure`. [`crate::configure`] calls it, and the Wasm
//! adapter, the native [`crate::harness`] and the host's native plugins
//! all build a plugin through that, so a plugin gets the check by
//! declaring, with no code of its own. The TypeScript SDK words its
//! refusal the same way.

use crate::{Error, Json};

/// Refuse `settings` unless it is a JSON object whose every name is in
/// `declared`; the refusal names each unknown setting (with the declared
/// name it is closest to, if one is close) and what the plugin accepts.
pub(crate) fn check(declared: &[&str], settings: &Json) -> Result<(), Error> {
    let Json::Object(given) = settings else {
        return Err(Error::bad_input(format!(
            "settings: expected a JSON object, got {settings}"
        )));
    };
    let unknown: Vec<String> = given
        .keys()
        .filter(|name| !declared.contains(&name.as_str()))
        .map(|name| match closest(name, declared) {
            Some(meant) => format!("{name:?} (did you mean {meant:?}?)"),
            None => format!("{name:?}"),
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let accepted = match declared {
        [] => "no settings".to_string(),
        names => names.join(", "),
    };
    let plural = if unknown.len() == 1 { "" } else { "s" };
    Err(Error::bad_input(format!(
        "unknown setting{plural} {}; the plugin accepts {accepted}",
        unknown.join(", ")
    )))
}

/// The declared name nearest `name`, if it is near enough to be a typo:
/// at most one edit in three characters (and at least one edit allowed),
/// ignoring case.
fn closest<'a>(name: &str, declared: &[&'a str]) -> Option<&'a str> {
    let name = name.to_lowercase();
    let allowed = (name.chars().count() / 3).max(1);
    declared
        .iter()
        .map(|d| (distance(&name, &d.to_lowercase()), *d))
        .filter(|(edits, _)| *edits <= allowed)
        .min_by_key(|(edits, _)| *edits)
        .map(|(_, d)| d)
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // Rows i-2, i-1 and i of the edit table.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut last: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let substitute = last[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            row[j] = substitute.min(last[j] + 1).min(row[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut last, row);
    }
    last[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use serde_json::json;

    const INBOX: &[&str] = &["max_unread", "source"];

    fn refusal(declared: &[&str], settings: Json) -> String {
        let e = check(declared, &settings).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::BadInput);
        e.message
    }

    #[test]
    fn declared_settings_pass_and_a_misspelled_one_is_named_with_its_fix() {
        assert_eq!(check(INBOX, &json!({})), Ok(()));
        assert_eq!(
            check(INBOX, &json!({"max_unread": 5, "source": "x"})),
            Ok(())
        );
        assert_eq!(
            refusal(INBOX, json!({"max_unreed": 5})),
            "unknown setting \"max_unreed\" (did you mean \"max_unread\"?); \
             the plugin accepts max_unread, source"
        );
        // Every unknown one, with a suggestion only where one is close.
        assert_eq!(
            refusal(INBOX, json!({"Source": "x", "colour": 1, "max_unread": 5})),
            "unknown settings \"Source\" (did you mean \"source\"?), \"colour\"; \
             the plugin accepts max_unread, source"
        );
        assert_eq!(
            refusal(&[], json!({"x": 1})),
            "unknown setting \"x\"; the plugin accepts no settings"
        );
        assert!(refusal(INBOX, json!([1])).contains("expected a JSON object"));
    }

    #[test]
    fn a_typo_is_a_few_edits_a_swap_counting_one() {
        assert_eq!(distance("max_unread", "max_unread"), 0);
        assert_eq!(distance("max_unraed", "max_unread"), 1);
        assert_eq!(distance("sorce", "source"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(closest("max-unread", INBOX), Some("max_unread"));
        assert_eq!(closest("limit", INBOX), None);
    }
}
