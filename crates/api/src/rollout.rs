//! Rollout: which read mode answers a request (seed 000, challenge 5).
//!
//! A plugin's rollout is an ordered list of rules and a default mode. A
//! rule matches explicit users, groups (from a request header), or a
//! percentage of a request attribute's stable hash: the same user always
//! lands in the same bucket, and raising the percentage only adds users,
//! so a rollout from 10% to 20% keeps the first 10%. The first matching
//! rule names the mode. After full rollout a share of `projection` reads
//! keeps comparing (seed 000 keeps 5%).

use serde::{Deserialize, Serialize};

/// How one read is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only the source of truth.
    Source,
    /// The view when Valid; otherwise the source, stored as a snapshot.
    Projection,
    /// Both, compared; the source's answer is returned.
    CompareReturnSource,
    /// Both, compared; the projection's answer is returned.
    CompareReturnProjection,
}

impl Mode {
    /// Every mode, in the order error messages list them.
    pub const ALL: [Mode; 4] = [
        Mode::Source,
        Mode::Projection,
        Mode::CompareReturnSource,
        Mode::CompareReturnProjection,
    ];

    /// The mode's name in config, query strings and metric labels, e.g. `compare-return-source`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Source => "source",
            Mode::Projection => "projection",
            Mode::CompareReturnSource => "compare-return-source",
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
    pub fn needs_source(self) -> bool {
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

/// One rollout rule: exactly one of `users`, `groups` or `percent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Users this rule matches, compared with the request's user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Groups this rule matches; a request in any of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// 0 to 100; may be fractional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// What a percentage hashes.
    #[serde(default)]
    pub by: Attribute,
    /// The mode a matching request is read in.
    pub mode: Mode,
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
    Mode::Source
}

impl Default for Rollout {
    /// Everything from the source: the safe start of a rollout.
    fn default() -> Self {
        Rollout {
            default: Mode::Source,
            rules: Vec::new(),
            keep_comparing_percent: 0.0,
        }
    }
}

/// What a request offers to the rules.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request's user: its user header, else the key's `user` field, else the key.
    pub user: &'a str,
    /// Groups from the request's groups header (comma-separated).
    pub groups: &'a [&'a str],
    /// The view key read.
    pub key: &'a str,
}

impl Rollout {
    /// Check every rule; the error names the rule and the field.
    pub fn validate(&self) -> Result<(), String> {
        let percent_ok = |p: f64| (0.0..=100.0).contains(&p);
        for (i, rule) in self.rules.iter().enumerate() {
            let set = [
                !rule.users.is_empty(),
                !rule.groups.is_empty(),
                rule.percent.is_some(),
            ]
            .iter()
            .filter(|s| **s)
            .count();
            if set != 1 {
                return Err(format!(
                    "rules[{i}]: expected exactly one of users, groups or percent, got {set}"
                ));
            }
            if let Some(p) = rule.percent.filter(|p| !percent_ok(*p)) {
                return Err(format!("rules[{i}].percent: expected 0 to 100, got {p}"));
            }
            if rule.users.iter().chain(&rule.groups).any(|s| s.is_empty()) {
                return Err(format!("rules[{i}]: empty user or group name"));
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

    /// The mode for `request`. `roll` in [0, 1) decides whether a
    /// `projection` read keeps comparing.
    pub fn choose(&self, request: Request, roll: f64) -> Mode {
        let mode = self
            .rules
            .iter()
            .find(|rule| rule.matches(request))
            .map_or(self.default, |rule| rule.mode);
        if mode == Mode::Projection && roll * 100.0 < self.keep_comparing_percent {
            Mode::CompareReturnProjection
        } else {
            mode
        }
    }
}

impl Rule {
    fn matches(&self, request: Request) -> bool {
        if !self.users.is_empty() {
            return self.users.iter().any(|u| u == request.user);
        }
        if !self.groups.is_empty() {
            return request
                .groups
                .iter()
                .any(|g| self.groups.iter().any(|r| r == g));
        }
        let attribute = match self.by {
            Attribute::User => request.user,
            Attribute::Key => request.key,
        };
        self.percent
            .is_some_and(|p| bucket(attribute) < (p * 100.0).round() as u64)
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

    fn percent(p: f64, mode: Mode) -> Rollout {
        Rollout {
            default: Mode::Source,
            rules: vec![Rule {
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
        }
    }

    #[test]
    fn percentages_land_within_two_points_over_ten_thousand_users() {
        for target in [1.0, 5.0, 10.0, 25.0, 50.0, 90.0] {
            let rollout = percent(target, Mode::Projection);
            let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
            let chosen = users
                .iter()
                .filter(|u| rollout.choose(req(u, &[]), 0.5) == Mode::Projection)
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
            let rollout = percent(p, Mode::CompareReturnSource);
            for (i, u) in users.iter().enumerate() {
                let first = rollout.choose(req(u, &[]), 0.1);
                let again = rollout.choose(req(u, &[]), 0.9);
                assert_eq!(first, again, "{u} moved between two reads at {p}%");
                let now = first == Mode::CompareReturnSource;
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
            default: Mode::Source,
            rules: vec![
                Rule {
                    users: vec!["alice".into()],
                    groups: vec![],
                    percent: None,
                    by: Attribute::User,
                    mode: Mode::Projection,
                },
                Rule {
                    users: vec![],
                    groups: vec!["beta".into()],
                    percent: None,
                    by: Attribute::User,
                    mode: Mode::CompareReturnProjection,
                },
            ],
            keep_comparing_percent: 0.0,
        };
        assert_eq!(
            rollout.choose(req("alice", &["beta"]), 0.0),
            Mode::Projection
        );
        assert_eq!(
            rollout.choose(req("bob", &["staff", "beta"]), 0.0),
            Mode::CompareReturnProjection
        );
        assert_eq!(rollout.choose(req("bob", &["staff"]), 0.0), Mode::Source);
    }

    #[test]
    fn a_share_of_projection_reads_keeps_comparing() {
        let rollout = Rollout {
            default: Mode::Projection,
            rules: vec![],
            keep_comparing_percent: 5.0,
        };
        assert_eq!(
            rollout.choose(req("u", &[]), 0.01),
            Mode::CompareReturnProjection
        );
        assert_eq!(rollout.choose(req("u", &[]), 0.05), Mode::Projection);
        assert_eq!(rollout.choose(req("u", &[]), 0.99), Mode::Projection);
    }

    #[test]
    fn bad_rules_are_named() {
        let mut r = percent(150.0, Mode::Projection);
        assert_eq!(
            r.validate().expect_err("rejected"),
            "rules[0].percent: expected 0 to 100, got 150"
        );
        r.rules[0].percent = None;
        assert!(r.validate().expect_err("rejected").contains("exactly one"));
        r.rules[0].users = vec!["a".into()];
        r.rules[0].groups = vec!["g".into()];
        assert!(r.validate().expect_err("rejected").contains("got 2"));
        r.rules[0].groups.clear();
        r.keep_comparing_percent = -1.0;
        assert!(r
            .validate()
            .expect_err("rejected")
            .starts_with("keep_comparing_percent"));
    }
}
