//! A lab of network namespaces that stands in for a Kubernetes node, for the kernel tests, the
//! demo and the benchmarks.
//!
//! Takes: root privileges, iproute2, nftables, ethtool. Gives: a "node" network namespace and
//! "pods" (network namespaces joined to the node by veth pairs, one cgroup v2 directory each,
//! addresses from 10.231.N.0/24 and fd00:fa:N::/64 that exist only inside those namespaces),
//! commands that run inside a pod (its netns and its cgroup) or the node, and nftables counters
//! in the node's forward hook as an independent count. Must never: touch the machine's own
//! interfaces or addresses, or leave anything behind: dropping a [`Lab`] kills the processes it
//! started (by PID) and removes its namespaces, veths and cgroups, also when a test panics.
//! Offloads are off on every veth, so an skb is a wire packet and nftables counts what the wire
//! carries.

pub mod apiserver;
pub mod memcg;
pub mod sinks;

use std::{
    collections::HashMap,
    fs::{self, File},
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Prefix of every name a lab creates (netns, links, cgroups).
pub const PREFIX: &str = "fa";

/// A lab command or set-up step failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command exited non-zero.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed.
        stderr: String,
    },
    /// An I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, LabError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// Runs `program args`, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out =
        Command::new(program).args(args).stdin(Stdio::null()).output().map_err(io(format!("running {program}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process is root (the kernel tests need it).
pub fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test that needs root can run: true as root; else it says `skipped TEST: needs root`
/// and is false, unless `FLOWAUDIT_REQUIRE_ROOT_TESTS=1` (set by `cargo xtask test`), where it
/// fails the test.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("FLOWAUDIT_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
        "{test} needs root and FLOWAUDIT_REQUIRE_ROOT_TESTS=1 forbids skipping"
    );
    eprintln!("skipped {test}: needs root");
    false
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

/// One "pod": a network namespace behind a veth, with its own cgroup.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Short name (`p1`, `p2`, ...).
    pub name: String,
    /// Network namespace name (under /run/netns).
    pub netns: String,
    /// The veth end in the node namespace.
    pub node_veth: String,
    /// IPv4 address.
    pub ipv4: Ipv4Addr,
    /// IPv6 address.
    pub ipv6: Ipv6Addr,
    /// cgroup v2 directory of the pod's processes.
    pub cgroup: PathBuf,
}

/// A node namespace, pods, and everything to remove at the end.
pub struct Lab {
    /// Unique id of this lab (part of every name).
    pub id: String,
    /// Node network namespace name.
    pub node_netns: String,
    /// The pods.
    pub pods: Vec<Pod>,
    /// cgroup v2 directory holding the pods' cgroups (attach the agent here).
    pub cgroup: PathBuf,
    children: Vec<Child>,
    next_pod: u32,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn netns_file(name: &str) -> Result<File> {
    File::open(format!("/run/netns/{name}")).map_err(io(format!("opening netns {name}")))
}

/// A command that runs in `netns` and joins each of `cgroups` (directories of any hierarchy)
/// before it starts.
fn command_in(netns: &str, cgroups: &[&Path], program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let ns = netns_file(netns)?;
    let procs = cgroups
        .iter()
        .map(|dir| {
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .map_err(io(format!("opening {}/cgroup.procs", dir.display())))
        })
        .collect::<Result<Vec<File>>>()?;
    let mut cmd = Command::new(program);
    // SAFETY: between fork and exec only async-signal-safe syscalls run (write, setns), on fds
    // opened before the fork and moved into the closure.
    unsafe {
        cmd.pre_exec(move || {
            for procs in &procs {
                // "0" moves the writing process: the child itself.
                if libc::write(procs.as_raw_fd(), b"0\n".as_ptr().cast(), 2) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Runs `f` on a thread that has entered `netns` (sockets it opens live there).
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns = netns_file(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(LabError::Io { what: "setns".into(), source: std::io::Error::last_os_error() });
        }
        Ok(f())
    })
    .join()
    .expect("netns thread panicked")
}

/// `ethtool -K` of `dev` in `netns`: TSO, GSO, GRO and the checksum offloads all `on` or off.
fn offloads(netns: &str, dev: &str, on: bool) -> Result<()> {
    let state = if on { "on" } else { "off" };
    let mut args = vec!["netns", "exec", netns, "ethtool", "-K", dev];
    for feature in ["tso", "gso", "gro", "tx", "rx"] {
        args.extend([feature, state]);
    }
    run("ip", &args).map(drop)
}

impl Lab {
    /// Creates the node namespace and `pods` pods, and removes leftovers of labs whose creating
    /// process is gone (a run killed with SIGKILL cannot clean up after itself).
    pub fn new(pods: usize) -> Result<Lab> {
        cleanup_stale();
        let pid = std::process::id();
        let id = format!("{:x}{}", pid & 0xfffff, SEQ.fetch_add(1, Ordering::SeqCst));
        let node_netns = format!("{PREFIX}{id}-node");
        let root = cgroup2_root().ok_or_else(|| LabError::Io {
            what: "finding the cgroup2 mount".into(),
            source: std::io::Error::other("no cgroup2 in /proc/mounts"),
        })?;
        let cgroup = root.join(format!("{PREFIX}lab-{pid}-{id}"));
        let mut lab = Lab { id, node_netns, pods: Vec::new(), cgroup, children: Vec::new(), next_pod: 1 };
        run("ip", &["netns", "add", &lab.node_netns])?;
        lab.ip_node(&["link", "set", "lo", "up"])?;
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            lab.node_run("sysctl", &["-qw", sysctl])?;
        }
        fs::create_dir(&lab.cgroup).map_err(io(format!("creating {}", lab.cgroup.display())))?;
        for _ in 0..pods {
            lab.add_pod()?;
        }
        Ok(lab)
    }

    fn ip_node(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.node_netns.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command in the node namespace and waits for it.
    pub fn node_run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = command_in(&self.node_netns, &[], program)?
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("running {program} in the node")))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("(node) {program} {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds one pod: netns, veth pair (offloads off), addresses, routes, cgroup.
    pub fn add_pod(&mut self) -> Result<Pod> {
        let n = self.next_pod;
        self.next_pod += 1;
        let name = format!("p{n}");
        let netns = format!("{PREFIX}{}-{name}", self.id);
        let node_veth = format!("{PREFIX}{}{name}", self.id);
        let ipv4 = Ipv4Addr::new(10, 231, n as u8, 2);
        let ipv6: Ipv6Addr = format!("fd00:fa:{n:x}::2").parse().expect("valid");
        let cgroup = self.cgroup.join(&name);
        run("ip", &["netns", "add", &netns])?;
        self.ip_node(&["link", "add", &node_veth, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        let in_pod = |args: &[&str]| -> Result<String> {
            let mut full = vec!["-n", netns.as_str()];
            full.extend_from_slice(args);
            run("ip", &full)
        };
        // No DAD: the addresses are usable at once, and no extra ND packets are sent.
        for (ns, dev) in [(self.node_netns.as_str(), node_veth.as_str()), (netns.as_str(), "eth0")] {
            run("ip", &["netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv6.conf.{dev}.accept_dad=0")])?;
            offloads(ns, dev, false)?;
        }
        self.ip_node(&["addr", "add", &format!("10.231.{n}.1/24"), "dev", &node_veth])?;
        self.ip_node(&["addr", "add", &format!("fd00:fa:{n:x}::1/64"), "dev", &node_veth, "nodad"])?;
        self.ip_node(&["link", "set", &node_veth, "up"])?;
        in_pod(&["link", "set", "lo", "up"])?;
        in_pod(&["addr", "add", &format!("{ipv4}/24"), "dev", "eth0"])?;
        in_pod(&["addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"])?;
        in_pod(&["link", "set", "eth0", "up"])?;
        in_pod(&["route", "add", "default", "via", &format!("10.231.{n}.1")])?;
        in_pod(&["-6", "route", "add", "default", "via", &format!("fd00:fa:{n:x}::1")])?;
        fs::create_dir(&cgroup).map_err(io(format!("creating {}", cgroup.display())))?;
        let pod = Pod { name, netns, node_veth, ipv4, ipv6, cgroup };
        self.pods.push(pod.clone());
        Ok(pod)
    }

    /// Turns the segmentation, receive and checksum offloads of every pod's veth pair (both ends)
    /// on or off. A new pod has them off, so the receiving side gets every wire packet as an skb
    /// of its own; on is what a veth starts with (large TCP segments through the stack).
    pub fn set_offloads(&self, on: bool) -> Result<()> {
        for pod in &self.pods {
            offloads(&self.node_netns, &pod.node_veth, on)?;
            offloads(&pod.netns, "eth0", on)?;
        }
        Ok(())
    }

    /// Deletes a pod's namespace (its veth goes with it) and cgroup.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.pods.iter().position(|p| p.name == name) else { return Ok(()) };
        let pod = self.pods.remove(i);
        run("ip", &["netns", "del", &pod.netns])?;
        remove_cgroup(&pod.cgroup);
        Ok(())
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// A command that runs inside `pod` (its netns and cgroup).
    pub fn pod_command(&self, pod: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let p = self.pod(pod);
        command_in(&p.netns, &[&p.cgroup], program)
    }

    /// A command that runs inside `pod`'s netns but outside every lab cgroup.
    pub fn pod_command_no_cgroup(&self, pod: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        command_in(&self.pod(pod).netns, &[], program)
    }

    /// A command that runs in the node namespace (the agent's place).
    pub fn node_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        command_in(&self.node_netns, &[], program)
    }

    /// A command in the node namespace that joins each of `cgroups` first (a memory cgroup of
    /// [`memcg::MemoryCgroup`], say).
    pub fn node_command_in(&self, cgroups: &[&Path], program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        command_in(&self.node_netns, cgroups, program)
    }

    /// Starts `cmd` and keeps it to be killed when the lab goes. Returns its PID.
    pub fn spawn(&mut self, mut cmd: Command) -> Result<u32> {
        let child = cmd.stdin(Stdio::null()).spawn().map_err(io("spawning a lab process"))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Runs `cmd` to completion; fails with its stderr.
    pub fn output(&self, mut cmd: Command) -> Result<String> {
        let out = cmd.stdin(Stdio::null()).output().map_err(io("running a lab command"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("{cmd:?}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Loads nftables counters into the node: one named counter per `(name, match)`, counting
    /// forwarded packets (IP-layer bytes) that match. The independent count of the tests.
    pub fn nft_counters(&self, rules: &[(&str, String)]) -> Result<()> {
        self.nft_script(&self.node_netns, &counters_script("forward priority -500", rules))
    }

    /// Loads nftables counters into `pod`'s namespace, counting in its postrouting hook at the
    /// last priority: what its sockets send, after every netfilter decision and right before
    /// the cgroup egress hook, so a packet dropped later (a full veth backlog) is still counted.
    /// Read them with [`Lab::read_pod_counters`].
    pub fn pod_nft_counters(&self, pod: &str, rules: &[(&str, String)]) -> Result<()> {
        self.nft_script(&self.pod(pod).netns, &counters_script("postrouting priority 2147483647", rules))
    }

    /// Loads an nftables script (`nft -f -`) in `netns`.
    fn nft_script(&self, netns: &str, script: &str) -> Result<()> {
        let mut child = command_in(netns, &[], "nft")?
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("running nft"))?;
        child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(io("writing to nft"))?;
        let out = child.wait_with_output().map_err(io("waiting for nft"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("nft -f - <<{script}"),
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(())
    }

    /// Drops forwarded packets matching each `match` in the node, as a CNI enforcing a policy would
    /// (a chain after the counters, so the counters still see the attempts).
    pub fn nft_drop(&self, matches: &[String]) -> Result<()> {
        let mut script = String::from(
            "table inet falab_enforce {\n  chain enforce {\n    type filter hook forward priority 0; policy accept;\n",
        );
        for m in matches {
            script.push_str(&format!("    {m} drop\n"));
        }
        script.push_str("  }\n}\n");
        self.nft_script(&self.node_netns, &script)
    }

    /// A cgroup of its own under the lab's (for a "host-network pod": a process in the node's
    /// network namespace named through its cgroup). Returns its path.
    pub fn add_cgroup(&self, name: &str) -> Result<PathBuf> {
        let dir = self.cgroup.join(name);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(dir)
    }

    /// A command in the node's network namespace and the lab cgroup `name` (see [`Lab::add_cgroup`]).
    pub fn node_command_in_cgroup(&self, name: &str, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        command_in(&self.node_netns, &[&self.cgroup.join(name)], program)
    }

    /// The path of the lab's cgroup relative to the cgroup v2 mount (for manifests' annotations).
    pub fn cgroup_relative(&self) -> String {
        let root = cgroup2_root().unwrap_or_default();
        self.cgroup.strip_prefix(&root).map(|p| p.display().to_string()).unwrap_or_default()
    }

    /// Reads the named counters: name → (packets, bytes).
    pub fn read_counters(&self) -> Result<HashMap<String, (u64, u64)>> {
        let text = self.node_run("nft", &["-j", "list", "counters", "table", "inet", "falab"])?;
        parse_counters(&text)
    }

    /// Reads the named counters of [`Lab::pod_nft_counters`] in `pod`.
    pub fn read_pod_counters(&self, pod: &str) -> Result<HashMap<String, (u64, u64)>> {
        let mut cmd = command_in(&self.pod(pod).netns, &[], "nft")?;
        cmd.args(["-j", "list", "counters", "table", "inet", "falab"]);
        parse_counters(&self.output(cmd)?)
    }
}

/// An nftables table `inet falab` with one named counter per rule in a chain on `hook`.
fn counters_script(hook: &str, rules: &[(&str, String)]) -> String {
    let mut script = String::from("table inet falab {\n");
    for (name, _) in rules {
        script.push_str(&format!("  counter {name} {{ }}\n"));
    }
    script.push_str(&format!("  chain counted {{\n    type filter hook {hook}; policy accept;\n"));
    for (name, matcher) in rules {
        script.push_str(&format!("    {matcher} counter name \"{name}\"\n"));
    }
    script.push_str("  }\n}\n");
    script
}

/// The counters of `nft -j list counters` output: name → (packets, bytes).
fn parse_counters(text: &str) -> Result<HashMap<String, (u64, u64)>> {
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| LabError::Io { what: "parsing nft -j output".into(), source: std::io::Error::other(e) })?;
    let mut out = HashMap::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("counter") {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            out.insert(name, (c["packets"].as_u64().unwrap_or(0), c["bytes"].as_u64().unwrap_or(0)));
        }
    }
    Ok(out)
}

impl Lab {
    /// Kills one process this lab started (by PID) and reaps it.
    pub fn kill(&mut self, pid: u32, signal: i32) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        let mut child = self.children.remove(i);
        // SAFETY: signalling a child we started and have not reaped.
        unsafe { libc::kill(pid as i32, signal) };
        child.wait().ok()
    }

    /// Waits up to `timeout` for process `pid` (started by this lab) to exit on its own.
    pub fn wait(&mut self, pid: u32, timeout: Duration) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.children[i].try_wait() {
                // Reaped by try_wait above.
                #[allow(clippy::zombie_processes, reason = "the child was reaped by try_wait")]
                drop(self.children.remove(i));
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn remove_cgroup(dir: &Path) {
    // Move stragglers to the parent, then remove leaves first.
    let parent = dir.parent().map(Path::to_path_buf);
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_cgroup(&e.path());
            }
        }
    }
    if let (Ok(procs), Some(parent)) = (fs::read_to_string(dir.join("cgroup.procs")), parent) {
        for pid in procs.split_whitespace() {
            let _ = fs::write(parent.join("cgroup.procs"), pid);
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut child in self.children.drain(..) {
            // SAFETY: a child we started and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
        for pod in &self.pods {
            let _ = run("ip", &["netns", "del", &pod.netns]);
        }
        let _ = run("ip", &["netns", "del", &self.node_netns]);
        remove_cgroup(&self.cgroup);
    }
}

/// Removes namespaces and cgroups of labs (and memory cgroups) whose creating process no longer
/// runs.
pub fn cleanup_stale() {
    memcg::remove_stale();
    let Some(root) = cgroup2_root() else { return };
    let alive = |pid: &str| Path::new(&format!("/proc/{pid}")).exists();
    let mut dead_ids = Vec::new();
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // fa lab-<pid>-<id>
            let Some(rest) = name.strip_prefix(&format!("{PREFIX}lab-")) else { continue };
            let mut parts = rest.splitn(2, '-');
            let (Some(pid), Some(id)) = (parts.next(), parts.next()) else { continue };
            if !alive(pid) {
                dead_ids.push(id.to_owned());
                remove_cgroup(&e.path());
            }
        }
    }
    if dead_ids.is_empty() {
        return;
    }
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for line in list.lines() {
            let ns = line.split_whitespace().next().unwrap_or_default();
            if dead_ids.iter().any(|id| ns.starts_with(&format!("{PREFIX}{id}-"))) {
                let _ = run("ip", &["netns", "del", ns]);
            }
        }
    }
}

/// Path of a binary built in this workspace's target directory (`debug` or `release`).
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("FLOWAUDIT_BIN_{}", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join(name);
        if p.exists() {
            return p;
        }
    }
    target.join("debug").join(name)
}

/// The flowaudit agent running in a lab's node namespace.
pub struct Agent {
    /// PID of the agent process.
    pub pid: u32,
    /// Its flow-log directory.
    pub flow_log_dir: PathBuf,
    node_netns: String,
    metrics_port: u16,
}

/// Metrics port of a lab agent (inside the node namespace, on its loopback).
pub const AGENT_METRICS_PORT: u16 = 9464;

impl Agent {
    /// Starts `flowaudit run` in the node namespace with the lab's cgroup, level 0 aggregation,
    /// 1 s flushes unless `extra` sets `--flush-interval`, the state directory `<flow_log_dir>/state`
    /// unless `extra` sets `--state-dir`, then `extra`, and waits until `/readyz` answers 200.
    pub fn start(lab: &mut Lab, flow_log_dir: &Path, extra: &[&str]) -> Result<Agent> {
        Agent::start_in(lab, &[], flow_log_dir, extra)
    }

    /// [`Agent::start`] in `cgroups` (joined before the agent starts, so everything it allocates
    /// is charged there: a [`memcg::MemoryCgroup`] bounds its memory). `extra` may set
    /// `--aggregation-allowed`, which then replaces the level 0 default.
    pub fn start_in(lab: &mut Lab, cgroups: &[&Path], flow_log_dir: &Path, extra: &[&str]) -> Result<Agent> {
        let bin = workspace_bin("flowaudit");
        let mut cmd = lab.node_command_in(cgroups, &bin)?;
        cmd.arg("run")
            .arg("--cgroup")
            .arg(&lab.cgroup)
            .arg("--flow-log-dir")
            .arg(flow_log_dir)
            .args(if extra.contains(&"--flush-interval") { &[][..] } else { &["--flush-interval", "1s"][..] })
            .args(if extra.contains(&"--aggregation-allowed") { &[][..] } else { &["--aggregation-allowed", "0"][..] })
            .args(["--aggregation-denied", "0", "--node", "lab-node"])
            .args(["--metrics-addr", &format!("127.0.0.1:{AGENT_METRICS_PORT}")])
            // The restart state stays with the test's files, never in the machine's /var/lib.
            .args(if extra.contains(&"--state-dir") {
                vec![]
            } else {
                vec![std::ffi::OsString::from("--state-dir"), flow_log_dir.join("state").into_os_string()]
            })
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let pid = lab.spawn(cmd)?;
        let agent = Agent {
            pid,
            flow_log_dir: flow_log_dir.to_owned(),
            node_netns: lab.node_netns.clone(),
            metrics_port: AGENT_METRICS_PORT,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = agent.get("/readyz") {
                return Ok(agent);
            }
            if let Some(status) = lab.wait(pid, Duration::from_millis(100)) {
                return Err(LabError::Command {
                    cmd: format!("{} run", bin.display()),
                    stderr: format!("exited early: {status}"),
                });
            }
            if Instant::now() > deadline {
                return Err(LabError::Io {
                    what: "waiting for /readyz".into(),
                    source: std::io::Error::other("timed out"),
                });
            }
        }
    }

    /// `GET path` on the agent's metrics server: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let port = self.metrics_port;
        let path = path.to_owned();
        in_netns(&self.node_netns, move || -> std::io::Result<(u16, String)> {
            use std::io::Read as _;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
            Ok((status, body))
        })?
        .map_err(io("querying the agent"))
    }

    /// The value of one metric sample (`name{labels}` exactly as exposed), 0 if absent.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        let (_, body) = self.get("/metrics")?;
        Ok(body
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0))
    }

    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
    pub fn status_bytes(&self, field: &str) -> Result<u64> {
        proc_status_bytes(self.pid, field)
    }

    /// The BPF maps the agent holds open now, from `/proc/PID/fdinfo`.
    pub fn bpf_maps(&self) -> Result<Vec<BpfMap>> {
        bpf_maps(self.pid)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(self, lab: &mut Lab) -> Option<std::process::ExitStatus> {
        // SAFETY: signalling a child the lab started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        lab.wait(self.pid, Duration::from_secs(30))
    }

    /// Every record in `flows.log*`, oldest file first.
    pub fn records(dir: &Path) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("flows.log")))
                    .collect()
            })
            .unwrap_or_default();
        // flows.log.N (oldest = highest N) first, flows.log last.
        files.sort_by_key(|p| {
            std::cmp::Reverse(p.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u32>().ok()).unwrap_or(0))
        });
        files
            .iter()
            .flat_map(|p| fs::read_to_string(p).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>())
            .map(|l| serde_json::from_str(&l).expect("flows.log lines are JSON"))
            .collect()
    }
}

/// Sum of a flow's records for one reporter: (packets_out, bytes_out, packets_in, bytes_in,
/// records). `matches` selects records by their fields.
pub fn totals(
    records: &[serde_json::Value],
    reporter: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) -> (u64, u64, u64, u64, usize) {
    let mut t = (0, 0, 0, 0, 0);
    for r in records.iter().filter(|r| r["reporter"] == reporter && matches(r)) {
        t.0 += r["packets_out"].as_u64().unwrap_or(0);
        t.1 += r["bytes_out"].as_u64().unwrap_or(0);
        t.2 += r["packets_in"].as_u64().unwrap_or(0);
        t.3 += r["bytes_in"].as_u64().unwrap_or(0);
        t.4 += 1;
    }
    t
}

/// How many programs are attached through TCX to `ifname` (ingress or egress) in `netns`, asked
/// of the kernel with `BPF_PROG_QUERY` (bpftool of this distribution does not list TCX).
pub fn tcx_programs(netns: &str, ifname: &str, ingress: bool) -> Result<u32> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|e| LabError::Io { what: "interface name".into(), source: std::io::Error::other(e) })?;
    in_netns(netns, move || -> std::io::Result<u32> {
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        /// The `query` member of `union bpf_attr` (BPF_PROG_QUERY).
        #[repr(C)]
        #[derive(Default)]
        struct Query {
            target: u32,
            attach_type: u32,
            query_flags: u32,
            attach_flags: u32,
            prog_ids: u64,
            prog_cnt: u32,
            _pad: u32,
            prog_attach_flags: u64,
            link_ids: u64,
            link_attach_flags: u64,
            revision: u64,
        }
        const BPF_PROG_QUERY: libc::c_long = 16;
        const BPF_TCX_INGRESS: u32 = 46;
        const BPF_TCX_EGRESS: u32 = 47;
        let mut q = Query {
            target: ifindex,
            attach_type: if ingress { BPF_TCX_INGRESS } else { BPF_TCX_EGRESS },
            ..Default::default()
        };
        // SAFETY: `q` is a valid bpf_attr prefix for this command; no id buffers are passed.
        let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut q as *mut Query, size_of::<Query>()) };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(q.prog_cnt)
    })?
    .map_err(io(format!("BPF_PROG_QUERY on {ifname}")))
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(io(format!("reading {path}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| LabError::Io { what: format!("{field} in {path}"), source: std::io::Error::other("absent") })
}

/// One BPF map a process holds open, as `/proc/PID/fdinfo` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfMap {
    /// `map_type` (a number of `enum bpf_map_type`: 1 hash, 6 per-CPU array, 12 array of maps, 27 ring buffer).
    pub map_type: u32,
    /// `max_entries` (bytes for a ring buffer).
    pub max_entries: u64,
    /// `memlock`: the bytes the kernel charges for the map.
    pub memlock: u64,
    /// `map_id`.
    pub id: u32,
}

/// The BPF maps process `pid` holds open (each map once, however many fds point to it).
pub fn bpf_maps(pid: u32) -> Result<Vec<BpfMap>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut maps: Vec<BpfMap> = Vec::new();
    for entry in fs::read_dir(&dir).map_err(io(format!("reading {dir}")))?.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else { continue };
        let field =
            |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok());
        let (Some(map_type), Some(max_entries), Some(memlock), Some(id)) =
            (field("map_type"), field("max_entries"), field("memlock"), field("map_id"))
        else {
            continue;
        };
        if maps.iter().all(|m| m.id != id as u32) {
            maps.push(BpfMap { map_type: map_type as u32, max_entries, memlock, id: id as u32 });
        }
    }
    maps.sort_by_key(|m| m.id);
    Ok(maps)
}
