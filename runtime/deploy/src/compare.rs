//! A comparison of two generations of a plugin's views: counts of the
//! sampled keys by result (equal, mismatched, missing), the comparison
//! rule's reasons, and examples of each, the two sides named by their
//! versions' content ids. Filled by [`crate::Deployer::compare`], which
//! reads the views; this file never touches the store or the guest.

use serde::Serialize;
use serde_json::json;

/// Sampled keys compared between two generations. The two sides are
/// named by their versions' content ids (12 characters): a difference's
/// reason says `only-in-<id>`, a missing view which version lacks it.
/// Every count has examples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    /// Content id of the version serving reads.
    pub serving: String,
    /// Content id of the other version.
    pub other: String,
    /// Keys sampled, spread over both generations' keys.
    pub compared: u64,
    /// Keys whose answers are equal (or both absent), or whose differences
    /// the comparison rule dismisses.
    pub equal: u64,
    /// Keys the comparison rule found different.
    pub mismatched: u64,
    /// Keys one version has a view of and the other lacks (or holds Invalid).
    pub missing: u64,
    /// Of those, how many each version lacks, by content id.
    pub missing_in: std::collections::BTreeMap<String, u64>,
    /// Differences by the comparison rule's reason.
    pub reasons: std::collections::BTreeMap<String, u64>,
    /// Mismatches, each with the key, both answers and their differences:
    /// up to 10, and one more for any reason none of those shows.
    pub examples: Vec<serde_json::Value>,
    /// Missing views, each with the key, the version lacking it and the one
    /// holding it with its answer: up to 10, and one for any version none
    /// of those shows lacking.
    pub missing_examples: Vec<serde_json::Value>,
}

/// Examples kept per kind, beyond which one is kept only if it shows
/// something none kept shows.
const EXAMPLES: usize = 10;

impl Comparison {
    /// A reason of the comparison rule with its sides named by version.
    fn reason(&self, reason: &str) -> String {
        match reason {
            "only-in-source" => format!("only-in-{}", self.other),
            "only-in-projection" => format!("only-in-{}", self.serving),
            other => other.to_string(),
        }
    }

    /// Count a view of `key` that version `lacking` lacks and `holding`
    /// has as `view`.
    fn missing(&mut self, key: &str, lacking: String, holding: String, view: serde_json::Value) {
        self.missing += 1;
        let shown = self
            .missing_examples
            .iter()
            .any(|x| x["lacking"] == lacking.as_str());
        *self.missing_in.entry(lacking.clone()).or_default() += 1;
        if self.missing_examples.len() < EXAMPLES || !shown {
            self.missing_examples.push(json!(
                {"key": key, "lacking": lacking, "holding": holding, "view": view}
            ));
        }
    }

    /// Count `key`, viewed as `serving` and `other` (absent when `None`),
    /// with the differences the rule found when both are present.
    pub(crate) fn count(
        &mut self,
        key: &str,
        serving: Option<serde_json::Value>,
        other: Option<serde_json::Value>,
        differences: &[projector_guest::Difference],
    ) {
        self.compared += 1;
        let (a, b) = match (serving, other) {
            (None, None) => return self.equal += 1,
            (Some(a), Some(b)) => (a, b),
            (Some(view), None) => {
                let (lacking, holding) = (self.other.clone(), self.serving.clone());
                return self.missing(key, lacking, holding, view);
            }
            (None, Some(view)) => {
                let (lacking, holding) = (self.serving.clone(), self.other.clone());
                return self.missing(key, lacking, holding, view);
            }
        };
        if differences.is_empty() {
            return self.equal += 1;
        }
        self.mismatched += 1;
        let reasons: Vec<String> = differences.iter().map(|d| self.reason(&d.reason)).collect();
        let new_reason = reasons.iter().any(|r| !self.reasons.contains_key(r));
        for r in &reasons {
            *self.reasons.entry(r.clone()).or_default() += 1;
        }
        if self.examples.len() < EXAMPLES || new_reason {
            let differences: Vec<_> = differences
                .iter()
                .zip(&reasons)
                .map(|(d, r)| json!({"path": d.path, "reason": r}))
                .collect();
            self.examples.push(json!({
                "key": key, "serving": a, "other": b, "differences": differences,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison() -> Comparison {
        Comparison {
            serving: "aaaaaaaaaaaa".into(),
            other: "bbbbbbbbbbbb".into(),
            ..Comparison::default()
        }
    }

    fn difference(path: &str, reason: &str) -> projector_guest::Difference {
        projector_guest::Difference {
            path: path.into(),
            reason: reason.into(),
            projection: None,
            source: None,
        }
    }

    #[test]
    fn a_key_both_versions_lack_is_equal_not_missing() {
        let mut c = comparison();
        c.count("k1", None, None, &[]);
        c.count("k2", Some(json!(1)), Some(json!(1)), &[]);
        assert_eq!((c.compared, c.equal, c.missing), (2, 2, 0), "{c:?}");
    }

    #[test]
    fn a_missing_view_names_the_version_lacking_it() {
        let mut c = comparison();
        c.count("k1", Some(json!({"n": 1})), None, &[]);
        c.count("k2", None, Some(json!({"n": 2})), &[]);
        assert_eq!(c.missing, 2);
        assert_eq!(c.missing_in["bbbbbbbbbbbb"], 1);
        assert_eq!(c.missing_in["aaaaaaaaaaaa"], 1);
        assert_eq!(
            c.missing_examples,
            vec![
                json!({"key": "k1", "lacking": "bbbbbbbbbbbb", "holding": "aaaaaaaaaaaa", "view": {"n": 1}}),
                json!({"key": "k2", "lacking": "aaaaaaaaaaaa", "holding": "bbbbbbbbbbbb", "view": {"n": 2}}),
            ]
        );
    }

    #[test]
    fn reasons_name_the_versions_and_every_count_has_an_example() {
        let mut c = comparison();
        let (a, b) = (Some(json!({"x": 1})), Some(json!({"y": 1})));
        for i in 0..12 {
            let d = [difference("/x", "only-in-projection")];
            c.count(&format!("k{i}"), a.clone(), b.clone(), &d);
        }
        // Past the first ten, a new reason still gets its example.
        let d = [difference("/y", "only-in-source")];
        c.count("late", a.clone(), b.clone(), &d);
        for i in 0..12 {
            c.count(&format!("m{i}"), None, a.clone(), &[]);
        }
        c.count("lost", a.clone(), None, &[]);
        let reasons: Vec<&str> = c.reasons.keys().map(String::as_str).collect();
        assert_eq!(reasons, ["only-in-aaaaaaaaaaaa", "only-in-bbbbbbbbbbbb"]);
        assert_eq!(c.examples.len(), 11);
        assert_eq!(c.examples[10]["key"], "late");
        assert_eq!(
            c.examples[10]["differences"],
            json!([{"path": "/y", "reason": "only-in-bbbbbbbbbbbb"}])
        );
        assert_eq!(c.missing_examples.len(), 11);
        assert_eq!(c.missing_examples[10]["lacking"], "bbbbbbbbbbbb");
    }
}
