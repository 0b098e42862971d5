//! Flow control. Timely has none of its own: a source that polls at full speed while a sink
//! on another worker (or process) is slow fills the exchange queues and the sinks' pending
//! epochs without bound. So a worker's sources count the bytes they emit per epoch, and stop
//! polling while the bytes of epochs that not every sink has written yet exceed the worker's
//! share of `settings.max_in_flight_bytes`.
//!
//! "Written" is read off a probe on every sink's `written` output: a sink holds that output's
//! capability at the oldest epoch it has not handed to its sink in full, so the probe's frontier
//! passes an epoch only once every sink on every worker has written it. A blocked source still
//! downgrades its capability as the clock advances, so the epochs it holds back can complete.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use timely::dataflow::operators::probe::Handle as ProbeHandle;

use super::Epoch;

/// One worker's in-flight accounting, shared by its sources and read by its sinks' probe.
pub(crate) struct FlowControl {
    written: ProbeHandle<Epoch>,
    budget: u64,
    in_flight: RefCell<InFlight>,
    gauge: prometheus::IntGauge,
}

#[derive(Default)]
struct InFlight {
    /// Bytes emitted per epoch not yet written everywhere, oldest first.
    by_epoch: VecDeque<(Epoch, u64)>,
    total: u64,
}

impl FlowControl {
    /// `budget`: this worker's share of the process's bound (at least one byte, so a source
    /// always gets one batch out per epoch).
    pub fn new(budget: u64, gauge: prometheus::IntGauge) -> Rc<FlowControl> {
        Rc::new(FlowControl {
            written: ProbeHandle::new(),
            budget: budget.max(1),
            in_flight: RefCell::new(InFlight::default()),
            gauge,
        })
    }

    /// The probe every sink's `written` output is attached to.
    pub fn written(&self) -> &ProbeHandle<Epoch> {
        &self.written
    }

    /// A source emitted `bytes` at `epoch`.
    pub fn emitted(&self, epoch: Epoch, bytes: u64) {
        let mut f = self.in_flight.borrow_mut();
        match f.by_epoch.back_mut() {
            Some((e, b)) if *e == epoch => *b += bytes,
            _ => f.by_epoch.push_back((epoch, bytes)),
        }
        f.total += bytes;
        self.gauge.add(bytes as i64);
    }

    /// Forgets the epochs every sink has written (called by sources before they poll and by
    /// sinks as they write, so the gauge also falls once the sources have finished).
    pub fn release(&self) {
        let mut f = self.in_flight.borrow_mut();
        while let Some(&(epoch, bytes)) = f.by_epoch.front() {
            if self.written.less_equal(&epoch) {
                break;
            }
            f.by_epoch.pop_front();
            f.total -= bytes;
            self.gauge.sub(bytes as i64);
        }
    }

    /// Whether the worker's sources may poll: what is still in flight is below the budget.
    pub fn has_room(&self) -> bool {
        self.release();
        self.in_flight.borrow().total < self.budget
    }

    #[cfg(test)]
    fn in_flight(&self) -> u64 {
        self.in_flight.borrow().total
    }
}

impl Drop for FlowControl {
    fn drop(&mut self) {
        self.gauge.sub(self.in_flight.get_mut().total as i64);
    }
}

#[cfg(test)]
mod tests {
    use timely::dataflow::operators::{Input, Probe};

    use super::*;

    #[test]
    fn sources_wait_until_the_sinks_have_written_what_is_in_flight() {
        timely::execute_directly(|worker| {
            let gauge = prometheus::IntGauge::new("t", "t").unwrap();
            let flow = FlowControl::new(100, gauge.clone());
            let mut input = worker.dataflow::<Epoch, _, _>(|scope| {
                let (input, stream) = scope.new_input::<Vec<u8>>();
                stream.probe_with(flow.written());
                input
            });
            worker.step();
            assert!(flow.has_room());
            flow.emitted(0, 60);
            flow.emitted(0, 60);
            flow.emitted(1, 10);
            assert_eq!(gauge.get(), 130);
            // Epoch 0 is not written yet: no room.
            assert!(!flow.has_room());
            input.advance_to(1);
            worker.step_while(|| flow.written().less_equal(&0));
            // Epoch 0 released, epoch 1 still in flight.
            assert!(flow.has_room());
            assert_eq!(flow.in_flight(), 10);
            assert_eq!(gauge.get(), 10);
            drop(input);
            worker.step_while(|| !flow.written().done());
            assert!(flow.has_room());
            assert_eq!(flow.in_flight(), 0);
        });
    }
}
