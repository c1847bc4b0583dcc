//! Rollout: which read mode answers a request (seed 000, challenge 5).
//!
//! A plugin's rollout is an ordered list of rules and a default mode. A
//! rule matches on explicit users, groups (from a request header), any
//! request header or query attribute (by a list of values or a pattern:
//! language, country, tenant, user agent...), and a percentage of a stable
//! hash of the user or key: the same user always lands in the same bucket,
//! and raising the percentage only adds users, so a rollout from 10% to
//! 20% keeps the first 10% (seed 004's toggles). A rule matches when every
//! criterion it sets matches; the first matching rule names the mode.
//! After full rollout a share of `projection` reads keeps comparing (seed
//! 000 keeps 5%).

use serde::{Deserialize, Serialize};

/// How one read is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only the source of truth (named `source` in config, queries and answers).
    #[serde(rename = "source")]
    Truth,
    /// The view when Valid; otherwise the source of truth, stored as a snapshot.
    Projection,
    /// Both, compared; the source of truth's answer is returned (named
    /// `compare-return-source`).
    #[serde(rename = "compare-return-source")]
    CompareReturnTruth,
    /// Both, compared; the projection's answer is returned.
    CompareReturnProjection,
}

impl Mode {
    /// Every mode, in the order error messages list them.
    pub const ALL: [Mode; 4] = [
        Mode::Truth,
        Mode::Projection,
        Mode::CompareReturnTruth,
        Mode::CompareReturnProjection,
    ];

    /// The mode's name in config, query strings and metric labels, e.g. `compare-return-source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Truth => "source",
            Mode::Projection => "projection",
            Mode::CompareReturnTruth => "compare-return-source",
            Mode::CompareReturnProjection => "compare-return-projection",
        }
    }

    /// Parses a mode name; the error lists the names expected.
    pub fn parse(text: &str) -> Result<Mode, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
                format!(
                    "unknown mode {text:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }

    /// Whether this mode reads the source of truth.
    pub(crate) fn needs_truth(self) -> bool {
        self != Mode::Projection
    }
}

/// The request attribute a percentage rule hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attribute {
    /// The request's user (header, else the key's `user` field, else the key).
    #[default]
    User,
    /// The view key.
    Key,
}

/// One rollout rule: the criteria it sets (at least one) must all match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Its name in the `x-projector-rule` header and in metrics (default
    /// `rules[i]`, by its place in the list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Users this rule matches, compared with the request's user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Groups this rule matches; a request in any of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Request attributes that must all match.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<AttributeMatch>,
    /// 0 to 100; may be fractional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// What a percentage hashes.
    #[serde(default)]
    pub by: Attribute,
    /// The mode a matching request is read in.
    pub mode: Mode,
}

/// Where a request attribute is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A request header (names are case-insensitive).
    Header,
    /// A query parameter of the read.
    Query,
}

/// One request attribute a rule matches: a header or a query parameter,
/// by a list of values or by a pattern.
///
/// `values` are compared with each comma-separated item of the attribute,
/// its `;` parameters dropped, case-insensitively; a value also matches an
/// item that starts with it and a `-`, as language ranges do (`fr`
/// matches `fr-CA` in `accept-language: fr-CA,fr;q=0.9`). `pattern` is a
/// regular expression searched in the whole value. An absent attribute
/// matches neither.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeMatch {
    /// A request header, e.g. `accept-language` or `x-tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A query parameter of the read, e.g. `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Values that match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// A regular expression that matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// `pattern`, compiled by `Rollout::validate`.
    #[serde(skip)]
    compiled: Option<regex::Regex>,
}

impl PartialEq for AttributeMatch {
    fn eq(&self, other: &Self) -> bool {
        (&self.header, &self.query, &self.values, &self.pattern)
            == (&other.header, &other.query, &other.values, &other.pattern)
    }
}

/// Longest pattern a rule may carry, and the most compiled size it may
/// take (a rule is set through the admin API).
const MAX_PATTERN_BYTES: usize = 1024;
const MAX_COMPILED_BYTES: usize = 1 << 20;

impl AttributeMatch {
    /// Where and what it reads.
    pub fn target(&self) -> (Place, &str) {
        match (&self.header, &self.query) {
            (Some(h), _) => (Place::Header, h),
            (None, Some(q)) => (Place::Query, q),
            (None, None) => (Place::Query, ""),
        }
    }

    fn check(&mut self) -> Result<(), String> {
        match (&self.header, &self.query) {
            (Some(n), None) | (None, Some(n)) if !n.is_empty() => {}
            (Some(_), Some(_)) => return Err("expected header or query, not both".into()),
            _ => return Err("expected a non-empty header or query name".into()),
        }
        if let Some(h) = &mut self.header {
            *h = h.to_ascii_lowercase();
        }
        match (&self.pattern, self.values.is_empty()) {
            (Some(_), false) => Err("expected values or pattern, not both".into()),
            (None, true) => Err("expected values or a pattern".into()),
            (None, false) if self.values.iter().any(String::is_empty) => Err("empty value".into()),
            (None, false) => Ok(()),
            (Some(p), true) => {
                if p.len() > MAX_PATTERN_BYTES {
                    return Err(format!("pattern: longer than {MAX_PATTERN_BYTES} bytes"));
                }
                let re = regex::RegexBuilder::new(p)
                    .size_limit(MAX_COMPILED_BYTES)
                    .build()
                    .map_err(|e| format!("pattern: {e}"))?;
                self.compiled = Some(re);
                Ok(())
            }
        }
    }

    fn matches(&self, request: &Request) -> bool {
        let (place, name) = self.target();
        let Some(value) = (request.attribute)(place, name) else {
            return false;
        };
        if let Some(re) = &self.compiled {
            return re.is_match(value);
        }
        value
            .split(',')
            .map(|item| item.split(';').next().unwrap_or_default().trim())
            .any(|item| {
                self.values.iter().any(|v| {
                    item.eq_ignore_ascii_case(v)
                        || (item.len() > v.len()
                            && item.is_char_boundary(v.len())
                            && item[..v.len()].eq_ignore_ascii_case(v)
                            && item.as_bytes()[v.len()] == b'-')
                })
            })
    }
}

/// A plugin's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The mode when no rule matches.
    #[serde(default = "default_mode")]
    pub default: Mode,
    /// Rules in order; the first that matches names the mode.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Share (0 to 100) of `projection` reads that still compare, returning
    /// the projection.
    #[serde(default)]
    pub keep_comparing_percent: f64,
}

fn default_mode() -> Mode {
    Mode::Truth
}

impl Default for Rollout {
    /// Everything from the source of truth: the safe start of a rollout.
    fn default() -> Self {
        Rollout {
            default: Mode::Truth,
            rules: Vec::new(),
            keep_comparing_percent: 0.0,
        }
    }
}

/// What a request offers to the rules.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The request's user: its user header, else the key's `user` field, else the key.
    pub user: &'a str,
    /// Groups from the request's groups header (comma-separated).
    pub groups: &'a [&'a str],
    /// The view key read.
    pub key: &'a str,
    /// A header (lower-case name) or query parameter of the request.
    pub attribute: &'a dyn Fn(Place, &str) -> Option<&'a str>,
}

/// Why a read has its mode: the rule that chose it, or `default`.
pub type Chosen<'r> = std::borrow::Cow<'r, str>;

impl Rollout {
    /// Check every rule (and compile its patterns); the error names the
    /// rule and the field.
    pub fn validate(&mut self) -> Result<(), String> {
        let percent_ok = |p: f64| (0.0..=100.0).contains(&p);
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.rules.iter_mut().enumerate() {
            let set = !rule.users.is_empty()
                || !rule.groups.is_empty()
                || !rule.attributes.is_empty()
                || rule.percent.is_some();
            if !set {
                return Err(format!(
                    "rules[{i}]: expected at least one of users, groups, match or percent"
                ));
            }
            if let Some(p) = rule.percent.filter(|p| !percent_ok(*p)) {
                return Err(format!("rules[{i}].percent: expected 0 to 100, got {p}"));
            }
            if rule.users.iter().chain(&rule.groups).any(|s| s.is_empty()) {
                return Err(format!("rules[{i}]: empty user or group name"));
            }
            for (j, a) in rule.attributes.iter_mut().enumerate() {
                a.check()
                    .map_err(|e| format!("rules[{i}].match[{j}]: {e}"))?;
            }
            match &rule.name {
                Some(n) if n.is_empty() || n == "default" || n == "asked" => {
                    return Err(format!(
                        "rules[{i}].name: {n:?} is empty or reserved (default, asked)"
                    ));
                }
                Some(n) if !names.insert(n.clone()) => {
                    return Err(format!("rules[{i}].name: {n:?} names another rule too"));
                }
                _ => {}
            }
        }
        if !percent_ok(self.keep_comparing_percent) {
            return Err(format!(
                "keep_comparing_percent: expected 0 to 100, got {}",
                self.keep_comparing_percent
            ));
        }
        Ok(())
    }

    /// The query parameters its rules read.
    pub(crate) fn query_attributes(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| &r.attributes)
            .filter_map(|a| a.query.as_deref())
    }

    /// The mode for `request`, and the rule that chose it (`default` when
    /// none matched). `roll` in [0, 1) decides whether a `projection` read
    /// keeps comparing.
    pub(crate) fn choose(&self, request: Request, roll: f64) -> (Mode, Chosen<'_>) {
        let (mode, chosen) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(&request))
            .map_or((self.default, Chosen::Borrowed("default")), |(i, rule)| {
                let name = match &rule.name {
                    Some(n) => Chosen::Borrowed(n.as_str()),
                    None => Chosen::Owned(format!("rules[{i}]")),
                };
                (rule.mode, name)
            });
        if mode == Mode::Projection && roll * 100.0 < self.keep_comparing_percent {
            (Mode::CompareReturnProjection, chosen)
        } else {
            (mode, chosen)
        }
    }
}

impl Rule {
    fn matches(&self, request: &Request) -> bool {
        if !self.users.is_empty() && !self.users.iter().any(|u| u == request.user) {
            return false;
        }
        if !self.groups.is_empty()
            && !request
                .groups
                .iter()
                .any(|g| self.groups.iter().any(|r| r == g))
        {
            return false;
        }
        if !self.attributes.iter().all(|a| a.matches(request)) {
            return false;
        }
        let Some(p) = self.percent else {
            return true;
        };
        let attribute = match self.by {
            Attribute::User => request.user,
            Attribute::Key => request.key,
        };
        bucket(attribute) < (p * 100.0).round() as u64
    }
}

/// A stable bucket in 0..10000 for `value` (FNV-1a, then a 64-bit mixer
/// so that similar ids spread evenly).
pub fn bucket(value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h % 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_has_one_name_in_config_and_in_answers() {
        for mode in Mode::ALL {
            let json = serde_json::to_value(mode).expect("serializes");
            assert_eq!(json, mode.as_str(), "{mode:?}");
            assert_eq!(serde_json::from_value::<Mode>(json).ok(), Some(mode));
            assert_eq!(Mode::parse(mode.as_str()), Ok(mode));
        }
    }

    fn percent(p: f64, mode: Mode) -> Rollout {
        Rollout {
            default: Mode::Truth,
            rules: vec![Rule {
                name: None,
                attributes: vec![],
                users: vec![],
                groups: vec![],
                percent: Some(p),
                by: Attribute::User,
                mode,
            }],
            keep_comparing_percent: 0.0,
        }
    }

    fn req<'a>(user: &'a str, groups: &'a [&'a str]) -> Request<'a> {
        Request {
            user,
            groups,
            key: user,
            attribute: &|_, _| None,
        }
    }

    #[test]
    fn percentages_land_within_two_points_over_ten_thousand_users() {
        for target in [1.0, 5.0, 10.0, 25.0, 50.0, 90.0] {
            let rollout = percent(target, Mode::Projection);
            let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
            let chosen = users
                .iter()
                .filter(|u| rollout.choose(req(u, &[]), 0.5).0 == Mode::Projection)
                .count();
            let share = chosen as f64 / 100.0;
            assert!(
                (share - target).abs() <= 2.0,
                "{target}% rule chose {share}% of 10k users"
            );
        }
    }

    #[test]
    fn percentages_are_sticky_and_only_grow() {
        let users: Vec<String> = (0..2_000).map(|i| format!("u{i}")).collect();
        let mut before: Vec<bool> = vec![false; users.len()];
        for p in [10.0, 20.0, 30.0, 60.0, 100.0] {
            let rollout = percent(p, Mode::CompareReturnTruth);
            for (i, u) in users.iter().enumerate() {
                let first = rollout.choose(req(u, &[]), 0.1).0;
                let again = rollout.choose(req(u, &[]), 0.9).0;
                assert_eq!(first, again, "{u} moved between two reads at {p}%");
                let now = first == Mode::CompareReturnTruth;
                assert!(
                    now || !before[i],
                    "{u} left the rollout when it grew to {p}%"
                );
                before[i] = now;
            }
        }
        assert!(before.iter().all(|b| *b), "100% takes every user");
    }

    #[test]
    fn first_matching_rule_wins_then_the_default() {
        let rollout = Rollout {
            default: Mode::Truth,
            rules: vec![
                Rule {
                    name: None,
                    attributes: vec![],
                    users: vec!["alice".into()],
                    groups: vec![],
                    percent: None,
                    by: Attribute::User,
                    mode: Mode::Projection,
                },
                Rule {
                    name: Some("beta-testers".into()),
                    attributes: vec![],
                    users: vec![],
                    groups: vec!["beta".into()],
                    percent: None,
                    by: Attribute::User,
                    mode: Mode::CompareReturnProjection,
                },
            ],
            keep_comparing_percent: 0.0,
        };
        let chose = |user, groups| {
            let (mode, rule) = rollout.choose(req(user, groups), 0.0);
            (mode, rule.into_owned())
        };
        assert_eq!(
            chose("alice", &["beta"]),
            (Mode::Projection, "rules[0]".into())
        );
        assert_eq!(
            chose("bob", &["staff", "beta"]),
            (Mode::CompareReturnProjection, "beta-testers".into())
        );
        assert_eq!(chose("bob", &["staff"]), (Mode::Truth, "default".into()));
    }

    #[test]
    fn a_share_of_projection_reads_keeps_comparing() {
        let rollout = Rollout {
            default: Mode::Projection,
            rules: vec![],
            keep_comparing_percent: 5.0,
        };
        assert_eq!(
            rollout.choose(req("u", &[]), 0.01).0,
            Mode::CompareReturnProjection
        );
        assert_eq!(rollout.choose(req("u", &[]), 0.05).0, Mode::Projection);
        assert_eq!(rollout.choose(req("u", &[]), 0.99).0, Mode::Projection);
    }

    #[test]
    fn bad_rules_are_named() {
        let mut r = percent(150.0, Mode::Projection);
        assert_eq!(
            r.validate().expect_err("rejected"),
            "rules[0].percent: expected 0 to 100, got 150"
        );
        r.rules[0].percent = None;
        assert!(r.validate().expect_err("rejected").contains("at least one"));
        r.rules[0].users = vec!["a".into()];
        r.validate().expect("users alone");
        r.rules[0].attributes = vec![attr(r#"{"header": "x-tenant"}"#)];
        assert_eq!(
            r.validate().expect_err("rejected"),
            "rules[0].match[0]: expected values or a pattern"
        );
        r.rules[0].attributes = vec![attr(r#"{"header": "a", "query": "b", "values": ["x"]}"#)];
        assert!(r.validate().expect_err("rejected").contains("not both"));
        r.rules[0].attributes = vec![attr(r#"{"query": "t", "pattern": "(unclosed"}"#)];
        assert!(r
            .validate()
            .expect_err("rejected")
            .starts_with("rules[0].match[0]: pattern:"));
        r.rules[0].attributes.clear();
        r.rules[0].name = Some("default".into());
        assert!(r.validate().expect_err("rejected").contains("reserved"));
        r.rules[0].name = None;
        r.keep_comparing_percent = -1.0;
        assert!(r
            .validate()
            .expect_err("rejected")
            .starts_with("keep_comparing_percent"));
    }

    fn attr(json: &str) -> AttributeMatch {
        serde_json::from_str(json).expect("an attribute match")
    }

    /// A request with headers and query parameters, as (name, value).
    fn choose_with(rollout: &Rollout, user: &str, attrs: &[(Place, &str, &str)]) -> (Mode, String) {
        let lookup = |place: Place, name: &str| {
            attrs
                .iter()
                .find(|(p, n, _)| *p == place && *n == name)
                .map(|(_, _, v)| *v)
        };
        let request = Request {
            user,
            groups: &[],
            key: user,
            attribute: &lookup,
        };
        let (mode, rule) = rollout.choose(request, 0.5);
        (mode, rule.into_owned())
    }

    #[test]
    fn rules_match_headers_and_query_attributes_by_values_or_pattern() {
        let mut rollout: Rollout = serde_json::from_value(serde_json::json!({
            "default": "source",
            "rules": [
                {"name": "french", "match": [{"header": "Accept-Language", "values": ["fr"]}],
                 "mode": "projection"},
                {"name": "acme-half", "match": [{"header": "x-tenant", "values": ["acme"]}],
                 "percent": 50, "mode": "compare-return-projection"},
                {"name": "bots", "match": [{"header": "user-agent", "pattern": "(?i)bot|crawler"}],
                 "mode": "compare-return-source"},
                {"name": "eu", "match": [{"query": "country", "values": ["de", "it"]}],
                 "mode": "projection"}
            ]
        }))
        .expect("a rollout");
        rollout.validate().expect("valid");
        use Place::{Header as H, Query as Q};
        let fr = choose_with(
            &rollout,
            "u1",
            &[(H, "accept-language", "fr-CA,fr;q=0.9,en;q=0.8")],
        );
        assert_eq!(fr, (Mode::Projection, "french".into()));
        let en = choose_with(
            &rollout,
            "u1",
            &[(H, "accept-language", "en-US,en;q=0.9,fr;q=0.1")],
        );
        assert_eq!(en.1, "french", "any listed language matches");
        let frisian = choose_with(&rollout, "u1", &[(H, "accept-language", "fry")]);
        assert_eq!(
            frisian,
            (Mode::Truth, "default".into()),
            "fr is not a prefix of fry"
        );
        let bot = choose_with(
            &rollout,
            "u1",
            &[(H, "user-agent", "Mozilla/5.0 (compatible; Googlebot/2.1)")],
        );
        assert_eq!(bot, (Mode::CompareReturnTruth, "bots".into()));
        let eu = choose_with(&rollout, "u1", &[(Q, "country", "IT")]);
        assert_eq!(eu, (Mode::Projection, "eu".into()));
        assert_eq!(
            choose_with(&rollout, "u1", &[(H, "country", "it")]).1,
            "default",
            "a header is not the query"
        );
        // Half of acme's users, and nobody from another tenant.
        let acme: Vec<bool> = (0..2000)
            .map(|i| {
                let user = format!("user-{i}");
                choose_with(&rollout, &user, &[(H, "x-tenant", "acme")]).1 == "acme-half"
            })
            .collect();
        let share = acme.iter().filter(|m| **m).count();
        assert!((900..=1100).contains(&share), "{share} of 2000 acme users");
        assert_eq!(
            choose_with(&rollout, "user-1", &[(H, "x-tenant", "globex")]).1,
            "default"
        );
        assert_eq!(rollout.query_attributes().collect::<Vec<_>>(), ["country"]);
    }
}
