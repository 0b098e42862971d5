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
            // The JSON text written straight from the batch is the serialized row value.
            let mut text = Vec::new();
            b.write_row_json(i, &mut text);
            assert_eq!(text, serde_json::to_vec(&b.row_to_json(i)).expect("a value serializes"), "row JSON text");
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

/// Rules in every form that could make matching super-linear.
const HOSTILE_RULES: &str = r#"title: gate
id: gate
logsource: { category: fuzz }
detection: { s: { message: 'Failed password for * from * port *' }, condition: s }
---
title: overlap
id: overlap
logsource: { category: fuzz }
detection: { s: { message: '*aa*aa*b*' }, condition: s }
---
title: regex
id: regex
logsource: { category: fuzz }
detection: { s: { message|re: '(a|b|c|d){50}x' }, t: { other|re: 'a[ab]{12}z' }, condition: s or not t }
---
title: fieldref
id: fieldref
logsource: { category: fuzz }
detection: { s: { message|fieldref|contains: other }, condition: s }
---
title: keywords
id: keywords
logsource: { category: fuzz }
detection: { keywords: ['*aa*aa*b*', 'mimikatz'], condition: keywords }
---
title: windash
id: windash
logsource: { category: fuzz }
detection: { s: { message|windash|contains: ' -enc ' }, condition: s }
"#;

/// Matches arbitrary field values (split at 0xFF bytes into `message`, `other`, `CommandLine`)
/// against [`HOSTILE_RULES`]: no panic, and regex work at most a fixed multiple of the event.
pub fn check_sigma(data: &[u8]) {
    use ward_operators::sigma::{compile_files, CompileOptions, Detector, RuleFile, RuleSet};
    static SET: OnceLock<RuleSet> = OnceLock::new();
    let set = SET.get_or_init(|| {
        let files = vec![RuleFile::new("fuzz.yml", "fuzz.yml", HOSTILE_RULES)];
        let set = compile_files(&files, &CompileOptions::default(), None).expect("rules compile");
        assert_eq!(set.rejected(), 0, "{:?}", set.rejections());
        set
    });
    let mut parts = data.split(|b| *b == 0xFF).map(String::from_utf8_lossy);
    let event = serde_json::json!({
        "message": parts.next().unwrap_or_default(),
        "other": parts.next().unwrap_or_default(),
        "CommandLine": parts.next().unwrap_or_default(),
    })
    .to_string();
    let mut batch = EventBatch::new();
    let o = batch.origin_index(&"fuzz".into(), &"input".into());
    batch.push_raw(o, 1, event.as_bytes()).expect("a fuzz input fits");
    let mut parser = Parser::new("parse".into(), Format::Json, 1 << 24, SyslogOptions::default());
    let mut out = OperatorOutput::default();
    parser.process(batch, 0, &mut out);
    let mut detector = Detector::new("fuzz".into(), false);
    let mut alerts = Vec::new();
    for b in &out.events {
        detector.detect(set, b, &mut alerts);
    }
    let st = detector.stats();
    // Each of the few regex atoms reads each value at most once.
    assert!(st.searched_bytes <= 16 * (event.len() as u64 + 64), "{} bytes searched for a {}-byte event", st.searched_bytes, event.len());
}
