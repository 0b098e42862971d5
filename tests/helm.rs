//! The Helm chart, checked with Helm's own code and Kubernetes' API schemas
//! (`tests/helm/check_chart.py`), and then run: the rendered container command, arguments and
//! environment of each of three replicas start as processes in network namespaces named like
//! the pods, whose `/etc/netns/*/hosts` holds the headless Service's names (as its DNS would).
//! They form a cluster; one is killed (kill -9), then one's link is cut for longer than the peer
//! timeout; the others exit non-zero within the bound each time, and restarting all three ends
//! with every sink exactly as one uninterrupted process writes it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn node_modules() -> PathBuf {
    match std::env::var("WARD_NODE_MODULES") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ward/node/node_modules"),
    }
}

/// Runs the chart checks; the rendered objects of every value set land in `out`.
fn check_chart(out: &Path) {
    let r = Command::new("python3")
        .arg(repo().join("tests/helm/check_chart.py"))
        .arg(repo().join("helm/ward"))
        .arg(node_modules())
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("0 failure(s)") && stdout.matches("ok   ").count() > 60, "{stdout}");
}

#[test]
fn the_chart_lints_renders_and_validates_and_its_default_spec_is_valid() {
    let out = tempfile::tempdir().unwrap();
    check_chart(out.path());
    // The spec the chart ships, with the environment the chart gives it: on the shared volume,
    // and in object storage.
    for set in ["default", "object-storage"] {
        let objects: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(out.path().join(format!("{set}.json"))).unwrap()).unwrap();
        let pod = Pod::from_statefulset(&objects, 0);
        let spec = out.path().join(format!("{set}.pipeline.yaml"));
        let mut cmd = Command::new(ward_bin());
        cmd.args(["validate", spec.to_str().unwrap()]).env_clear().env("WARD_RULES", repo().join("rules/sigma/ward"));
        for (k, v) in &pod.env {
            cmd.env(k, v);
        }
        let r = cmd.output().unwrap();
        assert!(
            r.status.success(),
            "{set}: {}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

/// One replica's process as the StatefulSet renders it.
struct Pod {
    name: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
}

impl Pod {
    fn from_statefulset(objects: &[serde_json::Value], ordinal: usize) -> Pod {
        let sts = objects.iter().find(|o| o["kind"] == "StatefulSet").unwrap();
        let c = &sts["spec"]["template"]["spec"]["containers"][0];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
        };
        let mut command = strings(&c["command"]);
        command.extend(strings(&c["args"]));
        let env = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
            .collect();
        Pod { name: format!("{}-{ordinal}", sts["metadata"]["name"].as_str().unwrap()), command, env }
    }
}

/// Network namespaces named like the pods, on one bridge, with the headless Service's names in
/// their hosts files; removed on drop.
struct Netns {
    names: Vec<String>,
    bridge: String,
    links: Vec<String>,
}

fn ip(args: &[&str]) {
    let r = Command::new("ip").args(args).output().expect("the ip command (iproute2)");
    assert!(r.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&r.stderr));
}

impl Netns {
    fn new(pods: &[String], service: &str) -> Netns {
        let tag = std::process::id() % 100_000;
        let subnet = 10 + tag % 200;
        let bridge = format!("wb{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        let mut ns = Netns { names: Vec::new(), bridge: bridge.clone(), links: Vec::new() };
        let address = |i: usize| format!("10.213.{subnet}.{}", 10 + i);
        let hosts: String = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| format!("{} {pod}.{service} {pod}\n", address(i)))
            .collect::<String>()
            + "127.0.0.1 localhost\n";
        for (i, pod) in pods.iter().enumerate() {
            // Namespaces are named like the pods (unique to this run).
            let name = format!("{pod}-t{tag}");
            ip(&["netns", "add", &name]);
            ns.names.push(name.clone());
            let (outside, inside) = (format!("wv{tag}h{i}"), format!("wv{tag}p{i}"));
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            ns.links.push(outside.clone());
            ip(&["link", "set", &outside, "master", &bridge]);
            ip(&["link", "set", &outside, "up"]);
            ip(&["link", "set", &inside, "netns", &name]);
            ip(&["-n", &name, "link", "set", "lo", "up"]);
            ip(&["-n", &name, "addr", "add", &format!("{}/24", address(i)), "dev", &inside]);
            ip(&["-n", &name, "link", "set", &inside, "up"]);
            let etc = PathBuf::from("/etc/netns").join(&name);
            std::fs::create_dir_all(&etc).unwrap();
            std::fs::write(etc.join("hosts"), &hosts).unwrap();
        }
        ns
    }

    /// Cuts (or restores) the link of namespace `i`: its packets go nowhere, no socket errs.
    fn link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.links[i], if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        }
        for link in &self.links {
            // Usually gone with its namespace already.
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

/// Where the container's mounts and image paths are on this machine.
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn map(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (from, to) in &self.0 {
            s = s.replace(from.as_str(), &to.to_string_lossy());
        }
        s
    }
}

/// Starts each pod's rendered command in its namespace, with the rendered environment (paths
/// mapped to this machine) and the pod's host name, as the kubelet would.
fn start(pods: &[Pod], netns: &Netns, mounts: &Mounts) -> Vec<Child> {
    pods.iter()
        .zip(&netns.names)
        .map(|(pod, ns)| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(ward_bin());
            cmd.args(pod.command[1..].iter().map(|a| mounts.map(a)));
            cmd.env_clear().env("HOSTNAME", &pod.name).env("PATH", std::env::var("PATH").unwrap_or_default());
            for (k, v) in &pod.env {
                cmd.env(k, mounts.map(v));
            }
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect()
}

/// Parquet events (read by pyarrow: rows, distinct records, most copies, digest) and the
/// sorted lines of every JSONL file of `stem` under `out`.
fn outputs(out: &Path) -> Vec<String> {
    let events = python(
        r#"
import sys, collections, hashlib, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
keys = collections.Counter(zip(t.column('ward.partition').to_pylist(), t.column('ward.offset').to_pylist()))
print(t.num_rows, len(keys), max(keys.values()), hashlib.sha256(repr(sorted(keys)).encode()).hexdigest()[:16])
"#,
        &[&out.join("events").to_string_lossy()],
    );
    let mut all = vec![events.trim().to_string()];
    for stem in ["alerts", "quarantine"] {
        let mut lines = Vec::new();
        for e in std::fs::read_dir(out).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(stem) && name.ends_with(".jsonl") {
                lines.extend(std::fs::read_to_string(&p).unwrap().lines().map(str::to_string));
            }
        }
        lines.sort();
        all.push(format!("{stem}: {} lines", lines.len()));
        all.extend(lines);
    }
    all
}

/// Reads `path` of the admin endpoint inside namespace `ns` (the test's own address).
fn admin_get(ns: &str, port: &str, path: &str) -> String {
    let script = format!(
        "import urllib.request\ntry:\n  r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5); print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n  print(e.code)"
    );
    let r = Command::new("ip").args(["netns", "exec", ns, "python3", "-c", &script]).output().unwrap();
    String::from_utf8_lossy(&r.stdout).into_owned()
}

#[test]
fn the_rendered_pods_run_as_a_cluster_in_network_namespaces_and_survive_kill_9_and_a_cut_link() {
    let rendered = tempfile::tempdir().unwrap();
    check_chart(rendered.path());
    let objects: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(rendered.path().join("netns-run.json")).unwrap()).unwrap();
    let pods: Vec<Pod> = (0..3).map(|i| Pod::from_statefulset(&objects, i)).collect();
    assert_eq!(pods[2].name, "ward-2");
    let service = "ward-peers.detect.svc.cluster.local";
    assert!(pods[0].env["WARD_PEERS"].contains(&format!("ward-1.{service}:7000")), "{:?}", pods[0].env);

    // The ConfigMap's spec where the container mounts it; the shared volume; the image's rules.
    let root = tempfile::tempdir().unwrap();
    let spec_dir = root.path().join("spec");
    std::fs::create_dir_all(&spec_dir).unwrap();
    let shared = root.path().join("shared");
    let mounts = Mounts(vec![
        ("/etc/ward/spec".into(), spec_dir.clone()),
        ("/var/lib/ward/shared".into(), shared.clone()),
        ("/usr/share/ward/rules/sigma".into(), repo().join("rules/sigma")),
    ]);
    let text = std::fs::read_to_string(rendered.path().join("netns-run.pipeline.yaml")).unwrap();
    std::fs::write(spec_dir.join("pipeline.yaml"), mounts.map(&text)).unwrap();

    // What one uninterrupted process writes.
    let reference = root.path().join("reference");
    let mut single = Command::new(ward_bin());
    single.args(["run", spec_dir.join("pipeline.yaml").to_str().unwrap(), "-q"]);
    for (k, v) in &pods[0].env {
        if !k.starts_with("WARD_PEER") && k != "WARD_CONNECT_TIMEOUT" {
            single.env(k, mounts.map(v).replace(&shared.to_string_lossy().into_owned(), &reference.to_string_lossy()));
        }
    }
    let r = single.env("WARD_ADMIN_LISTEN", "").output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let want = outputs(&reference.join("out"));
    assert!(want[0].starts_with("39980 39980 1 "), "{}", want[0]);

    let netns = Netns::new(&pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>(), service);
    let checkpoints = shared.join("checkpoints");

    // 1. The three form a cluster; every pod is ready and serves its metrics; kill -9 one.
    let mut cluster = start(&pods, &netns, &mounts);
    let first = wait_for_checkpoint(&checkpoints, 0);
    let port = pods[0].env["WARD_ADMIN_LISTEN"].rsplit(':').next().unwrap().to_string();
    for (i, ns) in netns.names.iter().enumerate() {
        let ready = admin_get(ns, &port, "/readyz");
        assert!(ready.starts_with("200"), "pod {i} ready: {ready}");
        let metrics = admin_get(ns, &port, "/metrics");
        assert!(metrics.contains(&format!("process=\"{i}\"")), "pod {i} metrics carry its process");
    }
    cluster[2].kill().unwrap();
    let killed = Instant::now();
    let r = wait_all(&mut cluster[..2], Duration::from_secs(15));
    let _ = cluster[2].wait();
    for (i, (code, err)) in r.iter().enumerate() {
        assert_eq!(*code, Some(1), "pod {i} exits non-zero after its peer was killed: {err}");
    }
    eprintln!("kill -9: the others exited {:.1}s later", killed.elapsed().as_secs_f64());

    // 2. Restarted, they resume; then pod 1's link is cut (no socket error: only the peer
    // timeout notices). Every process exits non-zero within the bound.
    let before = newest_checkpoint(&checkpoints);
    let mut cluster = start(&pods, &netns, &mounts);
    let resumed = wait_for_checkpoint(&checkpoints, before);
    assert!(before >= first);
    netns.link(1, false);
    let cut = Instant::now();
    let r = wait_all(&mut cluster, Duration::from_secs(20));
    netns.link(1, true);
    for (i, (code, err)) in r.iter().enumerate() {
        assert_eq!(*code, Some(1), "pod {i} exits non-zero after the cut: {err}");
    }
    assert!(
        r.iter().any(|(_, err)| err.contains("no word from process")),
        "the peer timeout noticed the cut: {:?}",
        r.iter().map(|(_, e)| e.lines().last().unwrap_or("").to_string()).collect::<Vec<_>>()
    );
    eprintln!("cut link: every process exited within {:.1}s", cut.elapsed().as_secs_f64());

    // 3. Restarted once more, to the end: every sink exactly as one process writes it.
    let mut cluster = start(&pods, &netns, &mounts);
    for (i, (code, err)) in wait_all(&mut cluster, Duration::from_secs(120)).iter().enumerate() {
        assert_eq!(*code, Some(0), "pod {i} finishes: {err}");
    }
    assert!(newest_checkpoint(&checkpoints) > resumed);
    let got = outputs(&shared.join("out"));
    assert_eq!(got[0], want[0], "Parquet events");
    assert_eq!(got.len(), want.len(), "{:?} vs {:?}", &got[..1], &want[..1]);
    assert!(got == want, "alerts and quarantine differ");
}
