//! The route half of a stateful operator, one per input and worker: event time and lateness
//! per record, the partitions' watermark, keys from the component's router, and records sent
//! to the worker that owns their key group (or passed through, or filtered).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::context::RunContext;
use super::{Epoch, PayloadStream, RoutedStream};
use crate::alert::Alert;
use crate::batch::{BatchSize, EventBatch};
use crate::case::CaseRecord;
use crate::component::{Payload, Progress};
use crate::key_groups::{key_group, worker_for};
use crate::keyed::{decode, encode, RecordRef, Route, Routed, RoutedBody, Router};
use crate::metrics::ComponentMetrics;
use crate::quarantine::{QuarantineRecord, Reason};
use crate::time::{describe, event_time, EventTime, EventTimeConfig, Observed, WatermarkTracker, WATERMARK_MIN};

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
    pub(crate) fn forwarded(&self) -> bool {
        !self.upstream.is_empty()
    }
}

/// (source, partition) → newest event time.
type NewestByPartition = HashMap<(Arc<str>, Arc<str>), EventTime>;

/// Per-worker buffers of records bound for each worker.
struct Outbox {
    events: Vec<EventBatch>,
    /// Per worker: what its last batch of events held, to size the next one.
    last_events: Vec<BatchSize>,
    alerts: Vec<Vec<(Alert, bool)>>,
    cases: Vec<Vec<(CaseRecord, bool)>>,
}

impl Outbox {
    fn new(workers: usize) -> Self {
        Outbox {
            events: (0..workers).map(|_| EventBatch::new()).collect(),
            last_events: vec![BatchSize::default(); workers],
            alerts: vec![Vec::new(); workers],
            cases: vec![Vec::new(); workers],
        }
    }
    /// Worker `w`'s batch of events, sized like its last one when it is new.
    fn events_for(&mut self, w: usize) -> &mut EventBatch {
        let b = &mut self.events[w];
        if b.is_empty() {
            b.reserve_like(self.last_events[w]);
        }
        b
    }
    fn drain(&mut self) -> Vec<Routed> {
        let mut out = Vec::new();
        for (w, b) in self.events.iter_mut().enumerate() {
            if !b.is_empty() {
                self.last_events[w] = b.size();
                out.push(Routed { target: w as u32, body: RoutedBody::Events(std::mem::take(b)) });
            }
        }
        for (w, a) in self.alerts.iter_mut().enumerate() {
            if !a.is_empty() {
                out.push(Routed { target: w as u32, body: RoutedBody::Alerts(std::mem::take(a)) });
            }
        }
        for (w, c) in self.cases.iter_mut().enumerate() {
            if !c.is_empty() {
                out.push(Routed { target: w as u32, body: RoutedBody::Cases(std::mem::take(c)) });
            }
        }
        out
    }
}

/// The workers owning `keys`, each once, in the order of the keys.
fn owners(keys: &[u64], workers: usize, targets: &mut Vec<usize>) {
    targets.clear();
    for k in keys {
        let w = worker_for(key_group(*k), workers);
        if !targets.contains(&w) {
            targets.push(w);
        }
    }
}

pub(crate) fn route_stage<'s>(
    input: PayloadStream<'s>,
    index: u32,
    timing: InputTiming,
    router: Rc<RefCell<Box<dyn Router>>>,
    component: Arc<str>,
    metrics: ComponentMetrics,
    run: Arc<RunContext>,
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
    if run.restored().is_some() {
        for bytes in run.restored_parts(&prefix) {
            if bytes.is_empty() {
                continue;
            }
            match decode::<Vec<(String, String, EventTime)>>(bytes) {
                Ok(v) => restored.extend(v.into_iter().map(|(s, p, t)| ((s.into(), p.into()), t))),
                Err(e) => run.fail(format!("{part}: cannot restore the partitions' watermarks: {e:#}")),
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
        // (row, worker): owners of an event's other keys (a view's sliding windows), who get a
        // copy; the owner of its first key counts it.
        let mut also_to: Vec<(usize, u32)> = Vec::new();
        // Per worker: already a target of the row being routed (reset after each row).
        let mut targeted = vec![false; workers];
        let mut outbox = Outbox::new(workers);
        let mut next_tick = Instant::now();
        // Events cross the exchange with only the fields the keyed half reads, if it says.
        let projection = router.borrow().projection();
        let alert_summary = router.borrow().keyed_alert_summary();
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
                        Payload::Events(batch) => {
                            received += batch.len() as u64;
                            row_target.clear();
                            also_to.clear();
                            // For checkpoints: the newest on-time event per origin of the batch,
                            // merged into the epoch's partitions once per batch.
                            origin_newest.clear();
                            if run.checkpointer().is_some() && !forwarded {
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
                                        // Events go to the owner of their first key, and to the
                                        // owners of their other keys.
                                        Some(k) => {
                                            let first = worker_for(key_group(*k), workers) as u32;
                                            row_target[row] = first;
                                            let start = also_to.len();
                                            targeted[first as usize] = true;
                                            for k in &keys[1..] {
                                                let w = worker_for(key_group(*k), workers);
                                                if !targeted[w] {
                                                    targeted[w] = true;
                                                    also_to.push((row, w as u32));
                                                }
                                            }
                                            targeted[first as usize] = false;
                                            for (_, w) in &also_to[start..] {
                                                targeted[*w as usize] = false;
                                            }
                                        }
                                        None => filtered += 1,
                                    },
                                }
                            }
                            if !pass_rows.is_empty() {
                                passed.push(Payload::Events(Arc::new(pass_rows)));
                            }
                            for (o, t) in
                                batch.origins().iter().zip(&origin_newest).filter(|(_, t)| **t > WATERMARK_MIN)
                            {
                                let m = newest_by_epoch.entry(epoch).or_default();
                                let slot = m.entry((o.source.clone(), o.partition.clone())).or_insert(*t);
                                *slot = (*slot).max(*t);
                            }
                            let copy = |to: &mut EventBatch, row: usize| match &projection {
                                Some(p) => to.push_row_projected(&batch, row, p),
                                None => to.push_row_from(&batch, row),
                            };
                            for (row, w) in &also_to {
                                copy(outbox.events_for(*w as usize), *row);
                            }
                            let first = row_target.first().copied().unwrap_or(u32::MAX);
                            if projection.is_none() && first != u32::MAX && row_target.iter().all(|t| *t == first) {
                                // The whole batch goes to one worker: no copy.
                                let w = first as usize;
                                if outbox.events[w].is_empty() {
                                    outbox.events[w] = Arc::unwrap_or_clone(batch);
                                } else {
                                    for row in 0..batch.len() {
                                        outbox.events[w].push_row_from(&batch, row);
                                    }
                                }
                            } else {
                                for (row, t) in row_target.iter().enumerate() {
                                    if *t != u32::MAX {
                                        copy(outbox.events_for(*t as usize), row);
                                    }
                                }
                            }
                        }
                        Payload::Alerts(alerts) => {
                            received += alerts.len() as u64;
                            // Alerts passed on unchanged, by index: all of them go on as the same
                            // shared vector.
                            let mut pass: Vec<usize> = Vec::new();
                            for (i, alert) in alerts.iter().enumerate() {
                                let Some(t) = alert.event_time_ms else {
                                    quarantined.push(QuarantineRecord::from_alert(
                                        alert,
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
                                        QuarantineRecord::from_alert(alert, &component, Reason::LateEvent, detail),
                                    );
                                    continue;
                                }
                                if run.checkpointer().is_some() && !forwarded {
                                    let key =
                                        (alert.origin.source.as_str().into(), alert.origin.partition.as_str().into());
                                    let slot = newest_by_epoch.entry(epoch).or_default().entry(key).or_insert(t);
                                    *slot = (*slot).max(t);
                                }
                                keys.clear();
                                // A router with a projection reads only its fields: it routes the
                                // projected alert, which is what crosses the exchange (the
                                // event's fields are read out of its JSON once, not twice).
                                let projected = projection.as_ref().map(|p| alert.projected(p.names()));
                                let route =
                                    router.route(RecordRef::Alert(projected.as_ref().unwrap_or(alert)), &mut keys);
                                owners(&keys, workers, &mut targets);
                                let primary = match route {
                                    Route::Drop => {
                                        filtered += 1;
                                        continue;
                                    }
                                    Route::PassThrough => {
                                        out += 1;
                                        pass.push(i);
                                        false
                                    }
                                    Route::Keyed if targets.is_empty() => {
                                        filtered += 1;
                                        continue;
                                    }
                                    Route::Keyed => true,
                                };
                                if let Some((last, rest)) = targets.split_last() {
                                    // Key owners get only what the keyed half reads.
                                    let slim = projected.or_else(|| alert_summary.then(|| alert.summary()));
                                    for (n, w) in rest.iter().enumerate() {
                                        let copy = slim.clone().unwrap_or_else(|| alert.clone());
                                        outbox.alerts[*w].push((copy, primary && n == 0));
                                    }
                                    let copy = slim.unwrap_or_else(|| alert.clone());
                                    outbox.alerts[*last].push((copy, primary && rest.is_empty()));
                                }
                            }
                            if pass.len() == alerts.len() {
                                passed.push(Payload::Alerts(alerts));
                            } else if !pass.is_empty() {
                                // The alerts that go on: moved out when this stage holds the
                                // only reference, else copied.
                                let kept = match Arc::try_unwrap(alerts) {
                                    Ok(all) => {
                                        let mut keep = pass.iter().copied().peekable();
                                        all.into_iter()
                                            .enumerate()
                                            .filter_map(|(i, a)| keep.next_if_eq(&i).map(|_| a))
                                            .collect()
                                    }
                                    Err(shared) => pass.iter().map(|i| shared[*i].clone()).collect(),
                                };
                                passed.push(Payload::Alerts(Arc::new(kept)));
                            }
                        }
                        Payload::Cases(cases) => {
                            received += cases.len() as u64;
                            // Case records come only from the stateful `sla` operator, whose
                            // watermark marks order them.
                            for case in cases {
                                if let Observed::Late { watermark } = tracker.observe_forwarded(case.time_ms) {
                                    let detail = late_detail(case.time_ms, watermark);
                                    late(
                                        &mut quarantined,
                                        QuarantineRecord::from_case(&case, &component, Reason::LateEvent, detail),
                                    );
                                    continue;
                                }
                                keys.clear();
                                let route = router.route(RecordRef::Case(&case), &mut keys);
                                owners(&keys, workers, &mut targets);
                                match route {
                                    Route::Drop => filtered += 1,
                                    Route::Keyed if targets.is_empty() => filtered += 1,
                                    Route::Keyed => {
                                        for (i, w) in targets.iter().enumerate() {
                                            outbox.cases[*w].push((case.clone(), i == 0));
                                        }
                                    }
                                    Route::PassThrough => {
                                        for w in &targets {
                                            outbox.cases[*w].push((case.clone(), false));
                                        }
                                        out += 1;
                                        match passed.last_mut() {
                                            Some(Payload::Cases(v)) => v.push(case),
                                            _ => passed.push(Payload::Cases(vec![case])),
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
            if let Some(ck) = run.checkpointer() {
                let upto = frontier.iter().next().copied();
                let due = match upto {
                    Some(f) => ck.due(checkpointed, f),
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
                        Some(c) => ck.write(c, &part, &bytes),
                        None if held.is_some() => ck.retire(&part, bytes, newest_epoch),
                        None => Ok(()),
                    });
                    if let Err(e) = result {
                        run.fail(format!("{part}: checkpoint: {e:#}"));
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
            let resumable_stop = run.stopping_to_resume();
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
                    // Not before the epochs records may still come at either (the capability
                    // is downgraded only below): in a resumed run, never at an epoch the
                    // checkpoint covers.
                    let pending = frontier.iter().next().copied().unwrap_or(0);
                    let at = cap.delayed(&routed_epoch.max(*cap.time()).max(pending));
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
