//! Pack detection cost: the normalize stage with every built-in pack enabled (each event
//! claimed by the first pack whose `when` holds) against only the pack that claims it, per
//! event source. Windows events come from the generator (EVTX-JSON and Winlogbeat shapes);
//! the cloud and network sources from `rules/samples/`, repeated.

use std::sync::Arc;
use std::time::Duration;

use ward_connectors::sources::generator::WindowsShape;
use ward_engine::batch::EventBatch;
use ward_engine::component::{Source, SourcePoll};
use ward_engine::resources::Resources;
use ward_operators::normalize::{builtin, load_packs, Normalizer, Unmatched};
use ward_operators::parse::{syslog::SyslogOptions, Format, Parser as RecordParser};

use super::{repo, run_op, shaped_generator, time};

/// Raw record batches of `count` events: the Windows records of the generator in `shape`.
fn windows_records(count: u64, shape: WindowsShape) -> Vec<Vec<u8>> {
    let mut g = shaped_generator(count * 3, shape);
    let mut out = Vec::new();
    while let Ok(SourcePoll::Batch(b)) = g.poll(1024) {
        for r in 0..b.len() {
            let raw = b.raw_payload(r);
            let windows = raw.starts_with(br#"{"Event""#) || raw.windows(9).any(|w| w == br#""winlog":"#);
            if windows && (out.len() as u64) < count {
                out.push(raw.to_vec());
            }
        }
    }
    out
}

/// The records of a sample file (JSON lines, or one `{"records": [...]}` document), repeated
/// to `count`.
fn sample_records(file: &str, count: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(repo().join("rules/samples").join(file))?;
    let mut one: Vec<Vec<u8>> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        match v.get("records").and_then(|r| r.as_array()) {
            Some(records) => one.extend(records.iter().map(|r| r.to_string().into_bytes())),
            None => one.push(line.as_bytes().to_vec()),
        }
    }
    Ok((0..count as usize).map(|i| one[i % one.len()].clone()).collect())
}

fn batches(records: &[Vec<u8>]) -> Vec<EventBatch> {
    let (source, partition): (Arc<str>, Arc<str>) = ("bench".into(), "p".into());
    records
        .chunks(1024)
        .map(|chunk| {
            let mut b = EventBatch::new();
            let o = b.origin_index(&source, &partition);
            for (i, r) in chunk.iter().enumerate() {
                b.push_raw(o, i as u64 + 1, r).expect("sample records fit in a batch");
            }
            b
        })
        .collect()
}

pub fn run(count: u64, repeat: usize) -> anyhow::Result<()> {
    let all_packs = Arc::new(load_packs(&builtin::all_refs(), &Resources::new("."))?);
    let sources: Vec<(&str, &str, Vec<Vec<u8>>)> = vec![
        ("windows evtx-json (generator)", "windows", windows_records(count, WindowsShape::EvtxJson)),
        ("winlogbeat (generator)", "winlogbeat", windows_records(count, WindowsShape::Winlogbeat)),
        ("aws cloudtrail", "aws-cloudtrail", {
            let mut d =
                flate2::read::GzDecoder::new(std::fs::File::open(repo().join("rules/samples/aws-cloudtrail.json.gz"))?);
            let mut text = String::new();
            std::io::Read::read_to_string(&mut d, &mut text)?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let one: Vec<Vec<u8>> =
                v["Records"].as_array().unwrap().iter().map(|r| r.to_string().into_bytes()).collect();
            (0..count as usize).map(|i| one[i % one.len()].clone()).collect()
        }),
        ("suricata eve", "suricata", sample_records("suricata-eve.json", count)?),
        ("okta", "okta", sample_records("okta-system-log.json", count)?),
        ("azure", "azure", sample_records("azure-diagnostic-logs.json", count)?),
        ("m365", "m365", sample_records("m365-audit.json", count)?),
        ("gcp audit", "gcp-audit", sample_records("gcp-audit.json", count)?),
    ];
    println!(
        "packs: normalize with all {} built-in packs vs only the claiming pack, {count} events per source, best of {repeat}",
        all_packs.len()
    );
    println!(
        "  {:<30} {:>13} {:>13} {:>9} {:>16}",
        "source (pack, precedence)", "all packs/s", "one pack/s", "normalize", "parse+normalize"
    );
    for (name, pack, records) in sources {
        let n = records.len() as f64;
        let mut parser = RecordParser::new(
            "parse".into(),
            Format::Auto,
            1 << 20,
            SyslogOptions { year: Some(2026), ..Default::default() },
        );
        let input = batches(&records);
        let (parsed, (t_parse, _)) = time(|| run_op(&mut parser, input));
        let one = Arc::new(load_packs(&[format!("builtin:{pack}")], &Resources::new("."))?);
        let position = all_packs.iter().position(|p| p.name == pack).map(|i| i + 1).unwrap_or(0);
        // Interleaved, best of `repeat` each: this machine's speed drifts between runs.
        let once = |packs: &Arc<Vec<ward_operators::normalize::pack::Pack>>| {
            let mut norm = Normalizer::new("normalize".into(), packs.clone(), Unmatched::Keep, false);
            let (events, (t, _)) = time(|| run_op(&mut norm, parsed.clone()));
            (t, events.iter().map(EventBatch::len).sum::<usize>())
        };
        let (mut t_all, mut t_one) = (Duration::MAX, Duration::MAX);
        let (mut n_all, mut n_one) = (0, 0);
        for _ in 0..repeat {
            let (t, n) = once(&all_packs);
            (t_all, n_all) = (t_all.min(t), n);
            let (t, n) = once(&one);
            (t_one, n_one) = (t_one.min(t), n);
        }
        assert_eq!(n_all, n_one, "{name}: the same events come out");
        let extra = t_all.as_secs_f64() / t_one.as_secs_f64() - 1.0;
        let extra_total = (t_parse + t_all).as_secs_f64() / (t_parse + t_one).as_secs_f64() - 1.0;
        println!(
            "  {:<30} {:>13.0} {:>13.0} {:>+8.1}% {:>+15.1}%",
            format!("{name} ({pack}, {position})"),
            n / t_all.as_secs_f64(),
            n / t_one.as_secs_f64(),
            extra * 100.0,
            extra_total * 100.0
        );
    }
    Ok(())
}
