//! The dataflow around a keyed, stateful operator (see [`crate::keyed`] and [`crate::time`]):
//!
//! ```text
//! input 0 ──► route (worker-local: event time, lateness, watermark, keys) ─┐
//! input 1 ──► route ─────────────────────────────────────────────────────────┤ exchange by
//!                                                                             ▼ key group
//!                                          keyed operator (state, watermark = min of marks)
//! ```
//!
//! The keyed half processes its input epoch by epoch, in epoch order, once the epoch is
//! complete: its state after epoch `e` reflects exactly the records of epochs `≤ e`, which is
//! what a checkpoint of `e` must hold.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::operators::Concatenate;

use super::context::RunContext;
use super::keyed_stage::keyed_stage;
use super::route::{route_stage, InputTiming};
use super::PayloadStream;
use crate::keyed::{KeyedOperator, Router};
use crate::metrics::ComponentMetrics;

/// Builds the route stages, the exchange and the keyed operator. Returns the main and the
/// quarantine output of the component.
pub(crate) fn build_stateful<'s>(
    inputs: Vec<(PayloadStream<'s>, InputTiming)>,
    component: Arc<str>,
    router: Box<dyn Router>,
    op: Box<dyn KeyedOperator>,
    metrics: ComponentMetrics,
    run: Arc<RunContext>,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let scope = inputs[0].0.scope();
    let router = Rc::new(RefCell::new(router));
    let n_inputs = inputs.len();
    let mut routed = Vec::new();
    let mut mains = Vec::new();
    let mut quarantines = Vec::new();
    for (i, (stream, timing)) in inputs.into_iter().enumerate() {
        let (r, m, q) =
            route_stage(stream, i as u32, timing, router.clone(), component.clone(), metrics.clone(), run.clone());
        routed.push(r);
        mains.push(m);
        quarantines.push(q);
    }
    let routed = if routed.len() == 1 { routed.pop().expect("one") } else { scope.concatenate(routed) };
    let (main, quarantine) = keyed_stage(routed, n_inputs, component, op, metrics, run);
    mains.push(main);
    quarantines.push(quarantine);
    (scope.concatenate(mains), scope.concatenate(quarantines))
}
