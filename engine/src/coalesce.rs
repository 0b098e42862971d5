//! Coalescing of an expensive job that many callers may ask for at once (a rule-set
//! recompile from 20 concurrent `POST /rules/reload`s, or a file watcher firing per write).
//!
//! A run covers every request made before it started; a request that arrives while a run is
//! under way waits for the next run, which covers all of them. So N concurrent requests cost
//! at most two runs, and every caller gets the result of a run that started after it asked
//! (it sees the files as they were when it asked, or newer).

use std::sync::{Condvar, Mutex};

pub struct Coalescer<T> {
    state: Mutex<State<T>>,
    finished: Condvar,
}

struct State<T> {
    /// Requests so far (each caller takes the next number).
    requested: u64,
    /// Requests covered by the last finished run.
    covered: u64,
    running: bool,
    last: Option<T>,
}

impl<T: Clone> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            state: Mutex::new(State { requested: 0, covered: 0, running: false, last: None }),
            finished: Condvar::new(),
        }
    }
}

impl<T: Clone> Coalescer<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `job`, or waits for a run that covers this request and returns its result.
    pub fn run(&self, job: impl FnOnce() -> T) -> T {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested += 1;
        let ticket = st.requested;
        loop {
            if st.covered >= ticket {
                if let Some(v) = &st.last {
                    return v.clone();
                }
            }
            if !st.running {
                st.running = true;
                let covers = st.requested;
                drop(st);
                // Reset `running` even if the job panics, so later callers are not stuck.
                struct Done<'a, T>(&'a Coalescer<T>, u64, Option<T>);
                impl<T> Drop for Done<'_, T> {
                    fn drop(&mut self) {
                        let mut st = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
                        st.running = false;
                        if let Some(v) = self.2.take() {
                            st.covered = self.1;
                            st.last = Some(v);
                        }
                        self.0.finished.notify_all();
                    }
                }
                let mut done = Done(self, covers, None);
                let v = job();
                done.2 = Some(v.clone());
                return v;
            }
            st = self.finished.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn concurrent_requests_share_at_most_two_runs() {
        let c = Arc::new(Coalescer::<usize>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let (c, runs) = (c.clone(), runs.clone());
                std::thread::spawn(move || {
                    c.run(|| {
                        std::thread::sleep(Duration::from_millis(200));
                        runs.fetch_add(1, Ordering::SeqCst) + 1
                    })
                })
            })
            .collect();
        let results: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let n = runs.load(Ordering::SeqCst);
        assert!(n <= 2, "{n} runs for 20 concurrent requests");
        assert!(results.iter().all(|&r| r >= 1 && r <= n));
    }

    #[test]
    fn a_later_request_gets_a_fresh_run() {
        let c = Coalescer::<u32>::new();
        assert_eq!(c.run(|| 1), 1);
        assert_eq!(c.run(|| 2), 2, "a request after a finished run starts its own");
    }
}
