//! The Grafana dashboard in deploy/grafana/: its shape (what Grafana needs
//! to import it), its queries, and the substitution of Grafana's variables
//! in them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::prometheus::Prometheus;

/// What a panel's queries return while a pod sends and receives at its
/// limits and its egress limit changed within the last rate interval (so
/// the latency histogram moved). Every panel is here, and nothing else: a
/// panel added to the dashboard needs its line.
pub const EXPECTED: &[(&str, Data)] = &[
    ("Egress: rate and limit", Data::Positive),
    ("Ingress: rate and limit", Data::Positive),
    ("Utilisation (rate / limit)", Data::Positive),
    // counted if the shaper dropped or marked; 0 a second is a series too
    ("Dropped packets per second", Data::Finite),
    ("Marked packets per second", Data::Finite),
    ("Ingress mode", Data::Positive),
    ("Reconcile passes per second", Data::Positive),
    // the attach came before the rate interval, the update within it
    ("Changes applied per second", Data::SomePositive),
    // every kind is a series from 0; an error is counted only if one came
    ("Errors per second", Data::Finite),
    ("Daemon reachable", Data::Positive),
    ("Pod change to limit in force", Data::Positive),
    (
        "Pod change to limit in force, p99 over the range",
        Data::Positive,
    ),
];

/// What each series of a query must hold (every query must return at least
/// one series).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Data {
    /// a finite number above 0
    Positive,
    /// a finite number
    Finite,
    /// finite numbers, one of them at least above 0
    SomePositive,
}

/// `$__rate_interval` as Grafana computes it for a 1 s scrape interval and
/// a dashboard of the last few minutes: max(interval + scrape, 4 x scrape),
/// rounded up to leave room for a late scrape.
pub const RATE_INTERVAL: &str = "10s";

pub fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/podshaper.json")
}

/// One query of one panel.
#[derive(Debug)]
pub struct Query {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
    /// the labels its legend shows (`{{label}}`)
    pub legend_labels: Vec<String>,
}

/// A template variable whose values come from Prometheus:
/// `label_values(selector, label)`.
#[derive(Debug)]
pub struct LabelVariable {
    pub name: String,
    pub selector: String,
    pub label: String,
}

/// Reads and checks the dashboard: the fields Grafana needs to import it,
/// a datasource variable every panel and query uses, unique panel ids and
/// per-panel unique refIds, and queries on every panel that is not a row.
pub fn load() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let d: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion missing or older than Grafana 9's 36"
    );
    for field in ["title", "uid"] {
        assert!(d[field].as_str().is_some_and(|s| !s.is_empty()), "{field}");
    }
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "no datasource variable of type prometheus named `datasource`"
    );
    let mut ids = HashSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id used twice"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: expr"
            );
        }
    }
    d
}

/// Every panel, those inside collapsed rows too.
fn panels(d: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(inner) = p["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// The titles of the panels that query.
pub fn titles(d: &Value) -> Vec<String> {
    panels(d)
        .into_iter()
        .filter(|p| p["type"] != "row")
        .filter_map(|p| p["title"].as_str().map(str::to_string))
        .collect()
}

pub fn queries(d: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(d) {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            out.push(Query {
                panel: panel["title"].as_str().unwrap_or_default().to_string(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_string(),
                expr: t["expr"].as_str().unwrap_or_default().to_string(),
                legend_labels: legend
                    .split("{{")
                    .skip(1)
                    .filter_map(|s| s.split_once("}}"))
                    .map(|(label, _)| label.trim().to_string())
                    .collect(),
            });
        }
    }
    out
}

pub fn label_variables(d: &Value) -> Vec<LabelVariable> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let query = v["query"].as_str().unwrap_or_default();
            let (selector, label) = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(','))
                .unwrap_or_else(|| {
                    panic!("variable {name}: not label_values(selector, label): {query}")
                });
            LabelVariable {
                name,
                selector: selector.trim().to_string(),
                label: label.trim().to_string(),
            }
        })
        .collect()
}

/// `expr` with Grafana's variables replaced as Grafana does before it sends
/// a query: `$__rate_interval`, `$__interval` and `$__range` by durations,
/// the template variables (`$name`, `${name}`) by their values. Fails if a
/// `$` is left.
pub fn substitute(expr: &str, intervals: &[(&str, &str)], variables: &[(&str, &str)]) -> String {
    let mut s = expr.to_string();
    // the longest names first: $__range is not the start of anything else,
    // but a variable's name may be the start of another's
    let mut all: Vec<(&str, &str)> = intervals.iter().chain(variables).copied().collect();
    all.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, value) in all {
        s = s.replace(&format!("${{{name}}}"), value);
        s = s.replace(&format!("${name}"), value);
    }
    assert!(
        !s.contains('$'),
        "a variable is left in {s:?} (from {expr:?})"
    );
    s
}

/// Now, in Unix seconds (Prometheus' time).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Evaluates every template variable and every query of `dashboard` on
/// `prometheus` as of `at` (Unix seconds), with Grafana's intervals and the
/// variables set to `namespace` and `pods` (several chosen: `(a|b)`, as
/// Grafana writes a multi-value variable for Prometheus): each variable
/// offers the values chosen, and each query returns at least one series,
/// with the labels its legend shows, of the namespace chosen, holding what
/// EXPECTED says of its panel.
pub fn check_every_query(
    prometheus: &Prometheus,
    dashboard: &Value,
    at: f64,
    range: &str,
    namespace: &str,
    pods: &[&str],
) {
    let intervals = [
        ("__rate_interval", RATE_INTERVAL),
        ("__interval", "1s"),
        ("__range", range),
    ];
    let pod = match pods {
        [one] => one.to_string(),
        many => format!("({})", many.join("|")),
    };
    let variables = [("namespace", namespace), ("pod", pod.as_str())];
    for v in label_variables(dashboard) {
        let selector = substitute(&v.selector, &intervals, &variables);
        let values = prometheus.label_values(&v.label, &selector);
        let wanted: &[&str] = match v.name.as_str() {
            "namespace" => &[namespace],
            "pod" => pods,
            other => panic!("no value for the variable {other}"),
        };
        eprintln!(
            "variable {}: label_values({selector}, {}) = {values:?}",
            v.name, v.label
        );
        for want in wanted {
            assert!(
                values.iter().any(|x| x == want),
                "variable {}: {want} not in {values:?}",
                v.name
            );
        }
    }
    let queries = queries(dashboard);
    for q in &queries {
        let expr = substitute(&q.expr, &intervals, &variables);
        let data = EXPECTED
            .iter()
            .find(|(t, _)| *t == q.panel)
            .map(|(_, d)| *d)
            .unwrap_or_else(|| panic!("panel {:?} is not in EXPECTED", q.panel));
        let result = prometheus.query(&expr, at);
        eprintln!("{} {}: {expr}", q.panel, q.ref_id);
        assert!(
            !result.is_empty(),
            "{} {}: no series for {expr}",
            q.panel,
            q.ref_id
        );
        let mut above_zero = false;
        for series in &result {
            let labels = &series["metric"];
            let value: f64 = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            eprintln!("  {labels} {value}");
            for label in &q.legend_labels {
                assert!(
                    labels[label].as_str().is_some_and(|v| !v.is_empty()),
                    "{} {}: series {labels} lacks the legend's {label}",
                    q.panel,
                    q.ref_id
                );
            }
            // the template variables hold: the test's pod only
            if let Some(n) = labels["namespace"].as_str() {
                assert_eq!(n, namespace, "{}: {labels}", q.panel);
            }
            assert!(
                value.is_finite(),
                "{} {}: {labels} = {value}",
                q.panel,
                q.ref_id
            );
            if data == Data::Positive {
                assert!(value > 0.0, "{} {}: {labels} = {value}", q.panel, q.ref_id);
            }
            above_zero |= value > 0.0;
        }
        if data == Data::SomePositive {
            assert!(above_zero, "{} {}: every series is 0", q.panel, q.ref_id);
        }
    }
    eprintln!(
        "{} queries and {} variables checked",
        queries.len(),
        label_variables(dashboard).len()
    );
}
