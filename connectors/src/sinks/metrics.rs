//! The `metrics` sink: small views as Prometheus gauges on the admin endpoint's `/metrics`.
//!
//! Each view becomes a family `ward_view_<view id>` with one label per `group_by` field (dots
//! become `_`) and a `measure` label; its value is the measure (non-numeric measures are left
//! out). A windowed view shows the rows of its newest window only (the series of older windows
//! are removed when a newer one starts), so a per-minute rate or a sliding top-k reads as
//! "now". `max_series` caps the series per view: rows beyond it are not shown and are counted
//! in `ward_view_series_dropped_total{view}`. The shown rows go into checkpoints, so a resumed
//! run shows them again at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::component::{Payload, Sink, SinkFactory, StreamKind, WorkerContext};
use ward_engine::metrics::Families;
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::view::ViewChange;

/// Show view rows as Prometheus gauges on the admin endpoint (newest window only).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSinkConfig {
    /// Most series (rows × numeric measures) shown per view.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
}

fn default_max_series() -> usize {
    1_000
}

impl ComponentConfig for MetricsSinkConfig {
    const TYPE: &'static str = "metrics";
    const SECTION: Section = Section::Sink;
    const DESCRIPTION: &'static str = "Show small views' rows as Prometheus gauges on /metrics (newest window only)";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Views];
    const OUTPUT: Option<StreamKind> = None;

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        ward_engine::limits::check_range("max_series", self.max_series as u64, 1, 100_000)?;
        Ok(Built::Sink(Arc::new(MetricsFactory {
            max_series: self.max_series,
            shown: Arc::new(Mutex::new(Shown::default())),
        })))
    }
}

/// The rows shown, for the whole process (every worker's sink instance shares it).
#[derive(Default, Serialize, Deserialize)]
struct Shown {
    views: BTreeMap<String, ShownView>,
}

#[derive(Default, Serialize, Deserialize)]
struct ShownView {
    /// Label names (group fields) of the view's family.
    labels: Vec<String>,
    /// Start of the newest window (windowed views).
    newest: Option<i64>,
    /// Per row: its group values, and its numeric measures (name, value).
    rows: BTreeMap<Vec<String>, Vec<(String, f64)>>,
}

struct MetricsFactory {
    max_series: usize,
    shown: Arc<Mutex<Shown>>,
}

impl SinkFactory for MetricsFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Sink>> {
        let families = ctx.metrics.families.clone();
        self.show_restored(&families);
        Ok(Box::new(MetricsSink { max_series: self.max_series, shown: self.shown.clone(), families }))
    }

    fn restore(&self, retained: &[ward_engine::checkpoint::SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        // Every instance writes the process's whole picture: the newest part is enough.
        let Some(bytes) = retained.last().and_then(|c| c.parts.iter().map(|(_, b)| *b).find(|b| !b.is_empty())) else {
            return Ok(());
        };
        let restored: Shown =
            ward_engine::keyed::decode(bytes).map_err(|e| anyhow::anyhow!("a checkpoint part of this sink: {e:#}"))?;
        *self.shown.lock().unwrap_or_else(|p| p.into_inner()) = restored;
        Ok(())
    }
}

impl MetricsFactory {
    /// Rows restored from a checkpoint before any worker existed: shown as soon as the sink is.
    fn show_restored(&self, families: &Families) {
        let shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        for (view, v) in &shown.views {
            for (group, measures) in &v.rows {
                set(families, view, &v.labels, group, measures);
            }
        }
    }
}

fn family(families: &Families, view: &str, labels: &[String]) -> prometheus::GaugeVec {
    let mut names: Vec<&str> = labels.iter().map(String::as_str).collect();
    names.push("measure");
    families.float_gauge_vec(
        &format!("ward_view_{}", metric_name(view)),
        &format!("Rows of view `{view}` (newest window)"),
        &names,
    )
}

fn set(families: &Families, view: &str, labels: &[String], group: &[String], measures: &[(String, f64)]) {
    let f = family(families, view, labels);
    for (m, x) in measures {
        let mut values: Vec<&str> = group.iter().map(String::as_str).collect();
        values.push(m);
        f.with_label_values(&values).set(*x);
    }
}

fn unset(families: &Families, view: &str, labels: &[String], group: &[String], measures: &[(String, f64)]) {
    let f = family(families, view, labels);
    for (m, _) in measures {
        let mut values: Vec<&str> = group.iter().map(String::as_str).collect();
        values.push(m);
        let _ = f.remove_label_values(&values);
    }
}

/// A Prometheus metric or label name: letters, digits and `_`.
fn metric_name(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

struct MetricsSink {
    max_series: usize,
    shown: Arc<Mutex<Shown>>,
    families: Arc<Families>,
}

impl MetricsSink {
    fn apply(&self, c: &ViewChange) {
        let mut shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        let view = shown.views.entry(c.shape.view.clone()).or_default();
        if view.labels.is_empty() && !c.shape.group_by.is_empty() {
            view.labels = c.shape.group_by.iter().map(|g| metric_name(g)).collect();
        }
        let start = c.key.window.map(|(s, _)| s);
        if let (Some(s), Some(newest)) = (start, view.newest) {
            if s < newest {
                return;
            }
        }
        if start.is_some() && start > view.newest {
            // A newer window: the older one's series go.
            for (group, measures) in std::mem::take(&mut view.rows) {
                unset(&self.families, &c.shape.view, &view.labels, &group, &measures);
            }
            view.newest = start;
        }
        let group: Vec<String> = c.key.group.iter().map(|v| v.to_string()).collect();
        let measures: Vec<(String, f64)> = c
            .shape
            .measures
            .iter()
            .zip(&c.measures)
            .filter_map(|(n, v)| match v {
                ward_engine::view::ViewValue::Str(_) => None,
                v => v.as_f64().map(|x| (n.clone(), x)),
            })
            .collect();
        if c.diff < 0 {
            if view.rows.get(&group).is_some_and(|m| *m == measures) {
                view.rows.remove(&group);
                unset(&self.families, &c.shape.view, &view.labels, &group, &measures);
            }
            return;
        }
        let series: usize = view.rows.values().map(Vec::len).sum();
        if !view.rows.contains_key(&group) && series + measures.len() > self.max_series {
            self.families
                .counter_vec("ward_view_series_dropped_total", "View rows not shown as gauges (max_series)", &["view"])
                .with_label_values(&[&c.shape.view])
                .inc();
            return;
        }
        set(&self.families, &c.shape.view, &view.labels, &group, &measures);
        view.rows.insert(group, measures);
    }
}

impl Sink for MetricsSink {
    fn write(&mut self, payload: &Payload) -> anyhow::Result<()> {
        if let Payload::ViewChanges(changes) = payload {
            // Retractions first: a row's new version replaces its old one.
            for c in changes.iter().filter(|c| c.diff < 0).chain(changes.iter().filter(|c| c.diff > 0)) {
                self.apply(c);
            }
        }
        Ok(())
    }

    fn prepare(&mut self, _epoch: u64) -> anyhow::Result<Vec<u8>> {
        let shown = self.shown.lock().unwrap_or_else(|p| p.into_inner());
        ward_engine::keyed::encode(&*shown)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_engine::view::{ViewKey, ViewShape, ViewValue};

    /// A windowed view of events per host.
    fn per_host(view: &str) -> Arc<ViewShape> {
        Arc::new(ViewShape {
            view: view.into(),
            group_by: vec!["host.name".into()],
            measures: vec!["events".into()],
            measure_fns: vec![("count".into(), None)],
            windowed: true,
        })
    }

    /// The registry's exposition text.
    fn exposition(metrics: &ward_engine::metrics::Metrics) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&metrics.registry.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn change(shape: &Arc<ViewShape>, window: i64, host: &str, n: i64, diff: i64) -> ViewChange {
        ViewChange {
            shape: shape.clone(),
            epoch: 1,
            version: 1,
            key: ViewKey { window: Some((window, window + 60_000)), group: vec![ViewValue::Str(host.into())] },
            measures: vec![ViewValue::Int(n)],
            diff,
        }
    }

    #[test]
    fn a_resumed_run_shows_the_rows_its_checkpoint_holds() {
        let shape = per_host("v");
        let before = ward_engine::metrics::Metrics::new();
        let mut sink = MetricsSink {
            max_series: 10,
            shown: Arc::new(Mutex::new(Shown::default())),
            families: before.families.clone(),
        };
        sink.apply(&change(&shape, 0, "a", 3, 1));
        let part = sink.prepare(4).unwrap();
        let manifest: ward_engine::checkpoint::Manifest = serde_json::from_value(serde_json::json!({
            "layout_version": 1, "pipeline": "p", "epoch": 4, "workers": 1, "created_ms": 0,
            "final_checkpoint": false, "parts": []
        }))
        .unwrap();
        let owner = ward_engine::checkpoint::Ownership { process: 0, processes: 1, workers_per_process: 1 };
        let retained =
            [ward_engine::checkpoint::SinkCheckpoint { manifest: &manifest, parts: vec![(0, &part[..])], owner }];
        let factory = MetricsFactory { max_series: 10, shown: Arc::new(Mutex::new(Shown::default())) };
        factory.restore(&retained).unwrap();
        let after = ward_engine::metrics::Metrics::new();
        factory.show_restored(&after.families);
        let text = exposition(&after);
        assert!(text.contains(r#"ward_view_v{host_name="a",measure="events"} 3"#), "{text}");
    }

    #[test]
    fn the_newest_window_is_shown_and_retractions_remove_series() {
        let metrics = ward_engine::metrics::Metrics::new();
        let families = metrics.families.clone();
        let shape = per_host("per-host");
        let sink =
            MetricsSink { max_series: 2, shown: Arc::new(Mutex::new(Shown::default())), families: families.clone() };
        let text = || exposition(&metrics);
        sink.apply(&change(&shape, 0, "a", 3, 1));
        sink.apply(&change(&shape, 0, "b", 1, 1));
        assert!(text().contains(r#"ward_view_per_host{host_name="a",measure="events"} 3"#), "{}", text());
        sink.apply(&change(&shape, 0, "a", 3, -1));
        sink.apply(&change(&shape, 0, "a", 4, 1));
        assert!(text().contains(r#"ward_view_per_host{host_name="a",measure="events"} 4"#), "{}", text());
        // Over the cap: not shown, counted.
        sink.apply(&change(&shape, 0, "c", 1, 1));
        assert!(!text().contains(r#"host_name="c""#));
        assert!(text().contains(r#"ward_view_series_dropped_total{view="per-host"} 1"#), "{}", text());
        // A newer window replaces the older one's series; late changes of the older are ignored.
        sink.apply(&change(&shape, 60_000, "b", 2, 1));
        sink.apply(&change(&shape, 0, "a", 5, 1));
        let t = text();
        assert!(t.contains(r#"ward_view_per_host{host_name="b",measure="events"} 2"#), "{t}");
        assert!(!t.contains(r#"host_name="a""#), "{t}");
    }
}
