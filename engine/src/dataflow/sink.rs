//! A sink's stage: records reach the sink in epoch order, those of the oldest open epoch as
//! they arrive and later ones once every epoch before theirs is complete; with checkpoints the
//! sink prepares each checkpoint's part and commits it once the checkpoint is complete
//! (docs/architecture.md §5). Its `written` output holds a capability at the oldest epoch not
//! yet handed to the sink in full, for flow control ([`super::flow`]).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Probe;

use super::context::RunContext;
use super::flow::FlowControl;
use super::{Epoch, PayloadStream};
use crate::checkpoint::part_prefix;
use crate::component::{Payload, Sink};
use crate::metrics::ComponentMetrics;
use crate::spec::ComponentSpec;

pub(crate) fn build_sink<'s>(
    input: PayloadStream<'s>,
    run: Arc<RunContext>,
    c: &ComponentSpec,
    sink: Box<dyn Sink>,
    metrics: ComponentMetrics,
    flow: Rc<FlowControl>,
) {
    let worker = input.scope().index();
    let mut builder = OperatorBuilder::new(format!("sink:{}", c.id), input.scope());
    let mut input = builder.new_input(input, Pipeline);
    let (_written_out, written) = builder.new_output::<Vec<()>>();
    written.probe_with(flow.written());
    builder.set_notify_for(0, timely::progress::operate::FrontierInterest::Always);
    let id = c.id.clone();
    let mut sink = Some(sink);
    let part = format!("{}{worker}", part_prefix("sink", &c.id, None));
    // `sink-write-worker-N=sleep(ms)` slows the sinks of one worker only (the flow-control test).
    let stall_point = format!("sink-write-worker-{worker}");
    builder.build(move |mut caps| {
        // At the oldest epoch not yet written (dropped once everything is).
        let mut unwritten = caps.pop();
        let mut completed: Option<Epoch> = None;
        // Checkpoints prepared and not yet committed; the frontier last seen.
        let mut prepared: Vec<Epoch> = Vec::new();
        let mut seen: Epoch = 0;
        // The newest epoch of a record received or a checkpoint prepared: the final part
        // stands in for checkpoints from there on only.
        let mut newest: Epoch = 0;
        // Records arrive ahead of their epoch's completion. They reach the sink in epoch order:
        // those of the oldest incomplete epoch (the frontier's) as they arrive, later ones once
        // every earlier epoch is complete. So a checkpoint's part holds exactly its epochs'
        // records, and an epoch's batches are not all held here until it completes.
        let mut pending: BTreeMap<Epoch, Vec<Payload>> = BTreeMap::new();
        move |frontiers| {
            flow.release();
            let Some(s) = sink.as_mut() else {
                input.for_each(|_, data| data.clear());
                unwritten = None;
                return;
            };
            input.for_each(|cap, data| {
                let epoch = cap.least().copied().unwrap_or_default();
                newest = newest.max(epoch);
                let stash = pending.entry(epoch).or_default();
                stash.extend(data.drain(..).filter(|p| !matches!(p, Payload::Progress(_))));
            });
            let frontier = frontiers[0].frontier();
            let mut write_upto = |s: &mut Box<dyn Sink>, upto: Option<Epoch>| {
                while let Some(entry) = pending.first_entry() {
                    if upto.is_some_and(|u| *entry.key() > u) {
                        break;
                    }
                    for payload in entry.remove() {
                        let started = Instant::now();
                        let n = payload.len() as u64;
                        metrics.records_in.inc_by(n);
                        match write_payload(s.as_mut(), &payload, &stall_point) {
                            Ok(()) => metrics.records_out.inc_by(n),
                            Err(e) => {
                                metrics.errors.inc();
                                run.fail(format!("sink `{id}`: {e:#}"));
                            }
                        }
                        metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    }
                }
            };
            let f = frontier.iter().next().copied();
            if let Some(ck) = run.checkpointer() {
                let mut step = || -> anyhow::Result<()> {
                    match f {
                        Some(f) => {
                            if let Some(c) = ck.due(seen, f) {
                                write_upto(s, Some(c));
                                let bytes = s.prepare(c)?;
                                ck.write(c, &part, &bytes)?;
                                prepared.push(c);
                                newest = newest.max(c);
                            }
                            seen = seen.max(f);
                        }
                        None => {
                            write_upto(s, None);
                            let bytes = s.retire_part(newest)?;
                            ck.retire(&part, bytes, newest)?;
                        }
                    }
                    if let Some(done) = ck.committed() {
                        for c in prepared.iter().filter(|c| **c <= done) {
                            fail::fail_point!("sink-commit");
                            s.commit(*c)?;
                        }
                        prepared.retain(|c| *c > done);
                    }
                    Ok(())
                };
                if let Err(e) = step() {
                    metrics.errors.inc();
                    run.fail(format!("sink `{id}`: checkpoint: {e:#}"));
                }
            }
            // Everything of complete epochs goes to the sink.
            match f {
                None => write_upto(s, None),
                Some(0) => {}
                Some(f) => write_upto(s, Some(f - 1)),
            }
            match (f, unwritten.as_mut()) {
                (None, _) => unwritten = None,
                (Some(f), Some(cap)) if *cap.time() < f => cap.downgrade(&f),
                _ => {}
            }
            match f {
                None => {
                    if let Err(e) = s.finish() {
                        metrics.errors.inc();
                        run.fail(format!("sink `{id}`: {e:#}"));
                    }
                    sink = None;
                }
                Some(f) if f > 0 && completed.is_none_or(|c| c < f - 1) => {
                    completed = Some(f - 1);
                    if let Err(e) = s.epoch_complete(f - 1) {
                        metrics.errors.inc();
                        run.fail(format!("sink `{id}`: {e:#}"));
                    }
                }
                Some(_) => {}
            }
            // The frontier's epoch is the oldest one still open: its records go to the sink
            // now (after `epoch_complete` of the epoch before, which may close files), since
            // no checkpoint can cover it before it completes.
            if let (Some(s), Some(f)) = (sink.as_mut(), f) {
                write_upto(s, Some(f));
            }
        }
    });
}

/// A sink write; the `sink-write` failpoint makes it fail for the tests of failed runs, and
/// `stall_point` (`sink-write-worker-N`) can slow down one worker's writes.
fn write_payload(sink: &mut dyn Sink, payload: &Payload, stall_point: &str) -> anyhow::Result<()> {
    fail::fail_point!(stall_point);
    fail::fail_point!("sink-write", |_| Err(anyhow::anyhow!("failpoint sink-write")));
    sink.write(payload)
}
