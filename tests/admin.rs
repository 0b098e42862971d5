//! The admin endpoint under attack (docs/architecture.md §7): slow connections cannot take the file
//! descriptors a checkpointing run needs, mutating routes need the token and refuse foreign
//! hosts and origins, and routes answer 405 to methods they do not serve.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RULE: &str = "title: Failed Logon\nid: rule-a\nlevel: low\nlogsource: { product: windows, service: security }\n\
detection:\n  selection:\n    EventID: 4625\n  condition: selection\n";

fn spec(dir: &Path, port: u16, listen_host: &str, count: u64, rate: u64) -> String {
    write(dir, "rules/a.yml", RULE);
    format!(
        r#"name: admin
settings:
  epoch_interval_ms: 100
  batch_size: 256
  admin_listen: "{listen_host}:{port}"
  checkpoint: {{ dir: {dir}/ckpt, interval: 300ms, retain: 3 }}
sources:
  - {{ id: gen, type: generator, count: {count}, rate: {rate}, seed: 7 }}
operators:
  - {{ id: parse, type: parse, inputs: [gen] }}
  - {{ id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json] }}
  - {{ id: detect, type: sigma-match, inputs: [normalize], rules: [{dir}/rules], include_event: false, watch: false }}
sinks:
  - {{ id: alerts, type: jsonl, inputs: [detect], path: {dir}/alerts.jsonl }}
  - {{ id: q, type: jsonl, inputs: [quarantine], path: {dir}/q.jsonl }}
"#,
        dir = dir.display()
    )
}

/// `ward run` under `sh` with a small descriptor limit (soft and hard).
fn start(spec_path: &str, nofile: u32, env: &[(&str, &str)], summary: &Path) -> Child {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" run \"$1\" --quiet --summary-json \"$2\""))
        .arg(ward_bin())
        .arg(spec_path)
        .arg(summary)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("ward starts")
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(port, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("ward never became ready on port {port}");
}

/// One raw HTTP/1.1 request with extra header lines; returns the status.
fn request(port: u16, method: &str, path: &str, headers: &[&str]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").expect("metrics");
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn slow_connections_cannot_starve_a_checkpointing_run() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let count = 60_000;
    let spec_path = write(dir.path(), "spec.yaml", &spec(dir.path(), port, "127.0.0.1", count, 4_000));
    let summary = dir.path().join("summary.json");
    let mut child = start(&spec_path, 256, &[], &summary);
    wait_ready(port);
    // Slowloris: far more idle connections with a partial request than ward has descriptors.
    let mut held = Vec::new();
    for _ in 0..700 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
                held.push(s);
            }
            Err(_) => break,
        }
    }
    assert!(held.len() >= 600, "the attack opened only {} connections", held.len());
    // Keep them open across several checkpoints, then let go.
    std::thread::sleep(Duration::from_secs(4));
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    let rejected = metric(port, "ward_admin_connections_rejected_total");
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "the run failed under the attack: {status}\n{stderr}");
    assert!(rejected > 0.0, "no connection was turned away at the cap");
    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert!(s["components"].as_array().unwrap().iter().all(|c| c["ledger_ok"] == true), "{s}");
    let gen = s["components"].as_array().unwrap().iter().find(|c| c["id"] == "gen").unwrap();
    assert_eq!(gen["out"], count, "{s}");
}

#[test]
fn mutating_routes_need_the_token_a_local_host_and_a_served_method() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec_path = write(dir.path(), "spec.yaml", &spec(dir.path(), port, "127.0.0.1", 0, 500));
    let summary = dir.path().join("summary.json");
    let mut child = start(&spec_path, 1024, &[("WARD_ADMIN_TOKEN", "s3cret-token")], &summary);
    wait_ready(port);
    let auth = "Authorization: Bearer s3cret-token";
    assert_eq!(request(port, "POST", "/rules/reload", &[]), 401, "no token");
    assert_eq!(request(port, "POST", "/rules/reload", &["Authorization: Bearer wrong"]), 401);
    assert_eq!(request(port, "POST", "/rules/reload", &[auth]), 200);
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    assert_eq!(request(port, "GET", "/rules", &["Host: evil.example"]), 421);
    assert_eq!(request(port, "POST", "/rules/reload", &[auth, "Host: evil.example:9464"]), 421);
    // A browser page posting cross-origin.
    assert_eq!(request(port, "POST", "/rules/reload", &[auth, "Origin: http://evil.example"]), 403);
    assert_eq!(request(port, "POST", "/rules/reload", &[auth, &format!("Origin: http://localhost:{port}")]), 200);
    assert_eq!(request(port, "GET", "/rules", &["Host: localhost"]), 200);
    // Methods a route does not serve.
    assert_eq!(request(port, "DELETE", "/rules", &[auth]), 405);
    assert_eq!(request(port, "PUT", "/rules/reload", &[auth]), 405);
    assert_eq!(request(port, "POST", "/metrics", &[auth]), 405);
    // Concurrent reloads all succeed (they share recompiles).
    let threads: Vec<_> =
        (0..20).map(|_| std::thread::spawn(move || request(port, "POST", "/rules/reload", &[auth]))).collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn without_a_token_mutating_routes_are_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spec_path = write(dir.path(), "spec.yaml", &spec(dir.path(), port, "0.0.0.0", 0, 500));
    let summary = dir.path().join("summary.json");
    let mut child = start(&spec_path, 1024, &[("WARD_ADMIN_TOKEN", "")], &summary);
    wait_ready(port);
    assert_eq!(request(port, "POST", "/rules/reload", &[]), 403);
    assert_eq!(request(port, "GET", "/rules", &[]), 200, "read-only routes stay served");
    let _ = child.kill();
    let _ = child.wait();
}
