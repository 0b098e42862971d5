use super::*;

fn config(dir: &std::path::Path) -> EnrichConfig {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(repo.join("rules/ti/demo-indicators.txt"), dir.join("ti.txt")).unwrap();
    std::fs::copy(repo.join("rules/assets/demo-assets.csv"), dir.join("assets.csv")).unwrap();
    std::fs::copy(repo.join("rules/geo/ward-test-city.mmdb"), dir.join("city.mmdb")).unwrap();
    std::fs::copy(repo.join("rules/geo/ward-test-asn.mmdb"), dir.join("asn.mmdb")).unwrap();
    EnrichConfig {
        threat_intel: vec![ThreatIntelFile { path: "ti.txt".into(), feed: None }],
        geoip: Some("city.mmdb".into()),
        asn: Some("asn.mmdb".into()),
        assets: Some("assets.csv".into()),
        risk: RiskWeights::default(),
        watch: true,
    }
}

/// One event per entry: (field, value) pairs with core field names.
fn batch(events: &[&[(&str, &str)]]) -> EventBatch {
    let mut b = EventBatch::new();
    let o = b.origin_index(&"s".into(), &"p".into());
    for (i, fields) in events.iter().enumerate() {
        b.push_raw(o, i as u64, b"{}").expect("small test records fit");
        for (k, v) in fields.iter() {
            let id = FieldId::lookup(k).unwrap();
            let value = match id.field_type() {
                ward_engine::fields::FieldType::Ip => Value::Ip(b.heap().push_ip(v.parse().unwrap())),
                ward_engine::fields::FieldType::Int => Value::Int(v.parse().unwrap()),
                _ => Value::Str(b.heap().push_str(v)),
            };
            b.push_slot(Slot { key: Key::Core(id), value });
        }
    }
    b
}

fn run(e: &mut Enricher, b: EventBatch) -> Vec<serde_json::Value> {
    run_at(e, b, 0)
}

fn run_at(e: &mut Enricher, b: EventBatch, epoch: u64) -> Vec<serde_json::Value> {
    let mut out = OperatorOutput::default();
    e.process(b, epoch, &mut out);
    assert!(out.quarantine.is_empty());
    out.events.iter().flat_map(|b| (0..b.len()).map(move |i| b.row_to_json(i))).collect()
}

#[test]
fn ti_geo_asn_assets_and_risk() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.watch = false;
    let data = cfg.handle("enrich", &Resources::new(dir.path()), &Default::default()).unwrap();
    let mut e = Enricher::new(data, RiskWeights::default());
    let got = run(
        &mut e,
        batch(&[
            &[
                ("host.name", "FGT-EDGE"),
                ("source.ip", "10.1.1.5"),
                ("source.port", "50000"),
                ("destination.ip", "185.220.101.4"),
                ("destination.port", "445"),
            ],
            &[("dns.question.name", "beacon.EVIL-C2.example"), ("source.ip", "10.0.0.5")],
            &[("file.hash.md5", "44D88612FEA8A8F36DE82E1278ABB02F")],
            &[
                ("source.ip", "10.0.0.1"),
                ("source.port", "50001"),
                ("destination.ip", "198.51.100.7"),
                ("source.bytes", "9000000"),
                ("destination.bytes", "2000000"),
            ],
            &[("destination.ip", "2001:db8:bad::5")],
        ]),
    );
    // TI hit on a CIDR, with GeoIP/ASN of the destination, asset data and the full score.
    assert_eq!(got[0]["threat.indicator.type"], "ipv4-addr");
    assert_eq!(got[0]["threat.indicator.matched"], "185.220.101.4");
    assert_eq!(got[0]["threat.feed.name"], "tor-exit-nodes");
    assert_eq!(got[0]["destination.geo.country_iso_code"], "DE");
    assert_eq!(got[0]["destination.geo.city_name"], "Frankfurt am Main");
    assert_eq!(got[0]["destination.as.number"], 64502);
    assert_eq!(got[0]["ward.asset.criticality"], 25);
    assert_eq!(got[0]["ward.asset.tags"], "firewall,perimeter");
    assert_eq!(got[0]["ward.risk_score"], 100, "10 + 60 + 10 (port 445) + 25, clamped");
    assert_eq!(got[1]["threat.indicator.type"], "domain-name");
    assert_eq!(got[1]["threat.indicator.matched"], "beacon.evil-c2.example");
    assert_eq!(got[2]["threat.indicator.type"], "file");
    assert_eq!(got[2]["ward.risk_score"], 70);
    assert!(got[3].get("threat.indicator.type").is_none());
    assert_eq!(got[3]["destination.geo.country_iso_code"], "US");
    assert_eq!(got[3]["ward.risk_score"], 20, "large transfer from an ephemeral port");
    assert_eq!(got[4]["threat.indicator.type"], "ipv6-addr");
    assert_eq!(got[4]["destination.geo.country_iso_code"], "JP");
}

#[test]
fn files_reload_on_change_at_one_epoch_and_a_broken_file_keeps_the_running_data() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let data = cfg.handle("enrich", &Resources::new(dir.path()), &Default::default()).unwrap();
    let clock = Arc::new(ward_engine::clock::EpochClock::starting_at(7));
    let metrics = ward_engine::metrics::Metrics::new();
    let ctx = WorkerContext {
        component_id: "enrich".into(),
        worker_index: 0,
        workers: 1,
        processes: 1,
        resources: Resources::new(dir.path()),
        metrics: metrics.component("enrich"),
        clock: clock.clone(),
        resumed_from: None,
        checkpointing: false,
        switches: None,
    };
    data.start(&ctx);
    let first_version = data.current().version.clone();
    let mut e = Enricher::new(data.clone(), RiskWeights::default());
    let ev: &[(&str, &str)] = &[("destination.ip", "192.0.2.77")];
    assert!(run_at(&mut e, batch(&[ev]), 7)[0].get("threat.indicator.type").is_none());

    // The watcher reloads the changed file; the new data applies from the next epoch on, on
    // every worker, so batches of the running epoch still see the old indicators.
    std::fs::write(dir.path().join("ti.txt"), "192.0.2.0/24,fresh-feed\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while data.current().version == first_version && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (since, _) = data.current_since();
    assert_eq!(since, 8, "switched at the first epoch no batch carries yet");
    assert!(run_at(&mut e, batch(&[ev]), 7)[0].get("threat.indicator.type").is_none());
    assert_eq!(run_at(&mut e, batch(&[ev]), 8)[0]["threat.feed.name"], "fresh-feed");
    assert_eq!(data.reload().unwrap()["status"], "unchanged", "same bytes, same version");
    // The running version is published (and so recorded in every checkpoint's manifest).
    let versions = metrics.ruleset_versions();
    assert_eq!(versions.get("enrich"), Some(&data.current().version), "{versions:?}");

    // A broken file is refused with its reason and keeps the running indicators.
    std::fs::write(dir.path().join("ti.txt"), "this is not an indicator\n").unwrap();
    let refused = data.reload().unwrap_err();
    assert_eq!(refused["status"], "refused");
    assert!(refused["errors"][0]["reason"].as_str().unwrap().contains("ti.txt"), "{refused}");
    let m = metrics.component("enrich");
    assert!(m.reload_failures.get() >= 1);
    assert_eq!(m.reloads.get(), 1);
    assert_eq!(run_at(&mut e, batch(&[ev]), 9)[0]["threat.feed.name"], "fresh-feed");
}
