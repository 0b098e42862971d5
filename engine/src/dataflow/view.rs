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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use differential_dataflow::collection::AsCollection;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::context::RunContext;
use super::stateful::build_stateful;
use super::{Epoch, PayloadStream};
use crate::component::Payload;
use crate::key_groups::{key_group, owned_groups, worker_for};
use crate::keyed::{decode, encode, KeyedOperator, Router};
use crate::metrics::ComponentMetrics;
use crate::view::{key_hash, top_order, ViewChange, ViewKey, ViewLogic, ViewShape, ViewValue};

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
                best.sort_by(|a, b| top_order((&a.0, &a.1), (&b.0, &b.1)));
                for r in best.into_iter().take(k) {
                    out.push(((r.1.clone(), r.2.clone()), 1isize));
                }
            })
            .map(|(window, (group, m))| (ViewKey { window, group }, m)),
    };

    // Finishing: per epoch, by key group, the consolidated changes minus closed keys'
    // retractions and minus the restored state's re-feed, each with the epoch its row was
    // inserted at. The live rows (key → measures, version) are this stage's state.
    let shape = logic.shape();
    let resumed = run.resumed_from();
    let workers = scope.peers();
    let me = scope.index();
    let prefix = crate::checkpoint::part_prefix("view", &component, None);
    let part = format!("{prefix}{me}");
    let mut live = LiveRows::default();
    if run.restored().is_some() {
        let owned: Vec<u16> = owned_groups(me, workers).collect();
        for bytes in run.restored_parts(&prefix) {
            if let Err(e) = live.restore(bytes, &owned) {
                run.fail(format!("{part}: cannot restore its state from the checkpoint: {e:#}"));
            }
        }
    }
    let owner = move |k: &ViewKey| worker_for(key_group(key_hash(k)), workers) as u64;
    let mut builder = OperatorBuilder::new(format!("view-changes:{component}"), scope);
    let mut rows_in = builder.new_input(rows.inner, Exchange::new(move |u: &(Row, Epoch, isize)| owner(&u.0 .0)));
    let mut closed_in = builder.new_input(closed, Exchange::new(owner));
    let (mut out, changes) = builder.new_output::<Vec<Payload>>();
    builder.build(move |mut caps| {
        let mut cap = Some(caps.remove(0));
        let mut pending: BTreeMap<Epoch, (Vec<(Row, isize)>, Vec<ViewKey>)> = BTreeMap::new();
        let mut checkpointed: Epoch = 0;
        let mut processed: Epoch = 0;
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
            let low = frontiers.iter().filter_map(|f| f.frontier().iter().next().copied()).min();
            while let Some(entry) = pending.first_entry() {
                let t = *entry.key();
                if low.is_some_and(|l| l <= t) {
                    break;
                }
                // A checkpoint between the epochs finished so far and this one: the state now.
                if let Some(c) = run.checkpointer().and_then(|ck| ck.due(checkpointed, t)) {
                    live.write(me, workers, Some(c), &part, &run);
                    checkpointed = c + 1;
                }
                let (rows, closed) = entry.remove();
                processed = processed.max(t);
                // Everything of a resumed run but the re-feed comes after the checkpoint (the
                // keyed stages hold to it): a change before it would meet an empty arrangement.
                debug_assert!(
                    resumed.is_none_or(|c| t >= c),
                    "view {component}: epoch {t} before the resumed checkpoint"
                );
                if resumed == Some(t) {
                    // The restored state's re-feed: the sinks hold these rows already.
                    continue;
                }
                let mut changes = live.apply(&shape, t, rows, closed);
                if !changes.is_empty() {
                    out.activate()
                        .give(&held.delayed(&t), &mut vec![Payload::ViewChanges(std::mem::take(&mut changes))]);
                }
            }
            if let Some(ck) = run.checkpointer() {
                let due = low.and_then(|f| ck.due(checkpointed, f));
                if due.is_some() || low.is_none() {
                    live.write(me, workers, due, &part, &run);
                    match due {
                        Some(c) => checkpointed = c + 1,
                        None => {
                            // Retired: the final part stands for every later checkpoint.
                            let bytes = live.encode(me, workers);
                            if let Err(e) = bytes.and_then(|b| ck.retire(&part, b, processed)) {
                                run.fail(format!("{part}: checkpoint: {e:#}"));
                            }
                        }
                    }
                }
            }
            match low {
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

/// A view's live rows on one worker, by key group: each key's measures and the epoch its row
/// was inserted at (a retraction carries it too).
#[derive(Default)]
struct LiveRows {
    groups: HashMap<u16, BTreeMap<ViewKey, (Vec<ViewValue>, Epoch)>>,
}

impl LiveRows {
    /// The changes of epoch `t`: `rows` (unconsolidated) less the retractions of `closed` keys,
    /// whose rows are forgotten.
    fn apply(
        &mut self,
        shape: &Arc<ViewShape>,
        t: Epoch,
        mut rows: Vec<(Row, isize)>,
        mut closed: Vec<ViewKey>,
    ) -> Vec<ViewChange> {
        closed.sort();
        for key in &closed {
            if let Some(g) = self.groups.get_mut(&key_group(key_hash(key))) {
                g.remove(key);
            }
        }
        rows.sort();
        let mut net: Vec<(Row, isize)> = Vec::with_capacity(rows.len());
        for (row, d) in rows {
            match net.last_mut() {
                Some((r, n)) if *r == row => *n += d,
                _ => net.push((row, d)),
            }
        }
        net.retain(|((key, _), d)| *d != 0 && closed.binary_search(key).is_err());
        let mut changes = Vec::with_capacity(net.len());
        // Retractions first: a key's new row replaces its old one.
        for ((key, measures), d) in net.iter().filter(|(_, d)| *d < 0) {
            let g = self.groups.entry(key_group(key_hash(key))).or_default();
            let version = match g.get(key) {
                Some((m, v)) if m == measures => {
                    let v = *v;
                    g.remove(key);
                    v
                }
                // Not the live row (cannot happen with consistent input): keep what is live.
                Some((_, v)) => *v,
                None => t,
            };
            changes.push(ViewChange {
                shape: shape.clone(),
                epoch: t,
                version,
                key: key.clone(),
                measures: measures.clone(),
                diff: *d as i64,
            });
        }
        for ((key, measures), d) in net.into_iter().filter(|(_, d)| *d > 0) {
            self.groups.entry(key_group(key_hash(&key))).or_default().insert(key.clone(), (measures.clone(), t));
            changes.push(ViewChange { shape: shape.clone(), epoch: t, version: t, key, measures, diff: d as i64 });
        }
        changes
    }

    fn encode(&self, me: usize, workers: usize) -> anyhow::Result<Vec<u8>> {
        let groups: Vec<(u16, Vec<(&ViewKey, &Vec<ViewValue>, Epoch)>)> = owned_groups(me, workers)
            .filter_map(|g| self.groups.get(&g).filter(|rows| !rows.is_empty()).map(|rows| (g, rows)))
            .map(|(g, rows)| (g, rows.iter().map(|(k, (m, v))| (k, m, *v)).collect()))
            .collect();
        encode(&groups)
    }

    /// Writes this worker's part of checkpoint `c` (None: nothing due). A failure stops the run.
    fn write(&self, me: usize, workers: usize, c: Option<Epoch>, part: &str, run: &RunContext) {
        let (Some(c), Some(ck)) = (c, run.checkpointer()) else { return };
        if let Err(e) = self.encode(me, workers).and_then(|b| ck.write(c, part, &b)) {
            run.fail(format!("{part}: checkpoint: {e:#}"));
        }
    }

    fn restore(&mut self, bytes: &[u8], owned: &[u16]) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let groups: Vec<(u16, Vec<(ViewKey, Vec<ViewValue>, Epoch)>)> = decode(bytes)?;
        for (g, rows) in groups.into_iter().filter(|(g, _)| owned.contains(g)) {
            let live = self.groups.entry(g).or_default();
            for (k, m, v) in rows {
                live.insert(k, (m, v));
            }
        }
        Ok(())
    }
}
