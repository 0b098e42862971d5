//! Stand-ins that keep the dataflow's shape identical on every worker when a component
//! fails to start; the run then stops and reports the failure.

use crate::batch::EventBatch;
use crate::component::{Operator, OperatorOutput, Payload, Sink, Source, SourcePoll};

pub(crate) struct Exhausted;
impl Source for Exhausted {
    fn poll(&mut self, _: usize) -> anyhow::Result<SourcePoll> {
        Ok(SourcePoll::Done)
    }
}
pub(crate) struct PassThrough;
impl Operator for PassThrough {
    fn process(&mut self, batch: EventBatch, _epoch: u64, out: &mut OperatorOutput) {
        out.events.push(batch);
    }
}
pub(crate) struct DropAll;
impl crate::keyed::Router for DropAll {
    fn route(&mut self, _: crate::keyed::RecordRef<'_>, _: &mut Vec<u64>) -> crate::keyed::Route {
        crate::keyed::Route::Drop
    }
}
pub(crate) struct NoState;
impl crate::keyed::KeyedOperator for NoState {
    fn advance(&mut self, _: i64, _: &mut OperatorOutput) {}
    fn snapshot_groups(&self, _: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: u16, _: &[u8]) -> anyhow::Result<()> {
        Ok(())
    }
    fn live_keys(&self) -> usize {
        0
    }
}
pub(crate) struct Discard;
impl Sink for Discard {
    fn write(&mut self, _: &Payload) -> anyhow::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
