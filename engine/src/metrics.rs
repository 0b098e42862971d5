//! Prometheus metrics (docs/architecture.md §7): `ward_*`, units in the name, per component.
//!
//! Components get a [`ComponentMetrics`] with the label values already resolved, so the hot
//! path updates plain atomics once per batch, never per event and never via a label lookup.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::quarantine::Reason;

pub struct Metrics {
    pub registry: Registry,
    records_in: IntCounterVec,
    records_out: IntCounterVec,
    filtered: IntCounterVec,
    quarantined: IntCounterVec,
    errors: IntCounterVec,
    bytes_in: IntCounterVec,
    batch_seconds: HistogramVec,
    pub events_per_second: Gauge,
    pub epoch: IntGauge,
    /// Flow control: bytes the sources have in flight, and the time they spent waiting.
    pub in_flight_bytes: IntGauge,
    pub backpressure_seconds: prometheus::Counter,
    /// Checkpoints (docs/architecture.md §7: duration, size, age).
    pub checkpoint: CheckpointMetrics,
    /// The admin endpoint's connections.
    pub admin: AdminMetrics,
    pub workers: IntGauge,
    pub ready: IntGauge,
    /// Families components register for themselves (Kafka partitions, SLA times, breakers).
    pub families: Arc<Families>,
    reloads: IntCounterVec,
    reload_failures: IntCounterVec,
    alerts: IntCounterVec,
    match_over_budget: IntCounterVec,
    match_undecided: IntCounterVec,
    rules_loaded: IntGaugeVec,
    ruleset_info: IntGaugeVec,
    watermark_lag: GaugeVec,
    watermark: GaugeVec,
    late: IntCounterVec,
    state_keys: IntGaugeVec,
    records_expected: IntGaugeVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Self::with_registry(Registry::new())
    }

    /// Metrics of process `process` of a cluster: every series carries `process="N"`, so the
    /// pods' `/metrics` can be told apart (and summed) after scraping.
    pub fn for_process(process: usize) -> Arc<Metrics> {
        let labels = std::collections::HashMap::from([("process".to_string(), process.to_string())]);
        Self::with_registry(Registry::new_custom(None, Some(labels)).expect("a valid constant label"))
    }

    fn with_registry(registry: Registry) -> Arc<Metrics> {
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new("ward_batch_duration_seconds", "Time a component spent on one batch")
                .buckets(prometheus::exponential_buckets(0.00001, 4.0, 10).expect("valid buckets")),
            &["component"],
        )
        .expect("valid metric");
        registry.register(Box::new(batch_seconds.clone())).expect("unique metric");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let events_per_second =
            Gauge::new("ward_events_per_second", "Records read by all sources per second, over the last few seconds")
                .expect("valid metric");
        registry.register(Box::new(events_per_second.clone())).expect("unique metric");
        let build = IntGaugeVec::new(Opts::new("ward_build_info", "Ward version"), &["version"]).expect("valid metric");
        registry.register(Box::new(build.clone())).expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let rules_loaded = gauge_vec(
            "ward_rules_loaded",
            "Rules in a detector's running rule set, by status (compiled or rejected)",
            &["component", "status"],
        );
        let ruleset_info = gauge_vec(
            "ward_ruleset_info",
            "1 for the version (content hash) of a detector's running rule set",
            &["component", "version"],
        );
        let gauge_f = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["component"]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let checkpoint = CheckpointMetrics {
            completed: {
                let c = IntCounter::new("ward_checkpoints_total", "Checkpoints completed").expect("valid metric");
                registry.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            epoch: gauge("ward_checkpoint_epoch", "Epoch of the newest complete checkpoint"),
            bytes: gauge("ward_checkpoint_bytes", "Size of the newest complete checkpoint"),
            timestamp: {
                let g = Gauge::new(
                    "ward_checkpoint_timestamp_seconds",
                    "When the newest checkpoint completed (Unix seconds; its age is time() minus this)",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            duration: {
                let h = prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "ward_checkpoint_duration_seconds",
                        "From a checkpoint's first part written to its manifest",
                    )
                    .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")),
                )
                .expect("valid metric");
                registry.register(Box::new(h.clone())).expect("unique metric");
                h
            },
        };
        let admin = AdminMetrics {
            open: gauge("ward_admin_connections", "Open connections to the admin endpoint"),
            rejected: {
                let c = IntCounter::new(
                    "ward_admin_connections_rejected_total",
                    "Admin connections closed on accept because the connection cap was reached",
                )
                .expect("valid metric");
                registry.register(Box::new(c.clone())).expect("unique metric");
                c
            },
        };
        Arc::new(Metrics {
            checkpoint,
            admin,
            watermark_lag: gauge_f(
                "ward_watermark_lag_seconds",
                "Wall-clock time minus a stateful operator's event-time watermark",
            ),
            watermark: gauge_f("ward_watermark_seconds", "A stateful operator's event-time watermark (Unix seconds)"),
            late: counter(
                &registry,
                "ward_late_events_total",
                "Records behind the watermark beyond the allowed lateness (also quarantined as late_event)",
                &["component"],
            ),
            state_keys: gauge_vec("ward_state_keys", "Keys with live state in a stateful operator", &["component"]),
            records_expected: gauge_vec(
                "ward_source_records_expected",
                "Records a bounded source expects to read in all (a replay's or a hunt's size; 0: unknown)",
                &["component"],
            ),
            alerts: counter(&registry, "ward_alerts_total", "Alerts a detector raised", &["component"]),
            match_over_budget: counter(
                &registry,
                "ward_sigma_over_budget_events_total",
                "Events whose Sigma evaluation ran out of its work budget (cheap tests ran, some regex tests did not)",
                &["component"],
            ),
            match_undecided: counter(
                &registry,
                "ward_sigma_undecided_total",
                "Rule evaluations left undecided by the work budget (no alert raised; see the warning log)",
                &["component"],
            ),
            rules_loaded,
            ruleset_info,
            records_in: counter(
                &registry,
                "ward_records_in_total",
                "Records a component received (sources: read)",
                &["component"],
            ),
            records_out: counter(
                &registry,
                "ward_records_out_total",
                "Records a component emitted (sinks: written)",
                &["component"],
            ),
            filtered: counter(
                &registry,
                "ward_records_filtered_total",
                "Records a component dropped on purpose",
                &["component"],
            ),
            quarantined: counter(
                &registry,
                "ward_records_quarantined_total",
                "Records a component sent to quarantine, by reason",
                &["component", "reason"],
            ),
            errors: counter(
                &registry,
                "ward_component_errors_total",
                "Errors a component hit (I/O, sink writes)",
                &["component"],
            ),
            bytes_in: counter(&registry, "ward_source_bytes_total", "Payload bytes read by a source", &["component"]),
            reloads: counter(
                &registry,
                "ward_resource_reloads_total",
                "Successful reloads of a watched resource",
                &["component"],
            ),
            reload_failures: counter(
                &registry,
                "ward_resource_reload_failures_total",
                "Reloads of a watched resource that failed (the old version stays)",
                &["component"],
            ),
            batch_seconds,
            events_per_second,
            epoch: gauge("ward_epoch", "Current checkpoint epoch (the timely timestamp sources emit at)"),
            in_flight_bytes: gauge(
                "ward_in_flight_bytes",
                "Bytes of records the sources emitted that not every sink has written yet (bounded by max_in_flight_bytes)",
            ),
            backpressure_seconds: {
                let c = prometheus::Counter::new(
                    "ward_source_backpressure_seconds_total",
                    "Time sources spent waiting because max_in_flight_bytes were in flight (summed over workers)",
                )
                .expect("valid metric");
                registry.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            workers: gauge("ward_workers", "Worker threads in this process"),
            ready: gauge("ward_ready", "1 once the dataflow is built and running"),
            families: Arc::new(Families { registry: registry.clone(), made: Default::default() }),
            registry,
        })
    }

    pub fn component(&self, id: &str) -> ComponentMetrics {
        ComponentMetrics {
            id: id.into(),
            records_in: self.records_in.with_label_values(&[id]),
            records_out: self.records_out.with_label_values(&[id]),
            filtered: self.filtered.with_label_values(&[id]),
            errors: self.errors.with_label_values(&[id]),
            bytes_in: self.bytes_in.with_label_values(&[id]),
            batch_seconds: self.batch_seconds.with_label_values(&[id]),
            reloads: self.reloads.with_label_values(&[id]),
            reload_failures: self.reload_failures.with_label_values(&[id]),
            alerts: self.alerts.with_label_values(&[id]),
            match_over_budget: self.match_over_budget.with_label_values(&[id]),
            match_undecided: self.match_undecided.with_label_values(&[id]),
            rules_compiled: self.rules_loaded.with_label_values(&[id, "compiled"]),
            rules_rejected: self.rules_loaded.with_label_values(&[id, "rejected"]),
            ruleset_info: self.ruleset_info.clone(),
            watermark_lag: self.watermark_lag.with_label_values(&[id]),
            watermark: self.watermark.with_label_values(&[id]),
            late: self.late.with_label_values(&[id]),
            state_keys: self.state_keys.with_label_values(&[id]),
            records_expected: self.records_expected.with_label_values(&[id]),
            families: self.families.clone(),
            quarantined: Reason::ALL.iter().map(|r| self.quarantined.with_label_values(&[id, r.as_str()])).collect(),
        }
    }

    /// The rule-set version each detector runs (from `ward_ruleset_info`).
    pub fn ruleset_versions(&self) -> std::collections::BTreeMap<String, String> {
        use prometheus::core::Collector;
        let mut out = std::collections::BTreeMap::new();
        for family in self.ruleset_info.collect() {
            for m in family.get_metric() {
                let label = |n: &str| m.get_label().iter().find(|l| l.name() == n).map(|l| l.value().to_string());
                if let (Some(c), Some(v)) = (label("component"), label("version")) {
                    out.insert(c, v);
                }
            }
        }
        out
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

#[derive(Clone)]
pub struct AdminMetrics {
    pub open: IntGauge,
    pub rejected: IntCounter,
}

/// Checkpoint figures, updated when a checkpoint completes.
#[derive(Clone)]
pub struct CheckpointMetrics {
    pub completed: IntCounter,
    pub epoch: IntGauge,
    pub bytes: IntGauge,
    pub timestamp: Gauge,
    pub duration: prometheus::Histogram,
}

/// One component's counters, label values resolved once.
#[derive(Clone)]
pub struct ComponentMetrics {
    pub id: Arc<str>,
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub filtered: IntCounter,
    pub errors: IntCounter,
    pub bytes_in: IntCounter,
    pub batch_seconds: prometheus::Histogram,
    pub reloads: IntCounter,
    pub reload_failures: IntCounter,
    pub alerts: IntCounter,
    /// sigma-match: events over the match budget, and rule evaluations it left undecided.
    pub match_over_budget: IntCounter,
    pub match_undecided: IntCounter,
    pub rules_compiled: IntGauge,
    pub rules_rejected: IntGauge,
    ruleset_info: IntGaugeVec,
    pub watermark_lag: Gauge,
    pub watermark: Gauge,
    pub late: IntCounter,
    pub state_keys: IntGauge,
    /// Sources: records expected in all (0: unknown), for progress and ETA.
    pub records_expected: IntGauge,
    /// Where the component registers families of its own.
    pub families: Arc<Families>,
    quarantined: Vec<IntCounter>,
}

impl ComponentMetrics {
    /// Marks `version` as the running rule set (and `previous`, if any, as no longer running).
    pub fn set_ruleset_version(&self, previous: Option<&str>, version: &str) {
        if let Some(p) = previous {
            let _ = self.ruleset_info.remove_label_values(&[&self.id, p]);
        }
        self.ruleset_info.with_label_values(&[&*self.id, version]).set(1);
    }
    /// Records an event-time watermark (skips the open-ended values).
    pub fn set_watermark(&self, t: crate::time::EventTime) {
        if t == crate::time::WATERMARK_MIN || t == crate::time::WATERMARK_END {
            return;
        }
        let now = chrono::Utc::now().timestamp_millis();
        self.watermark.set(t as f64 / 1000.0);
        self.watermark_lag.set((now - t) as f64 / 1000.0);
    }
    pub fn quarantined(&self, reason: Reason) -> &IntCounter {
        let i = Reason::ALL.iter().position(|r| *r == reason).expect("every reason has a counter");
        &self.quarantined[i]
    }
    pub fn quarantined_total(&self) -> u64 {
        self.quarantined.iter().map(|c| c.get()).sum()
    }
    /// Quarantined counts by reason, non-zero only.
    pub fn quarantined_by_reason(&self) -> Vec<(Reason, u64)> {
        Reason::ALL.iter().zip(&self.quarantined).filter(|(_, c)| c.get() > 0).map(|(r, c)| (*r, c.get())).collect()
    }
}

/// Metric families a component kind registers for itself, by name: the first instance to ask
/// registers the family, later ones (other workers, other components of the kind) get the same
/// one. So the engine's registry needs to know nothing about Kafka partitions, SLA times or a
/// sink's circuit breaker.
pub struct Families {
    registry: Registry,
    made: std::sync::Mutex<std::collections::HashMap<String, Box<dyn std::any::Any + Send + Sync>>>,
}

impl Families {
    fn get_or_make<T: Clone + Send + Sync + 'static>(
        &self,
        name: &str,
        make: impl FnOnce() -> T,
        collector: impl FnOnce(&T) -> Box<dyn prometheus::core::Collector>,
    ) -> T {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = made.get(name) {
            return existing
                .downcast_ref::<T>()
                .unwrap_or_else(|| panic!("metric family {name} registered twice with different types"))
                .clone();
        }
        let family = make();
        self.registry.register(collector(&family)).expect("unique metric");
        made.insert(name.to_string(), Box::new(family.clone()));
        family
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.get_or_make(
            name,
            || IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            |f| Box::new(f.clone()),
        )
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.get_or_make(
            name,
            || IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            |f| Box::new(f.clone()),
        )
    }

    pub fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
        self.get_or_make(
            name,
            || prometheus::GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            |f| Box::new(f.clone()),
        )
    }

    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
        self.get_or_make(
            name,
            || HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric"),
            |f| Box::new(f.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_named_families_with_labels() {
        let m = Metrics::new();
        let c = m.component("parse");
        c.records_in.inc_by(10);
        c.quarantined(Reason::InvalidJson).inc();
        c.batch_seconds.observe(0.001);
        let text = m.render();
        assert!(text.contains("ward_records_in_total{component=\"parse\"} 10"));
        assert!(text.contains("ward_records_quarantined_total{component=\"parse\",reason=\"invalid_json\"} 1"));
        assert!(text.contains("ward_batch_duration_seconds_bucket{component=\"parse\""));
        assert_eq!(c.quarantined_total(), 1);
    }

    #[test]
    fn a_cluster_process_labels_every_series_with_its_index() {
        let m = Metrics::for_process(2);
        m.component("parse").records_in.inc_by(3);
        let text = m.render();
        assert!(text.contains("ward_records_in_total{component=\"parse\",process=\"2\"} 3"), "{text}");
        let unlabelled =
            text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).find(|l| !l.contains("process=\"2\""));
        assert!(unlabelled.is_none(), "{unlabelled:?}");
    }

    #[test]
    fn components_register_their_own_families_once() {
        let m = Metrics::new();
        let (a, b) = (m.component("k1"), m.component("k2"));
        let lag = a.families.gauge_vec("ward_test_lag", "test", &["component", "partition"]);
        b.families
            .gauge_vec("ward_test_lag", "test", &["component", "partition"])
            .with_label_values(&["k2", "p"])
            .set(3);
        lag.with_label_values(&["k1", "p"]).set(5);
        let text = m.render();
        assert!(text.contains("ward_test_lag{component=\"k1\",partition=\"p\"} 5"), "{text}");
        assert!(text.contains("ward_test_lag{component=\"k2\",partition=\"p\"} 3"), "{text}");
    }
}
