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
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::Stream;

use crate::alert::Alert;
use crate::batch::EventBatch;
use crate::component::{OperatorOutput, Payload, Progress};
use crate::key_groups::{key_group, owned_groups, worker_for};
use crate::keyed::{decode, encode, KeyedOperator, RecordRef, Route, Routed, RoutedBody, Router};
use crate::metrics::ComponentMetrics;
use crate::quarantine::{QuarantineRecord, Reason};
use crate::runtime::Checkpointing;
use crate::time::{
    describe, event_time, EventTime, EventTimeConfig, Observed, WatermarkTracker, WATERMARK_END, WATERMARK_MIN,
};

type Epoch = u64;
type PayloadStream<'s> = Stream<'s, Epoch, Vec<Payload>>;
type RoutedStream<'s> = Stream<'s, Epoch, Vec<Routed>>;
/// (source, partition) → newest event time.
type NewestByPartition = HashMap<(Arc<str>, Arc<str>), EventTime>;

/// Where an input's event time comes from.
#[derive(Clone, Debug, Default)]
pub struct InputTiming {
    /// Sources read directly (through stateless operators only), with their settings.
    pub sources: HashMap<String, EventTimeConfig>,
    /// Stateful operators upstream whose watermark marks this input follows.
    pub upstream: Vec<Arc<str>>,
}

impl InputTiming {
    /// Records come through another stateful operator (its marks order them).
    fn forwarded(&self) -> bool {
        !self.upstream.is_empty()
    }
}

/// Builds the route stages, the exchange and the keyed operator. Returns the main and the
/// quarantine output of the component.
pub(crate) fn build<'s>(
    inputs: Vec<(PayloadStream<'s>, InputTiming)>,
    component: Arc<str>,
    router: Box<dyn Router>,
    op: Box<dyn KeyedOperator>,
    metrics: ComponentMetrics,
    checkpoint: Option<Arc<Checkpointing>>,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let scope = inputs[0].0.scope();
    let router = Rc::new(RefCell::new(router));
    let n_inputs = inputs.len();
    let mut routed = Vec::new();
    let mut mains = Vec::new();
    let mut quarantines = Vec::new();
    for (i, (stream, timing)) in inputs.into_iter().enumerate() {
        let (r, m, q) = route_stage(
            stream,
            i as u32,
            timing,
            router.clone(),
            component.clone(),
            metrics.clone(),
            checkpoint.clone(),
        );
        routed.push(r);
        mains.push(m);
        quarantines.push(q);
    }
    let routed = if routed.len() == 1 { routed.pop().expect("one") } else { scope.concatenate(routed) };
    let (main, quarantine) = keyed_stage(routed, n_inputs, component, op, metrics, checkpoint);
    mains.push(main);
    quarantines.push(quarantine);
    (scope.concatenate(mains), scope.concatenate(quarantines))
}

/// Per-worker buffers of records bound for each worker.
struct Outbox {
    events: Vec<EventBatch>,
    alerts: Vec<Vec<(Alert, bool)>>,
}

impl Outbox {
    fn new(workers: usize) -> Self {
        Outbox { events: (0..workers).map(|_| EventBatch::new()).collect(), alerts: vec![Vec::new(); workers] }
    }
    fn drain(&mut self) -> Vec<Routed> {
        let mut out = Vec::new();
        for (w, b) in self.events.iter_mut().enumerate() {
            if !b.is_empty() {
                out.push(Routed { target: w as u32, body: RoutedBody::Events(std::mem::take(b)) });
            }
        }
        for (w, a) in self.alerts.iter_mut().enumerate() {
            if !a.is_empty() {
                out.push(Routed { target: w as u32, body: RoutedBody::Alerts(std::mem::take(a)) });
            }
        }
        out
    }
}

fn route_stage<'s>(
    input: PayloadStream<'s>,
    index: u32,
    timing: InputTiming,
    router: Rc<RefCell<Box<dyn Router>>>,
    component: Arc<str>,
    metrics: ComponentMetrics,
    checkpoint: Option<Arc<Checkpointing>>,
) -> (RoutedStream<'s>, PayloadStream<'s>, PayloadStream<'s>) {
    let scope = input.scope();
    let workers = scope.peers();
    let me = scope.index() as u32;
    let mut builder = OperatorBuilder::new(format!("route:{component}:{index}"), scope);
    let activator = scope.activator_for(builder.operator_info().address.clone());
    let mut input = builder.new_input(input, Pipeline);
    let (mut routed_out, routed) = builder.new_output::<Vec<Routed>>();
    let (mut main_out, main) = builder.new_output::<Vec<Payload>>();
    let (mut q_out, quarantine) = builder.new_output::<Vec<Payload>>();
    let forwarded = timing.forwarded();
    let prefix = crate::checkpoint::part_prefix("route", &component, Some(index as usize));
    let part = format!("{prefix}{me}");
    // Partitions' newest event times from the checkpoint the run resumed from.
    let mut restored: NewestByPartition = HashMap::new();
    if let Some(ck) = &checkpoint {
        for bytes in ck.restored_parts(&prefix) {
            if bytes.is_empty() {
                continue;
            }
            match decode::<Vec<(String, String, EventTime)>>(bytes) {
                Ok(v) => restored.extend(v.into_iter().map(|(s, p, t)| ((s.into(), p.into()), t))),
                Err(e) => ck.fail(format!("{part}: cannot restore the partitions' watermarks: {e:#}")),
            }
        }
    }
    builder.build(move |mut caps| {
        let mut held = Some(caps.remove(0));
        drop(caps);
        let mut tracker = WatermarkTracker::new(timing.sources, timing.upstream);
        // For checkpoints: each partition's newest event time as of the last checkpoint
        // written, and the newest per epoch since (records arrive out of epoch order across
        // inputs, so the state "after epoch c" is assembled from these).
        let mut newest: NewestByPartition = HashMap::new();
        let mut newest_by_epoch: BTreeMap<Epoch, NewestByPartition> = BTreeMap::new();
        let mut origin_newest: Vec<EventTime> = Vec::new();
        let mut checkpointed: Epoch = 0;
        // The newest epoch records arrived at (the final part reflects every epoch up to it).
        let mut newest_epoch: Epoch = 0;
        let mut sent = WATERMARK_MIN;
        // The latest epoch records were routed at: a watermark mark must not overtake them,
        // so it goes out at that epoch or later (the keyed stage processes epochs in order).
        let mut routed_epoch: Epoch = 0;
        let mut keys: Vec<u64> = Vec::new();
        let mut targets: Vec<usize> = Vec::new();
        let mut row_target: Vec<u32> = Vec::new();
        let mut outbox = Outbox::new(workers);
        let mut next_tick = Instant::now();
        move |frontiers| {
            let now = Instant::now();
            let mut router = router.borrow_mut();
            input.for_each(|cap, data| {
                let epoch = cap.least().copied().unwrap_or(0);
                newest_epoch = newest_epoch.max(epoch);
                router.begin_epoch(epoch);
                let mut quarantined: Vec<QuarantineRecord> = Vec::new();
                let mut passed: Vec<Payload> = Vec::new();
                let (mut received, mut filtered, mut out) = (0u64, 0u64, 0u64);
                let late = |q: &mut Vec<QuarantineRecord>, r: QuarantineRecord| {
                    metrics.late.inc();
                    q.push(r)
                };
                for payload in data.drain(..) {
                    match payload {
                        Payload::Progress(Progress::Partitions { source, partitions }) => {
                            if !forwarded {
                                for p in &partitions {
                                    tracker.announce(&source, p, now);
                                    if let Some(t) = restored.remove(&(source.clone(), p.clone())) {
                                        tracker.restore_partition(&source, p, t, now);
                                        newest.insert((source.clone(), p.clone()), t);
                                    }
                                }
                            }
                        }
                        Payload::Progress(Progress::Watermark { from, time }) => tracker.mark(&from, time),
                        Payload::Events(mut batch) => {
                            received += batch.len() as u64;
                            row_target.clear();
                            // For checkpoints: the newest on-time event per origin of the batch,
                            // merged into the epoch's partitions once per batch.
                            origin_newest.clear();
                            if checkpoint.is_some() && !forwarded {
                                origin_newest.resize(batch.origins().len(), WATERMARK_MIN);
                            }
                            let mut pass_rows = EventBatch::new();
                            for row in 0..batch.len() {
                                row_target.push(u32::MAX);
                                let Some(t) = event_time(&batch, row) else {
                                    quarantined.push(QuarantineRecord::from_row(
                                        &batch,
                                        row,
                                        &component,
                                        Reason::MissingEventTime,
                                        "the event has no @timestamp",
                                    ));
                                    continue;
                                };
                                let observed = if forwarded {
                                    tracker.observe_forwarded(t)
                                } else {
                                    let o = &batch.origins()[batch.rows()[row].origin as usize];
                                    tracker.observe(&o.source, &o.partition, t, now)
                                };
                                if let Observed::Late { watermark } = observed {
                                    let detail = late_detail(t, watermark);
                                    late(
                                        &mut quarantined,
                                        QuarantineRecord::from_row(&batch, row, &component, Reason::LateEvent, detail),
                                    );
                                    continue;
                                }
                                if let Some(n) = origin_newest.get_mut(batch.rows()[row].origin as usize) {
                                    *n = (*n).max(t);
                                }
                                keys.clear();
                                match router.route(RecordRef::Event { batch: &batch, row }, &mut keys) {
                                    Route::Drop => filtered += 1,
                                    Route::PassThrough => {
                                        pass_rows.push_row_from(&batch, row);
                                        out += 1;
                                    }
                                    Route::Keyed => match keys.first() {
                                        // Events go to the owner of their first key.
                                        Some(k) => row_target[row] = worker_for(key_group(*k), workers) as u32,
                                        None => filtered += 1,
                                    },
                                }
                            }
                            if !pass_rows.is_empty() {
                                passed.push(Payload::Events(pass_rows));
                            }
                            for (o, t) in
                                batch.origins().iter().zip(&origin_newest).filter(|(_, t)| **t > WATERMARK_MIN)
                            {
                                let m = newest_by_epoch.entry(epoch).or_default();
                                let slot = m.entry((o.source.clone(), o.partition.clone())).or_insert(*t);
                                *slot = (*slot).max(*t);
                            }
                            let first = row_target.first().copied().unwrap_or(u32::MAX);
                            if first != u32::MAX && row_target.iter().all(|t| *t == first) {
                                // The whole batch goes to one worker: no copy.
                                let w = first as usize;
                                if outbox.events[w].is_empty() {
                                    outbox.events[w] = std::mem::take(&mut batch);
                                } else {
                                    for row in 0..batch.len() {
                                        outbox.events[w].push_row_from(&batch, row);
                                    }
                                }
                            } else {
                                for (row, t) in row_target.iter().enumerate() {
                                    if *t != u32::MAX {
                                        outbox.events[*t as usize].push_row_from(&batch, row);
                                    }
                                }
                            }
                        }
                        Payload::Alerts(alerts) => {
                            received += alerts.len() as u64;
                            for alert in alerts {
                                let Some(t) = alert.event_time_ms else {
                                    quarantined.push(QuarantineRecord::from_alert(
                                        &alert,
                                        &component,
                                        Reason::MissingEventTime,
                                        "the alert has no event time",
                                    ));
                                    continue;
                                };
                                let observed = if forwarded {
                                    tracker.observe_forwarded(t)
                                } else {
                                    tracker.observe(&alert.origin.source, &alert.origin.partition, t, now)
                                };
                                if let Observed::Late { watermark } = observed {
                                    let detail = late_detail(t, watermark);
                                    late(
                                        &mut quarantined,
                                        QuarantineRecord::from_alert(&alert, &component, Reason::LateEvent, detail),
                                    );
                                    continue;
                                }
                                if checkpoint.is_some() && !forwarded {
                                    let key =
                                        (alert.origin.source.as_str().into(), alert.origin.partition.as_str().into());
                                    let slot = newest_by_epoch.entry(epoch).or_default().entry(key).or_insert(t);
                                    *slot = (*slot).max(t);
                                }
                                keys.clear();
                                let route = router.route(RecordRef::Alert(&alert), &mut keys);
                                targets.clear();
                                for k in &keys {
                                    let w = worker_for(key_group(*k), workers);
                                    if !targets.contains(&w) {
                                        targets.push(w);
                                    }
                                }
                                match route {
                                    Route::Drop => filtered += 1,
                                    Route::PassThrough => {
                                        for w in &targets {
                                            outbox.alerts[*w].push((alert.clone(), false));
                                        }
                                        out += 1;
                                        match passed.last_mut() {
                                            Some(Payload::Alerts(v)) => v.push(alert),
                                            _ => passed.push(Payload::Alerts(vec![alert])),
                                        }
                                    }
                                    Route::Keyed if targets.is_empty() => filtered += 1,
                                    Route::Keyed => {
                                        for (i, w) in targets.iter().enumerate() {
                                            outbox.alerts[*w].push((alert.clone(), i == 0));
                                        }
                                    }
                                }
                            }
                        }
                        other => passed.push(other),
                    }
                }
                metrics.records_in.inc_by(received);
                metrics.records_out.inc_by(out);
                metrics.filtered.inc_by(filtered);
                let mut routed = outbox.drain();
                if !routed.is_empty() {
                    routed_epoch = routed_epoch.max(cap.least().copied().unwrap_or(0));
                    routed_out.activate().give(&cap, &mut routed);
                }
                if !passed.is_empty() {
                    main_out.activate().give(&cap, &mut passed);
                }
                if !quarantined.is_empty() {
                    for r in &quarantined {
                        metrics.quarantined(r.reason).inc();
                    }
                    q_out.activate().give(&cap, &mut vec![Payload::Quarantine(quarantined)]);
                }
            });

            let frontier = frontiers[0].frontier();
            if let Some(ck) = &checkpoint {
                let upto = frontier.iter().next().copied();
                let due = match upto {
                    Some(f) => ck.checkpointer.due(checkpointed, f),
                    None => None,
                };
                if due.is_some() || upto.is_none() {
                    // Fold the epochs the checkpoint covers into the partitions' state.
                    let c = due.unwrap_or(Epoch::MAX);
                    while let Some(entry) = newest_by_epoch.first_entry() {
                        if *entry.key() > c {
                            break;
                        }
                        for (k, t) in entry.remove() {
                            let slot = newest.entry(k).or_insert(t);
                            *slot = (*slot).max(t);
                        }
                    }
                    let mut state: Vec<(String, String, EventTime)> =
                        newest.iter().map(|((s, p), t)| (s.to_string(), p.to_string(), *t)).collect();
                    state.sort();
                    let result = encode(&state).and_then(|bytes| match due {
                        Some(c) => ck.checkpointer.write(c, &part, &bytes),
                        None if held.is_some() => ck.checkpointer.retire(&part, bytes, newest_epoch),
                        None => Ok(()),
                    });
                    if let Err(e) = result {
                        ck.fail(format!("{part}: checkpoint: {e:#}"));
                    }
                    if let Some(c) = due {
                        checkpointed = c + 1;
                    }
                }
            }
            // Sources announce their partitions at epoch 0: until it is complete, a watermark
            // could pass a partition nobody has heard of yet.
            let ready = !frontier.less_equal(&0);
            let finished = frontier.is_empty();
            let resumable_stop = checkpoint.as_ref().is_some_and(|c| c.stopping());
            let watermark = if finished && !resumable_stop {
                tracker.finish()
            } else if finished {
                // Stopped to resume from a checkpoint: windows stay open in the state.
                tracker.emitted()
            } else if ready {
                tracker.watermark(now)
            } else {
                WATERMARK_MIN
            };
            if let Some(cap) = held.as_mut() {
                if watermark > sent {
                    sent = watermark;
                    let mut marks: Vec<Routed> = (0..workers)
                        .map(|w| Routed {
                            target: w as u32,
                            body: RoutedBody::Watermark { input: index, worker: me, time: watermark },
                        })
                        .collect();
                    let at = cap.delayed(&routed_epoch.max(*cap.time()));
                    routed_out.activate().give(&at, &mut marks);
                }
                if finished {
                    held = None;
                } else {
                    if let Some(&t) = frontier.iter().next() {
                        if *cap.time() < t {
                            cap.downgrade(&t);
                        }
                    }
                    // Idle partitions are noticed on processing time.
                    if now >= next_tick {
                        next_tick = now + Duration::from_millis(500);
                        activator.activate_after(Duration::from_millis(500));
                    }
                }
            }
        }
    });
    (routed, main, quarantine)
}

fn late_detail(t: EventTime, watermark: EventTime) -> String {
    format!(
        "event time {} is behind the watermark {} by more than the allowed out-of-orderness",
        describe(t),
        describe(watermark)
    )
}

/// Writes this worker's part of checkpoint `Ok(c)` (or its final part, `Err(newest)`: the state
/// after epoch `newest`): the state of the key groups it owns and its watermark. A failure stops
/// the run.
fn write_snapshot(
    op: &dyn KeyedOperator,
    me: usize,
    workers: usize,
    watermark: EventTime,
    due: Result<u64, u64>,
    part: &str,
    checkpoint: Option<&Checkpointing>,
) {
    let Some(ck) = checkpoint else { return };
    let groups: anyhow::Result<Vec<(u16, Vec<u8>)>> = owned_groups(me, workers)
        .map(|g| op.snapshot(g).map(|b| (g, b)))
        .filter(|r| r.as_ref().map_or(true, |(_, b)| !b.is_empty()))
        .collect();
    let result = groups.and_then(|g| encode(&(watermark, g))).and_then(|bytes| match due {
        Ok(c) => ck.checkpointer.write(c, part, &bytes),
        Err(newest) => ck.checkpointer.retire(part, bytes, newest),
    });
    if let Err(e) = result {
        ck.fail(format!("{part}: checkpoint: {e:#}"));
    }
}

fn keyed_stage<'s>(
    routed: RoutedStream<'s>,
    inputs: usize,
    component: Arc<str>,
    mut op: Box<dyn KeyedOperator>,
    metrics: ComponentMetrics,
    checkpoint: Option<Arc<Checkpointing>>,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let scope = routed.scope();
    let workers = scope.peers();
    let me = scope.index();
    let prefix = crate::checkpoint::part_prefix("keyed", &component, None);
    let part = format!("{prefix}{me}");
    // State of the key groups this worker owns, from whichever workers wrote them.
    let mut restored_watermark = WATERMARK_MIN;
    if let Some(ck) = &checkpoint {
        let owned: Vec<u16> = owned_groups(me, workers).collect();
        for bytes in ck.restored_parts(&prefix) {
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
                ck.fail(format!("{part}: cannot restore its state from the checkpoint: {e:#}"));
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
        move |frontiers| {
            input.for_each(|cap, data| {
                stash.entry(cap.least().copied().unwrap_or(0)).or_default().append(data);
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
                if let Some(c) = checkpoint.as_ref().and_then(|ck| ck.checkpointer.due(checkpointed, epoch)) {
                    write_snapshot(&*op, me, workers, watermark, Ok(c), &part, checkpoint.as_deref());
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
            if let Some(ck) = &checkpoint {
                // Every epoch before the frontier is processed: the state is that after them.
                let upto = frontier.iter().next().copied();
                let due = upto.and_then(|f| ck.checkpointer.due(checkpointed, f));
                if due.is_some() || upto.is_none() {
                    write_snapshot(&*op, me, workers, watermark, due.ok_or(processed), &part, Some(&**ck));
                    if let Some(c) = due {
                        checkpointed = c + 1;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + Duration::from_secs(1);
                op.tick(chrono::Utc::now().timestamp_millis(), &mut result);
                emit(&mut result, &mut main_out, &mut q_out, cap, qcap, &metrics);
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

type PayloadOutput = timely::dataflow::channels::pushers::Output<Epoch, Vec<Payload>>;

fn emit(
    result: &mut OperatorOutput,
    main: &mut PayloadOutput,
    quarantine: &mut PayloadOutput,
    at: &timely::dataflow::operators::Capability<Epoch>,
    qat: &timely::dataflow::operators::Capability<Epoch>,
    metrics: &ComponentMetrics,
) {
    metrics.records_out.inc_by(result.out_len() as u64);
    metrics.filtered.inc_by(result.filtered);
    metrics.alerts.inc_by(result.alerts.len() as u64);
    result.filtered = 0;
    result.consumed = 0;
    let mut msg: Vec<Payload> = Vec::new();
    if !result.alerts.is_empty() {
        msg.push(Payload::Alerts(std::mem::take(&mut result.alerts)));
    }
    if !result.cases.is_empty() {
        msg.push(Payload::Cases(std::mem::take(&mut result.cases)));
    }
    msg.extend(result.events.drain(..).filter(|b| !b.is_empty()).map(Payload::Events));
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
