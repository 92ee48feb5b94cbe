//! Driving `xtask lab` from tests: the xtask binary runs as a subprocess with a lab name unique to the
//! test process, and `lab down` runs when the handle is dropped (also when the test panics), so a
//! failure never leaks network namespaces.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

use crate::privilege;

/// The workspace root (this crate lives in `<workspace>/tests`).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// `STRAIT_XTASK_BIN`, else `<workspace>/target/release/xtask`.
pub fn xtask_bin() -> PathBuf {
    let bin = std::env::var_os("STRAIT_XTASK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/xtask"));
    assert!(
        bin.is_file(),
        "no xtask binary at {} (run `cargo build --release -p xtask`, or set STRAIT_XTASK_BIN)",
        bin.display()
    );
    bin
}

/// A lab test needs root, network namespaces, iproute2 and cgroup2 at /sys/fs/cgroup/unified. When one
/// is missing it fails under CI=true and is skipped (one line on stderr) elsewhere.
pub fn require_privileges(what: &str) -> bool {
    if !privilege::require(what) {
        return false;
    }
    let missing = if !Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
        Some("cgroup2 is not mounted at /sys/fs/cgroup/unified")
    } else if Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        Some("iproute2 (`ip`) is not installed")
    } else {
        None
    };
    match missing {
        None => true,
        Some(why) if privilege::in_ci() => panic!("{what}: CI=true but the lab cannot run: {why}"),
        Some(why) => {
            eprintln!("skipping {what}: {why}");
            false
        }
    }
}

/// A lab of this test process. Dropping it runs `lab down`.
pub struct Lab {
    pub name: String,
}

impl Lab {
    /// `t<pid><tag>`: unique per test process, and per test within it through `tag`.
    pub fn new(tag: &str) -> Lab {
        Lab {
            name: format!("t{}{tag}", std::process::id()),
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(xtask_bin())
            .args(["lab", "--name", &self.name])
            .args(args)
            .current_dir(workspace())
            .env_remove("STRAIT_LAB")
            .output()
            .expect("running xtask")
    }

    /// Runs a `--json` command that must succeed and returns its JSON document.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "xtask lab {} failed ({}):\n{stderr}",
            args.join(" "),
            out.status
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "xtask lab {}: stdout is not one JSON document ({e}):\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `lab up FILE --no-agent --json`, FILE relative to the workspace.
    pub fn up_without_agents(&self, file: &str) -> Value {
        self.json(&["up", file, "--no-agent", "--json"])
    }

    pub fn down(&self) -> Value {
        self.json(&["down", "--json"])
    }

    fn prefix(&self) -> String {
        format!("strait-{}-", self.name)
    }

    /// Named netns of this lab.
    pub fn netns(&self) -> Vec<String> {
        let prefix = self.prefix();
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// Everything of this lab still on the machine: netns, bpffs pins, cgroups, state dir.
    pub fn leftovers(&self) -> Vec<String> {
        let mut out = self.netns();
        let pin_prefix = format!("{}-", self.name);
        out.extend(
            std::fs::read_dir("/sys/fs/bpf/strait")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&pin_prefix))
                .map(|e| e.path().display().to_string()),
        );
        for dir in [
            format!("/sys/fs/cgroup/unified/strait-{}", self.name),
            format!("/run/strait/labs/{}", self.name),
        ] {
            if Path::new(&dir).exists() {
                out.push(dir);
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.run(&["down"]);
        if !out.status.success() {
            eprintln!(
                "lab down {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `doc[a][b]...` as a string (numbers index arrays), with a readable panic when it is missing.
pub fn text<'a>(doc: &'a Value, path: &[&str]) -> &'a str {
    let mut v = doc;
    for p in path {
        v = match (v, p.parse::<usize>()) {
            (Value::Array(a), Ok(i)) => a.get(i).unwrap_or(&Value::Null),
            _ => &v[*p],
        };
    }
    v.as_str()
        .unwrap_or_else(|| panic!("no string at {path:?} in {doc:#}"))
}

/// Who answered each attempt of a `lab probe --json`, and the client address (without port) the
/// backend saw.
pub fn answers(v: &Value) -> Vec<(String, String)> {
    v["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            let by = a["answered_by"].as_str().unwrap_or("-").to_string();
            let seen = a["client_seen"]
                .as_str()
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            (by, seen)
        })
        .collect()
}

/// `STRAIT_AGENT_BIN`, else `<workspace>/target/release/proxy-agent`.
pub fn agent_bin() -> PathBuf {
    let bin = std::env::var_os("STRAIT_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/proxy-agent"));
    assert!(
        bin.is_file(),
        "no agent binary at {} (run `cargo build --release -p proxy-agent`, or set STRAIT_AGENT_BIN)",
        bin.display()
    );
    bin
}

impl Lab {
    /// `lab up FILE --json` with one agent per node, then waits (bounded) until every agent reports a
    /// first full sync with at least `frontends` service frontends programmed.
    pub fn up_with_agents(&self, file: &str, frontends: u64) -> Value {
        self.up_with_agents_and(file, &[], frontends)
    }

    /// `up_with_agents` with more `lab up` arguments (`--control-plane real`); waits only for the
    /// nodes that run our agent (not those given to kube-proxy).
    pub fn up_with_agents_and(&self, file: &str, extra: &[&str], frontends: u64) -> Value {
        let agent = agent_bin();
        let mut args = vec![
            "up",
            file,
            "--agent-bin",
            agent.to_str().expect("utf-8 path"),
            "--json",
        ];
        args.extend_from_slice(extra);
        let up = self.json(&args);
        let nodes: Vec<String> = up["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["proxy"].as_str().is_none_or(|p| p == "strait"))
            .map(|n| text(n, &["name"]).to_string())
            .collect();
        for node in nodes {
            self.wait_for_agent(&node, frontends);
        }
        up
    }

    /// The agent's `status -o json` on `node`.
    pub fn agent_status(&self, node: &str) -> Option<Value> {
        let agent = agent_bin();
        let out = self.run(&[
            "exec",
            &format!("node/{node}"),
            "--",
            agent.to_str()?,
            "status",
            "-o",
            "json",
        ]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_for_agent(&self, node: &str, frontends: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut last = None;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.agent_status(node) {
                if s["sync"]["synced"] == true && s["lb"]["frontends"].as_u64().unwrap_or(0) >= frontends {
                    return;
                }
                last = Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("agent on {node} not synced with {frontends} frontends within 15 s; last status: {last:#?}");
    }

    /// `lab probe ... --json` and the per-responder summary.
    pub fn probe(&self, from: &str, to: &str, count: u32) -> Value {
        self.json(&[
            "probe",
            "--from",
            from,
            "--to",
            to,
            "--count",
            &count.to_string(),
            "--json",
        ])
    }
}

/// A TCP connection held open from inside a lab namespace (the socket stays in the namespace it was
/// created in; the thread that opens it enters that namespace and never leaves it).
pub struct LongConnection {
    stream: std::io::BufReader<std::net::TcpStream>,
}

impl LongConnection {
    /// Connects from the named netns to `to` (e.g. `10.96.0.10:80`), bounded by a 2 s timeout.
    pub fn open(netns: &str, to: &str) -> LongConnection {
        let path = format!("/run/netns/{netns}");
        let to: std::net::SocketAddr = to.parse().expect("address");
        let stream = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the lab netns");
            std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connecting to {to} from {path}: {e}"))
        })
        .join()
        .expect("connect thread");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        LongConnection {
            stream: std::io::BufReader::new(stream),
        }
    }

    /// Sends one line and returns the pod that answered (`ns/name`), or the error.
    pub fn ask(&mut self) -> Result<String, String> {
        use std::io::{BufRead, Write};
        self.stream
            .get_mut()
            .write_all(b"hello\n")
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => {
                let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
                Ok(v["pod"].as_str().unwrap_or_default().to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Lab {
    /// `lab apply` of YAML text (written to a file of the test's own).
    pub fn apply_text(&self, yaml: &str) {
        let path = std::env::temp_dir().join(format!("strait-{}-{}.yaml", self.name, std::process::id()));
        std::fs::write(&path, yaml).expect("writing the objects");
        let out = self.run(&["apply", path.to_str().expect("utf-8")]);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "lab apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Repeats `probe` (bounded: 10 s) until `done` says its answer shows the change took effect.
    pub fn wait_for(&self, from: &str, to: &str, count: u32, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let p = self.probe(from, to, count);
            if done(&p) || std::time::Instant::now() > deadline {
                return p;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Lab {
    /// `lab delete` of YAML text.
    pub fn delete_text(&self, yaml: &str) {
        let path = std::env::temp_dir().join(format!("strait-{}-{}-del.yaml", self.name, std::process::id()));
        std::fs::write(&path, yaml).expect("writing the objects");
        let out = self.run(&["delete", path.to_str().expect("utf-8")]);
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "lab delete failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The upstream Kubernetes binaries `lab up --control-plane real` runs, in the cache `cargo xtask k8s
/// build` fills (`STRAIT_K8S_CACHE`, else `$XDG_CACHE_HOME/strait/k8s` or `~/.cache/strait/k8s`).
/// `None` when they are not there: a cold build takes 12 minutes or more, so such tests run where a
/// build exists (`--if-cached`, as `cargo xtask k8s smoke --if-cached`) and otherwise say why not.
pub fn k8s_binaries() -> Option<PathBuf> {
    // Keep in step with xtask/src/k8s/mod.rs KUBERNETES_VERSION.
    let version = std::env::var("STRAIT_K8S_VERSION").unwrap_or_else(|_| "v1.34.4".into());
    let root = std::env::var_os("STRAIT_K8S_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("strait/k8s")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/strait/k8s")))?;
    let bin = root.join(version).join("bin");
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy"]
        .iter()
        .all(|b| bin.join(b).is_file())
        .then_some(bin)
}

/// True when a real-control-plane test can run: privileges as `require_privileges`, and the k8s
/// binaries cached; without them one line on stderr names `cargo xtask k8s build`.
pub fn require_k8s(what: &str) -> bool {
    if !require_privileges(what) {
        return false;
    }
    if k8s_binaries().is_none() {
        eprintln!(
            "skipping {what}: no cached Kubernetes build (run `cargo xtask k8s build`, about 12 min cold)"
        );
        return false;
    }
    true
}

/// The network namespace of pod `ns/name` in a `lab up --json` answer.
pub fn pod_netns(up: &Value, pod: &str) -> String {
    up["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["name"] == pod))
        .and_then(|p| p["netns"].as_str())
        .unwrap_or_else(|| panic!("no pod {pod} in the lab: {up:#}"))
        .to_string()
}
