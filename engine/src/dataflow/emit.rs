//! The one way a stage hands an operator's output downstream: alerts, cases and events on the
//! main output, quarantined records on the quarantine output, and the component's counters
//! (out, filtered, alerts raised, quarantined by reason) updated in one place.

use timely::dataflow::operators::CapabilityTrait;

use super::Epoch;
use crate::component::{OperatorOutput, Payload};
use crate::metrics::ComponentMetrics;

pub(crate) type PayloadOutput = timely::dataflow::channels::pushers::Output<Epoch, Vec<Payload>>;

/// Sends what `result` holds (leaving it empty for the next batch) at `at` (main) and `qat`
/// (quarantine).
pub(crate) fn emit(
    result: &mut OperatorOutput,
    main: &mut PayloadOutput,
    quarantine: &mut PayloadOutput,
    at: &impl CapabilityTrait<Epoch>,
    qat: &impl CapabilityTrait<Epoch>,
    metrics: &ComponentMetrics,
) {
    metrics.records_out.inc_by(result.out_len() as u64);
    metrics.filtered.inc_by(result.filtered);
    metrics.alerts.inc_by(result.alerts.len() as u64);
    result.filtered = 0;
    result.consumed = 0;
    let mut msg: Vec<Payload> = Vec::new();
    if !result.alerts.is_empty() {
        msg.push(Payload::Alerts(std::sync::Arc::new(std::mem::take(&mut result.alerts))));
    }
    if !result.cases.is_empty() {
        msg.push(Payload::Cases(std::mem::take(&mut result.cases)));
    }
    if !result.view.is_empty() {
        msg.push(Payload::ViewDelta(std::mem::take(&mut result.view)));
    }
    msg.extend(result.events.drain(..).filter(|b| !b.is_empty()).map(|b| Payload::Events(std::sync::Arc::new(b))));
    if !msg.is_empty() {
        main.activate().give(at, &mut msg);
    }
    if !result.quarantine.is_empty() {
        for r in &result.quarantine {
            metrics.quarantined(r.reason).inc();
        }
        let records = std::mem::take(&mut result.quarantine);
        quarantine.activate().give(qat, &mut vec![Payload::Quarantine(records)]);
    }
}
