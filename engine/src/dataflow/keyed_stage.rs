//! The keyed half of a stateful operator: records exchanged by key group, processed epoch by
//! epoch once each epoch is complete, the watermark the minimum of every route's marks, state
//! snapshotted by key group into checkpoints and restored from them for any worker count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::context::RunContext;
use super::emit::emit;
use super::{Epoch, PayloadStream, RoutedStream};
use crate::component::{OperatorOutput, Payload, Progress};
use crate::key_groups::owned_groups;
use crate::keyed::{decode, encode, KeyedOperator, Routed, RoutedBody};
use crate::metrics::ComponentMetrics;
use crate::time::{EventTime, WATERMARK_END, WATERMARK_MIN};

/// Which part of the checkpoints a snapshot is.
#[derive(Clone, Copy, Debug)]
enum Snapshot {
    /// The part of checkpoint `c`: the state after epoch `c`.
    Checkpoint(Epoch),
    /// The final part of a retiring worker: the state after epoch `newest`, standing in for
    /// every checkpoint from there on.
    Final { newest: Epoch },
}

/// Writes this worker's part (the state of the key groups it owns and its watermark). A
/// failure stops the run.
fn write_snapshot(
    op: &dyn KeyedOperator,
    me: usize,
    workers: usize,
    watermark: EventTime,
    which: Snapshot,
    part: &str,
    run: &RunContext,
) {
    let Some(ck) = run.checkpointer() else { return };
    let owned: Vec<u16> = owned_groups(me, workers).collect();
    let groups = op.snapshot_groups(&owned);
    let result = groups.and_then(|g| encode(&(watermark, g))).and_then(|bytes| match which {
        Snapshot::Checkpoint(c) => ck.write(c, part, &bytes),
        Snapshot::Final { newest } => ck.retire(part, bytes, newest),
    });
    if let Err(e) = result {
        run.fail(format!("{part}: checkpoint: {e:#}"));
    }
}

pub(crate) fn keyed_stage<'s>(
    routed: RoutedStream<'s>,
    inputs: usize,
    component: Arc<str>,
    mut op: Box<dyn KeyedOperator>,
    metrics: ComponentMetrics,
    run: Arc<RunContext>,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let scope = routed.scope();
    let workers = scope.peers();
    let me = scope.index();
    let prefix = crate::checkpoint::part_prefix("keyed", &component, None);
    let part = format!("{prefix}{me}");
    // State of the key groups this worker owns, from whichever workers wrote them.
    let mut restored_watermark = WATERMARK_MIN;
    if run.restored().is_some() {
        let owned: Vec<u16> = owned_groups(me, workers).collect();
        for bytes in run.restored_parts(&prefix) {
            if bytes.is_empty() {
                continue;
            }
            let restored = decode::<(EventTime, Vec<(u16, Vec<u8>)>)>(bytes).and_then(|(wm, groups)| {
                restored_watermark = restored_watermark.max(wm);
                for (g, state) in groups.iter().filter(|(g, _)| owned.contains(g)) {
                    op.restore(*g, state)?;
                }
                Ok(())
            });
            if let Err(e) = restored {
                run.fail(format!("{part}: cannot restore its state from the checkpoint: {e:#}"));
            }
        }
    }
    let mut builder = OperatorBuilder::new(format!("keyed:{component}"), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(routed, Exchange::new(|r: &Routed| r.target as u64));
    let (mut main_out, main) = builder.new_output::<Vec<Payload>>();
    let (mut q_out, quarantine) = builder.new_output::<Vec<Payload>>();
    builder.build(move |mut caps| {
        let mut held = Some((caps.remove(0), caps.remove(0)));
        let mut stash: BTreeMap<Epoch, Vec<Routed>> = BTreeMap::new();
        let mut marks = vec![WATERMARK_MIN; inputs * workers];
        let mut watermark = restored_watermark;
        let mut checkpointed: Epoch = 0;
        // The newest epoch processed (the final part is the state after it).
        let mut processed: Epoch = 0;
        let mut forwarded = WATERMARK_MIN;
        let mut result = OperatorOutput::default();
        let mut next_tick = Instant::now();
        let mut restored_at = run.resumed_from();
        // A resumed run's own records and outputs come after the checkpoint it resumed from:
        // only the restored state's re-feed is at the checkpoint's epoch. (A mark or a timer
        // at epoch 0 would otherwise reach downstream state before the re-feed it follows.)
        let floor = run.resumed_from().map_or(0, |c| c + 1);
        move |frontiers| {
            if let (Some(c), Some((cap, qcap))) = (restored_at.take(), held.as_ref()) {
                op.restored(&mut result);
                if *cap.time() <= c {
                    emit(&mut result, &mut main_out, &mut q_out, &cap.delayed(&c), &qcap.delayed(&c), &metrics);
                }
                result = OperatorOutput::default();
            }
            input.for_each(|cap, data| {
                stash.entry(cap.least().copied().unwrap_or(0).max(floor)).or_default().append(data);
            });
            let frontier = frontiers[0].frontier();
            let Some((cap, qcap)) = held.as_mut() else {
                stash.clear();
                return;
            };
            // Complete epochs, oldest first.
            while let Some(entry) = stash.first_entry() {
                let epoch = *entry.key();
                if frontier.less_equal(&epoch) {
                    break;
                }
                // A checkpoint between the epochs processed so far and this one: its state is
                // the state now, before this epoch (the frontier may have jumped past several
                // epochs, so this cannot wait until after the loop).
                if let Some(c) = run.checkpointer().and_then(|ck| ck.due(checkpointed, epoch)) {
                    write_snapshot(&*op, me, workers, watermark, Snapshot::Checkpoint(c), &part, &run);
                    checkpointed = c + 1;
                }
                let messages = entry.remove();
                processed = processed.max(epoch);
                let started = Instant::now();
                op.begin_epoch(epoch);
                for m in messages {
                    match m.body {
                        RoutedBody::Events(batch) => op.process_events(batch, &mut result),
                        RoutedBody::Alerts(alerts) => {
                            for (alert, primary) in alerts {
                                op.process_alert(alert, primary, &mut result);
                            }
                        }
                        RoutedBody::Cases(cases) => {
                            for (case, primary) in cases {
                                op.process_case(case, primary, &mut result);
                            }
                        }
                        RoutedBody::Watermark { input, worker, time } => {
                            let slot = &mut marks[input as usize * workers + worker as usize];
                            *slot = (*slot).max(time);
                        }
                    }
                }
                let low = marks.iter().copied().min().unwrap_or(WATERMARK_END);
                if low > watermark {
                    watermark = low;
                    op.advance(watermark, &mut result);
                    metrics.set_watermark(watermark);
                }
                let at = cap.delayed(&epoch);
                let qat = qcap.delayed(&epoch);
                emit(&mut result, &mut main_out, &mut q_out, &at, &qat, &metrics);
                // Forward the watermark after the outputs it released, held back by state the
                // operator may still emit.
                let mark = op.hold().map_or(watermark, |h| h.min(watermark));
                if mark > forwarded {
                    forwarded = mark;
                    main_out.activate().give(
                        &at,
                        &mut vec![Payload::Progress(Progress::Watermark { from: component.clone(), time: mark })],
                    );
                }
                metrics.state_keys.set(op.live_keys() as i64);
                metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
            }
            if let Some(ck) = run.checkpointer() {
                // Every epoch before the frontier is processed: the state is that after them.
                let upto = frontier.iter().next().copied();
                let due = upto.and_then(|f| ck.due(checkpointed, f));
                if due.is_some() || upto.is_none() {
                    let which = due.map_or(Snapshot::Final { newest: processed }, Snapshot::Checkpoint);
                    write_snapshot(&*op, me, workers, watermark, which, &part, &run);
                    if let Some(c) = due {
                        checkpointed = c + 1;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + Duration::from_secs(1);
                op.tick(chrono::Utc::now().timestamp_millis(), &mut result);
                let at = (*cap.time()).max(floor);
                emit(&mut result, &mut main_out, &mut q_out, &cap.delayed(&at), &qcap.delayed(&at), &metrics);
                metrics.set_watermark(watermark);
                if !frontier.is_empty() {
                    activator.activate_after(Duration::from_secs(1));
                }
            }
            let low = stash.keys().next().copied();
            match (frontier.iter().next().copied(), low) {
                (None, None) => held = None,
                (f, s) => {
                    let t = match (f, s) {
                        (Some(a), Some(b)) => a.min(b),
                        (Some(a), None) | (None, Some(a)) => a,
                        (None, None) => unreachable!(),
                    };
                    if *cap.time() < t {
                        cap.downgrade(&t);
                        qcap.downgrade(&t);
                    }
                    if f.is_none() {
                        activator.activate();
                    }
                }
            }
        }
    });
    (main, quarantine)
}
