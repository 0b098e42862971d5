//! Shared harness: every input line must end as an event, a filtered header or a
//! quarantined record (the ledger), whatever the bytes; and nothing may panic.

use std::sync::{Arc, OnceLock};

use ward_engine::batch::EventBatch;
use ward_engine::component::{Operator, OperatorOutput};
use ward_operators::normalize::{builtin, load_packs, Normalizer, Unmatched};
use ward_operators::parse::{syslog::SyslogOptions, Format, Parser};

pub fn check(format: Format, data: &[u8], normalize: bool) {
    let mut parser = Parser::new("parse".into(), format, 4096, SyslogOptions { year: Some(2026), ..Default::default() });
    let mut batch = EventBatch::new();
    let o = batch.origin_index(&"fuzz".into(), &"input".into());
    let mut n = 0u64;
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        batch.push_raw(o, i as u64 + 1, line).expect("small test records fit");
        n += 1;
    }
    let mut out = OperatorOutput::default();
    parser.process(batch, 0, &mut out);
    let events: usize = out.events.iter().map(EventBatch::len).sum();
    assert_eq!(events as u64 + out.filtered + out.quarantine.len() as u64, n, "parse ledger");
    for b in &out.events {
        for i in 0..b.len() {
            let _ = b.row_to_json(i);
        }
    }
    if normalize {
        static PACKS: OnceLock<Arc<Vec<ward_operators::normalize::pack::Pack>>> = OnceLock::new();
        let packs = PACKS.get_or_init(|| {
            Arc::new(load_packs(&builtin::all_refs(), &ward_engine::resources::Resources::new(".")).expect("built-in packs load"))
        });
        let mut norm = Normalizer::new("normalize".into(), packs.clone(), Unmatched::Keep, true);
        let mut out2 = OperatorOutput::default();
        for b in out.events {
            norm.process(b, 0, &mut out2);
        }
        let after: usize = out2.events.iter().map(EventBatch::len).sum();
        assert_eq!(after + out2.quarantine.len(), events, "normalize ledger");
        for b in &out2.events {
            for i in 0..b.len() {
                let _ = b.row_to_json(i);
            }
        }
    }
}
