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
    let mut out = OperatorOutput::default();
    e.process(b, 0, &mut out);
    assert!(out.quarantine.is_empty());
    out.events.iter().flat_map(|b| (0..b.len()).map(move |i| b.row_to_json(i))).collect()
}

#[test]
fn ti_geo_asn_assets_and_risk() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let data = Reloadable::new(&Resources::new(dir.path()), move |r| EnrichData::load(&cfg, r)).unwrap();
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
fn files_reload_on_change_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let data = Reloadable::new(&Resources::new(dir.path()), move |r| EnrichData::load(&cfg, r)).unwrap();
    data.watch(&["ti.txt".to_string()]).unwrap();
    let mut e = Enricher::new(data.clone(), RiskWeights::default());
    let ev: &[(&str, &str)] = &[("destination.ip", "192.0.2.77")];
    assert!(run(&mut e, batch(&[ev]))[0].get("threat.indicator.type").is_none());

    std::fs::write(dir.path().join("ti.txt"), "192.0.2.0/24,fresh-feed\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while data.generation() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let got = run(&mut e, batch(&[ev]));
    assert_eq!(got[0]["threat.feed.name"], "fresh-feed");

    // A broken file keeps the previous indicators.
    std::fs::write(dir.path().join("ti.txt"), "this is not an indicator\n").unwrap();
    while data.failures() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(data.failures() > 0);
    let got = run(&mut e, batch(&[ev]));
    assert_eq!(got[0]["threat.feed.name"], "fresh-feed");
}

#[test]
fn bad_files_fail_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    std::fs::write(dir.path().join("assets.csv"), "host,criticality\nx,high\n").unwrap();
    let err = EnrichData::load(&cfg, &Resources::new(dir.path())).err().unwrap().to_string();
    assert!(err.contains("criticality must be an integer"), "{err}");
    cfg.assets = None;
    cfg.geoip = Some("missing.mmdb".into());
    assert!(EnrichData::load(&cfg, &Resources::new(dir.path())).is_err());
}
