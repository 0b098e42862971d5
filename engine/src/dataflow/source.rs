//! A source's stage: polls the source for a bounded slice of time per activation, stamps its
//! batches with the current epoch (holding a capability it downgrades as the clock advances),
//! writes its position into checkpoints, and retires with its final position when it ends.
//! It polls only while the worker has room for more in-flight bytes ([`super::flow`]).

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::Scope;

use super::context::RunContext;
use super::flow::FlowControl;
use super::{Epoch, PayloadStream};
use crate::checkpoint::part_prefix;
use crate::component::{Payload, Progress, Source, SourcePoll};
use crate::metrics::ComponentMetrics;
use crate::spec::ComponentSpec;

pub(crate) fn build_source<'s>(
    scope: Scope<'s, Epoch>,
    run: Arc<RunContext>,
    c: &ComponentSpec,
    mut source: Box<dyn Source>,
    metrics: ComponentMetrics,
    flow: Rc<FlowControl>,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let mut builder = OperatorBuilder::new(format!("source:{}", c.id), scope);
    let info = builder.operator_info();
    let (mut out, main) = builder.new_output::<Vec<Payload>>();
    let (mut qout, quarantine) = builder.new_output::<Vec<Payload>>();
    let activator = scope.activator_for(info.address.clone());
    let batch_size = run.spec.settings.batch_size.max(1);
    let id = c.id.clone();
    let source_id: Arc<str> = c.id.as_str().into();
    let prefix = part_prefix("source", &c.id, None);
    let part = format!("{prefix}{}", scope.index());
    if run.restored().is_some() {
        if let Err(e) = source.restore(&run.restored_parts(&prefix)) {
            run.fail(format!("source `{id}`: cannot resume from the checkpoint: {e:#}"));
        }
    }
    // A source that stops reading hands its final position to the checkpointer.
    // (Its records so far are all at epochs up to `at`, its capability's time.)
    let retire = {
        let run = run.clone();
        let (part, id) = (part.clone(), id.clone());
        move |source: &dyn Source, at: Epoch| {
            if let Some(ck) = run.checkpointer() {
                if let Err(e) = source.checkpoint().and_then(|b| ck.retire(&part, b, at)) {
                    run.fail(format!("source `{id}`: checkpoint: {e:#}"));
                }
            }
        }
    };
    builder.build(move |mut caps| {
        let mut caps = Some((caps.remove(0), caps.remove(0)));
        let mut announced = false;
        // The newest complete checkpoint the source was told about.
        let mut notified: Option<Epoch> = None;
        // Since when the source has been waiting for room (flow control).
        let mut waiting: Option<Instant> = None;
        move |_frontiers| {
            let Some((cap, qcap)) = caps.as_mut() else {
                return;
            };
            if !announced {
                // At epoch 0, before any record: watermarks wait for these partitions.
                announced = true;
                let partitions = source.partitions();
                if !partitions.is_empty() {
                    let p = Progress::Partitions { source: source_id.clone(), partitions };
                    out.activate().give(&*cap, &mut vec![Payload::Progress(p)]);
                }
            }
            if run.stopping() {
                retire(&*source, *cap.time());
                caps = None;
                return;
            }
            if let Some(done) = run.checkpointer().and_then(|ck| ck.committed()) {
                if notified.is_none_or(|n| n < done) {
                    notified = Some(done);
                    source.checkpoint_complete(done);
                }
            }
            let epoch = run.clock.current();
            if *cap.time() < epoch {
                // Everything emitted so far belongs to epochs before `epoch`.
                if let Some(ck) = run.checkpointer() {
                    if let Some(c) = ck.due(*cap.time(), epoch) {
                        match source.checkpoint().and_then(|b| ck.write(c, &part, &b)) {
                            Ok(()) => source.checkpoint_written(c),
                            Err(e) => run.fail(format!("source `{id}`: checkpoint {c}: {e:#}")),
                        }
                    }
                }
                cap.downgrade(&epoch);
                qcap.downgrade(&epoch);
            }
            // Produce for a bounded slice of time, then yield so other operators run.
            let budget = Instant::now() + Duration::from_millis(5);
            loop {
                if !flow.has_room() {
                    // Sinks are behind: look again shortly (the clock still advances the
                    // capability above, so the epochs in flight can complete).
                    waiting.get_or_insert_with(Instant::now);
                    activator.activate_after(Duration::from_millis(2));
                    return;
                }
                if let Some(since) = waiting.take() {
                    run.metrics.backpressure_seconds.inc_by(since.elapsed().as_secs_f64());
                }
                let started = Instant::now();
                // Lets tests slow a source down so a run spans several epochs.
                fail::fail_point!("source-poll");
                let (batch, records) = match source.poll(batch_size) {
                    Ok(SourcePoll::Batch(batch)) => (Some(batch), None),
                    Ok(SourcePoll::Quarantine(records)) => (None, Some(records)),
                    Ok(SourcePoll::Both(batch, records)) => (Some(batch), Some(records)),
                    Ok(SourcePoll::Pending(wait)) => {
                        activator.activate_after(wait.min(Duration::from_millis(100)));
                        return;
                    }
                    Ok(SourcePoll::Done) => {
                        retire(&*source, *cap.time());
                        caps = None;
                        return;
                    }
                    Err(e) => {
                        metrics.errors.inc();
                        run.fail(format!("source `{id}`: {e:#}"));
                        caps = None;
                        return;
                    }
                };
                if let Some(batch) = batch {
                    metrics.records_in.inc_by(batch.len() as u64);
                    metrics.records_out.inc_by(batch.len() as u64);
                    metrics.bytes_in.inc_by(batch.raw_len() as u64);
                    metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    if !batch.is_empty() {
                        flow.emitted(*cap.time(), batch.raw_len() as u64);
                        out.activate().give(&*cap, &mut vec![Payload::Events(Arc::new(batch))]);
                    }
                }
                if let Some(records) = records {
                    metrics.records_in.inc_by(records.len() as u64);
                    let mut bytes = 0;
                    for r in &records {
                        metrics.quarantined(r.reason).inc();
                        bytes += r.payload.len() as u64;
                    }
                    flow.emitted(*qcap.time(), bytes);
                    qout.activate().give(&*qcap, &mut vec![Payload::Quarantine(records)]);
                }
                if Instant::now() >= budget {
                    activator.activate();
                    return;
                }
            }
        }
    });
    (main, quarantine)
}
