//! The Grafana dashboard in deploy/grafana/: its shape (what Grafana needs
//! to import it), its queries, and the substitution of Grafana's variables
//! in them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

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
