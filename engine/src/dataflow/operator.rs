//! A stateless operator's stage: batches in, the operator's output out through [`emit`], at
//! the batch's epoch; event-time progress passes through unchanged.

use std::sync::Arc;
use std::time::Instant;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::emit::emit;
use super::PayloadStream;
use crate::component::{Operator, OperatorOutput, Payload};
use crate::metrics::ComponentMetrics;
use crate::spec::ComponentSpec;

pub(crate) fn build_operator<'s>(
    input: PayloadStream<'s>,
    c: &ComponentSpec,
    mut op: Box<dyn Operator>,
    metrics: ComponentMetrics,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let mut builder = OperatorBuilder::new(format!("operator:{}", c.id), input.scope());
    let mut input = builder.new_input(input, Pipeline);
    let (mut out, main) = builder.new_output::<Vec<Payload>>();
    let (mut qout, quarantine) = builder.new_output::<Vec<Payload>>();
    let mut result = OperatorOutput::default();
    builder.build(move |_caps| {
        move |_frontiers| {
            input.for_each(|cap, data| {
                for payload in data.drain(..) {
                    let batch = match payload {
                        Payload::Events(batch) => Arc::unwrap_or_clone(batch),
                        // Event-time progress passes stateless operators unchanged.
                        p @ Payload::Progress(_) => {
                            out.activate().give(&cap, &mut vec![p]);
                            continue;
                        }
                        // The spec checker only connects event streams to operators.
                        _ => continue,
                    };
                    let started = Instant::now();
                    let n = batch.len() as u64;
                    metrics.records_in.inc_by(n);
                    op.process(batch, cap.least().copied().unwrap_or(0), &mut result);
                    metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    emit(&mut result, &mut out, &mut qout, &cap, &cap, &metrics);
                }
            });
        }
    });
    (main, quarantine)
}
