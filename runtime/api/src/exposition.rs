//! The two formats of `/metrics`. The metrics are encoded once, as
//! OpenMetrics 1.0 text (what `prometheus-client` writes); a scraper that
//! names `application/openmetrics-text` in `Accept` gets that, any other
//! the Prometheus text format 0.0.4, derived from it line by line: a
//! counter family is named as its `_total` samples, `unknown` is
//! `untyped`, and the `# UNIT` and `# EOF` lines go. Called by `health`;
//! knows nothing of which metrics exist.

use std::collections::HashSet;

/// `Content-Type` of the OpenMetrics answer.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text answer (the default).
pub(crate) const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether `accept` asks for OpenMetrics (with a weight above 0).
pub(crate) fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.into_iter().flat_map(|a| a.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let asked = parts
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"));
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        asked && !refused
    })
}

/// The Prometheus text 0.0.4 form of an OpenMetrics exposition.
pub(crate) fn to_prometheus(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        let Some(comment) = line.strip_prefix("# ") else {
            // A sample: without an exemplar, if it had one.
            out.push_str(line.split(" # ").next().unwrap_or(line));
            out.push('\n');
            continue;
        };
        let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
        if !matches!(keyword, "HELP" | "TYPE") {
            continue;
        }
        let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let tail = match (keyword, tail) {
            ("TYPE", "unknown" | "info" | "stateset" | "gaugehistogram") => "untyped",
            _ => tail,
        };
        let total = if counters.contains(name) {
            "_total"
        } else {
            ""
        };
        out.push_str(&format!("# {keyword} {name}{total} {tail}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_accept_names_it() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain; version=0.0.4")));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        // What Prometheus itself sends.
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
             version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text;q=0, text/plain"
        )));
    }

    #[test]
    fn counters_are_named_by_their_samples_and_openmetrics_lines_go() {
        let openmetrics = "# HELP a_events Events.\n# TYPE a_events counter\n\
                           a_events_total{p=\"x\"} 3\n# HELP a_lag Lag.\n# TYPE a_lag gauge\n\
                           # UNIT a_lag records\na_lag 2\n# TYPE a_odd unknown\na_odd 1\n# EOF\n";
        assert_eq!(
            to_prometheus(openmetrics),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\n\
             a_events_total{p=\"x\"} 3\n# HELP a_lag Lag.\n# TYPE a_lag gauge\na_lag 2\n\
             # TYPE a_odd untyped\na_odd 1\n"
        );
    }
}
