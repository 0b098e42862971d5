//! The dataflow of a view (see [`crate::view`]):
//!
//! ```text
//! inputs ──► route ──► keyed state (windows' inputs, by key group) ──► updates ──► reduce ──► [top-k reduce]
//!                                              │                                                   │
//!                                              └── closed keys ──► finish (per epoch, by key) ◄────┘──► changes
//! ```
//!
//! The keyed half is the one every stateful operator has (checkpointed by key group);
//! differential-dataflow's arrangements are not checkpointed but rebuilt on restore: the
//! keyed state re-feeds its inputs at the restored checkpoint's epoch, and the rows that
//! produces, which sinks already hold, are not emitted again.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::collection::AsCollection;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::context::RunContext;
use super::stateful::build_stateful;
use super::{Epoch, PayloadStream};
use crate::component::Payload;
use crate::keyed::{KeyedOperator, Router};
use crate::metrics::ComponentMetrics;
use crate::view::{key_hash, top_order, ViewChange, ViewKey, ViewLogic, ViewValue};

type Row = (ViewKey, Vec<ViewValue>);

pub(crate) fn build_view<'s>(
    inputs: Vec<(PayloadStream<'s>, super::route::InputTiming)>,
    component: Arc<str>,
    router: Box<dyn Router>,
    op: Box<dyn KeyedOperator>,
    logic: Arc<dyn ViewLogic>,
    metrics: ComponentMetrics,
    run: Arc<RunContext>,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let scope = inputs[0].0.scope();
    let (deltas, quarantine) = build_stateful(inputs, component.clone(), router, op, metrics.clone(), run.clone());

    // The keyed state's deltas: updates into differential, closed keys to the finishing stage.
    let mut builder = OperatorBuilder::new(format!("view-delta:{component}"), scope);
    let mut input = builder.new_input(deltas, Pipeline);
    let (mut updates_out, updates) = builder.new_output::<Vec<((ViewKey, Vec<ViewValue>), Epoch, isize)>>();
    let (mut closed_out, closed) = builder.new_output::<Vec<ViewKey>>();
    builder.build(move |_caps| {
        move |_frontiers| {
            input.for_each(|cap, data| {
                let t = cap.least().copied().unwrap_or(0);
                for p in data.drain(..) {
                    if let Payload::ViewDelta(d) = p {
                        let mut u: Vec<_> =
                            d.updates.into_iter().map(|u| ((u.key, u.input), t, u.diff as isize)).collect();
                        if !u.is_empty() {
                            updates_out.activate().give(&cap, &mut u);
                        }
                        let mut c = d.closed;
                        if !c.is_empty() {
                            closed_out.activate().give(&cap, &mut c);
                        }
                    }
                }
            });
        }
    });

    let measures = logic.clone();
    let rows = updates.as_collection().reduce_named("view-measures", move |key, inputs, out| {
        out.push((measures.measures(key, inputs), 1isize));
    });
    let rows = match logic.top() {
        None => rows,
        Some((k, by)) => rows
            .map(move |(key, m)| (key.window, (m.get(by).cloned().unwrap_or(ViewValue::Null), key.group, m)))
            .reduce_named("view-top", move |_window, ranked, out| {
                let mut best: Vec<&(ViewValue, Vec<ViewValue>, Vec<ViewValue>)> =
                    ranked.iter().map(|(r, _)| *r).collect();
                best.sort_by(|a, b| top_order(&(a.0.clone(), a.1.clone()), &(b.0.clone(), b.1.clone())));
                for r in best.into_iter().take(k) {
                    out.push(((r.1.clone(), r.2.clone()), 1isize));
                }
            })
            .map(|(window, (group, m))| (ViewKey { window, group }, m)),
    };

    // Finishing: per epoch, by key, the consolidated changes minus closed keys' retractions and
    // minus the restored state's re-feed.
    let shape = logic.shape();
    let resumed = run.resumed_from();
    let mut builder = OperatorBuilder::new(format!("view-changes:{component}"), scope);
    let mut rows_in = builder.new_input(rows.inner, Exchange::new(|u: &(Row, Epoch, isize)| key_hash(&u.0 .0)));
    let mut closed_in = builder.new_input(closed, Exchange::new(key_hash));
    let (mut out, changes) = builder.new_output::<Vec<Payload>>();
    builder.build(move |mut caps| {
        let mut cap = Some(caps.remove(0));
        let mut pending: BTreeMap<Epoch, (Vec<(Row, isize)>, Vec<ViewKey>)> = BTreeMap::new();
        move |frontiers| {
            rows_in.for_each(|_cap, data| {
                for (row, t, d) in data.drain(..) {
                    pending.entry(t).or_default().0.push((row, d));
                }
            });
            closed_in.for_each(|c, data| {
                let t = c.least().copied().unwrap_or(0);
                pending.entry(t).or_default().1.append(data);
            });
            let Some(held) = cap.as_mut() else {
                pending.clear();
                return;
            };
            let done = |t: &Epoch| frontiers.iter().all(|f| !f.frontier().less_equal(t));
            while let Some(entry) = pending.first_entry() {
                let t = *entry.key();
                if !done(&t) {
                    break;
                }
                let (mut rows, mut closed) = entry.remove();
                if resumed == Some(t) {
                    continue;
                }
                closed.sort();
                rows.sort();
                let mut changes = Vec::new();
                let mut i = 0;
                while i < rows.len() {
                    let mut j = i;
                    let mut diff = 0isize;
                    while j < rows.len() && rows[j].0 == rows[i].0 {
                        diff += rows[j].1;
                        j += 1;
                    }
                    let (key, m) = &rows[i].0;
                    if diff != 0 && closed.binary_search(key).is_err() {
                        changes.push(ViewChange {
                            shape: shape.clone(),
                            epoch: t,
                            key: key.clone(),
                            measures: m.clone(),
                            diff: diff as i64,
                        });
                    }
                    i = j;
                }
                if !changes.is_empty() {
                    out.activate().give(&held.delayed(&t), &mut vec![Payload::ViewChanges(changes)]);
                }
            }
            let lows = frontiers.iter().filter_map(|f| f.frontier().iter().next().copied()).min();
            match lows {
                None => cap = None,
                Some(low) => {
                    if *held.time() < low {
                        held.downgrade(&low);
                    }
                }
            }
        }
    });
    (changes, quarantine)
}
