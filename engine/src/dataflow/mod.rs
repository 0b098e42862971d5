//! The dataflow of a run: one timely stage per component, built from the validated spec on
//! every worker (docs/architecture.md §3–§5).
//!
//! - [`source`]: polls a source, stamps batches with the epoch, checkpoints its position;
//! - [`operator`]: a stateless operator over batches;
//! - [`stateful`]: a keyed operator as [`route`] stages (event time, keys) and a
//!   [`keyed_stage`] (state by key group, watermarks);
//! - [`sink`]: records in epoch order, prepared and committed with the checkpoints.
//!
//! Every stage sends an operator's output through the one [`emit`] path and shares one
//! [`RunContext`] (stop flag, failure channel, checkpointer, restored parts).

pub(crate) mod context;
mod control;
mod emit;
mod flow;
mod keyed_stage;
mod operator;
mod route;
mod sink;
mod source;
mod standins;
mod stateful;
mod view;

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::operators::Concatenate;
use timely::dataflow::{Scope, Stream};

pub(crate) use context::RunContext;
pub(crate) use control::{build_control, ControlState};
use operator::build_operator;
use route::InputTiming;
use sink::build_sink;
use source::build_source;
use standins::{Discard, DropAll, Exhausted, NoState, PassThrough};
use stateful::build_stateful;

use crate::component::Payload;
use crate::keyed::{KeyedOperator, KeyedOperatorFactory, Routed, Router};
use crate::registry::{Built, Section};
use crate::spec::{ComponentSpec, InputRef, Port, Spec};

pub(crate) type Epoch = u64;
pub(crate) type PayloadStream<'s> = Stream<'s, Epoch, Vec<Payload>>;
pub(crate) type RoutedStream<'s> = Stream<'s, Epoch, Vec<Routed>>;

pub(crate) fn build_dataflow<'s>(scope: Scope<'s, Epoch>, run: &Arc<RunContext>) {
    let local_workers = (scope.peers() / run.processes.max(1)).max(1) as u64;
    let flow = flow::FlowControl::new(
        run.spec.settings.max_in_flight_bytes / local_workers,
        run.metrics.in_flight_bytes.clone(),
    );
    let mut main: HashMap<String, PayloadStream<'s>> = HashMap::new();
    let mut quarantine: HashMap<String, PayloadStream<'s>> = HashMap::new();
    // Sinks last, so that `quarantine` inputs see every producer.
    let order = run
        .spec
        .components
        .iter()
        .filter(|c| c.section() != Section::Sink)
        .chain(run.spec.components.iter().filter(|c| c.section() == Section::Sink));
    for c in order {
        let ctx = run.worker_context(c, scope.index(), scope.peers());
        let metrics = run.metrics.component(&c.id);
        match &c.built {
            Built::Source(factory) => {
                let source = factory.create(&ctx).unwrap_or_else(|e| {
                    run.fail(format!("source `{}`: {e:#}", c.id));
                    Box::new(Exhausted)
                });
                let (m, q) = build_source(scope, run.clone(), c, source, metrics, flow.clone());
                main.insert(c.id.clone(), m);
                quarantine.insert(c.id.clone(), q);
            }
            Built::Operator(factory) => {
                let input = inputs_of(scope, c, &main, &quarantine);
                let op = factory.create(&ctx).unwrap_or_else(|e| {
                    run.fail(format!("operator `{}`: {e:#}", c.id));
                    Box::new(PassThrough)
                });
                let (m, q) = build_operator(input, c, op, metrics);
                main.insert(c.id.clone(), m);
                quarantine.insert(c.id.clone(), q);
            }
            Built::Keyed(factory) => {
                let (m, q) = build_keyed(scope, c, run, &ctx, metrics, factory.as_ref(), None, &main, &quarantine);
                main.insert(c.id.clone(), m);
                quarantine.insert(c.id.clone(), q);
            }
            Built::View(factory) => {
                let logic = Some(factory.logic());
                let (m, q) = build_keyed(scope, c, run, &ctx, metrics, factory.as_ref(), logic, &main, &quarantine);
                main.insert(c.id.clone(), m);
                quarantine.insert(c.id.clone(), q);
            }
            Built::Sink(factory) => {
                let input = inputs_of(scope, c, &main, &quarantine);
                match factory.create(&ctx) {
                    Ok(sink) => build_sink(input, run.clone(), c, sink, metrics, flow.clone()),
                    Err(e) => {
                        run.fail(format!("sink `{}`: {e:#}", c.id));
                        build_sink(input, run.clone(), c, Box::new(Discard), metrics, flow.clone())
                    }
                }
            }
        }
    }
}

/// A stateful operator's stages (a view's too, given its logic): routes, exchange, keyed state.
#[allow(clippy::too_many_arguments)]
fn build_keyed<'s>(
    scope: Scope<'s, Epoch>,
    c: &ComponentSpec,
    run: &Arc<RunContext>,
    ctx: &crate::component::WorkerContext,
    metrics: crate::metrics::ComponentMetrics,
    halves: &dyn KeyedOperatorFactory,
    view: Option<Arc<dyn crate::view::ViewLogic>>,
    main: &HashMap<String, PayloadStream<'s>>,
    quarantine: &HashMap<String, PayloadStream<'s>>,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let inputs: Vec<_> =
        c.inputs.iter().map(|i| (stream_of(i, main, quarantine, scope), input_timing(&run.spec, i))).collect();
    let parts = halves.router(ctx).and_then(|r| Ok((r, halves.operator(ctx)?)));
    let (router, op) = parts.unwrap_or_else(|e| {
        run.fail(format!("operator `{}`: {e:#}", c.id));
        (Box::new(DropAll) as Box<dyn Router>, Box::new(NoState) as Box<dyn KeyedOperator>)
    });
    let id: Arc<str> = c.id.as_str().into();
    match view {
        Some(logic) => view::build_view(inputs, id, router, op, logic, metrics, run.clone()),
        None => build_stateful(inputs, id, router, op, metrics, run.clone()),
    }
}

fn inputs_of<'s>(
    scope: Scope<'s, Epoch>,
    c: &ComponentSpec,
    main: &HashMap<String, PayloadStream<'s>>,
    quarantine: &HashMap<String, PayloadStream<'s>>,
) -> PayloadStream<'s> {
    let mut streams: Vec<_> = c.inputs.iter().map(|i| stream_of(i, main, quarantine, scope)).collect();
    if streams.len() == 1 {
        streams.pop().expect("one stream")
    } else {
        scope.concatenate(streams)
    }
}

fn stream_of<'s>(
    input: &InputRef,
    main: &HashMap<String, PayloadStream<'s>>,
    quarantine: &HashMap<String, PayloadStream<'s>>,
    scope: Scope<'s, Epoch>,
) -> PayloadStream<'s> {
    match input {
        InputRef::Component { id, port: Port::Main } => main[id].clone(),
        InputRef::Component { id, port: Port::Quarantine } => quarantine[id].clone(),
        InputRef::AllQuarantine => {
            let mut ids: Vec<_> = quarantine.keys().collect();
            ids.sort();
            scope.concatenate(ids.into_iter().map(|id| quarantine[id].clone()))
        }
    }
}

/// Where an input of a stateful operator gets its event time: the sources it reads through
/// stateless operators, and the stateful operators it reads from.
fn input_timing(spec: &Spec, input: &InputRef) -> InputTiming {
    let mut timing = InputTiming::default();
    let mut todo: Vec<&str> = match input {
        InputRef::Component { id, .. } => vec![id.as_str()],
        InputRef::AllQuarantine => spec.components.iter().map(|c| c.id.as_str()).collect(),
    };
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(c) = spec.component(id) else { continue };
        match &c.built {
            Built::Source(_) => {
                timing.sources.insert(c.id.clone(), c.event_time.clone());
            }
            Built::Keyed(_) | Built::View(_) => timing.upstream.push(c.id.as_str().into()),
            _ => {
                for i in &c.inputs {
                    match i {
                        InputRef::Component { id, .. } => todo.push(id.as_str()),
                        InputRef::AllQuarantine => todo.extend(spec.components.iter().map(|c| c.id.as_str())),
                    }
                }
            }
        }
    }
    timing.upstream.sort();
    timing
}
