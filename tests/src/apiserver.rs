//! A real kube-apiserver (v1.20.2) with its own etcd, on loopback, for the cluster tests.
//!
//! Takes: the binaries of `cargo xtask kube-apiserver` (`$FLOWAUDIT_K8S_BIN` holds
//! `kube-apiserver` and `kubectl`; `$FLOWAUDIT_ETCD`, default `/usr/bin/etcd`) and `openssl`.
//! Gives: etcd and kube-apiserver bound to 127.0.0.1 on free ports with a temporary data
//! directory, token authentication (`system:masters`), RBAC, a self-generated serving
//! certificate (`--cert-dir`), the ServiceAccount admission plugin off (there is no
//! controller-manager to create `default` service accounts), a kubeconfig that verifies TLS,
//! `kubectl`, and a restart of the API server over the same etcd. There is no kubelet and no
//! scheduler: tests play the kubelet by patching `pods/status`.
//! Must never: bind anything but loopback, or leave anything behind: dropping an [`ApiServer`]
//! kills exactly the processes it started (by PID) and removes its directory, also on panic.

use std::{
    fs,
    io::Write as _,
    net::TcpListener,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{LabError, io};

type Result<T> = std::result::Result<T, LabError>;

/// The bearer token of the `admin` user (group `system:masters`).
pub const TOKEN: &str = "flowaudit-test-token";
/// The audit policy of the test API server: the one `docs/audit-log.md` recommends, then nothing
/// for everything else.
pub const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: RequestResponse
  verbs: [create, update, patch, delete]
  resources:
  - {group: \"\", resources: [pods, namespaces]}
  - {group: networking.k8s.io, resources: [networkpolicies]}
  - {group: projectcalico.org, resources: [networkpolicies, globalnetworkpolicies, stagednetworkpolicies, stagedglobalnetworkpolicies, stagedkubernetesnetworkpolicies, tiers, networksets, globalnetworksets, hostendpoints]}
  - {group: crd.projectcalico.org}
  - {group: policy.networking.k8s.io, resources: [adminnetworkpolicies, baselineadminnetworkpolicies]}
- level: None
";
/// How long the API server may take to answer `/readyz` (8–12 s is usual on 2 busy cores).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Where the binaries are: `(k8s bin dir, etcd)`, from `$FLOWAUDIT_K8S_BIN` and
/// `$FLOWAUDIT_ETCD`; `None` when `$FLOWAUDIT_K8S_BIN` is unset.
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let bin = PathBuf::from(std::env::var_os("FLOWAUDIT_K8S_BIN")?);
    let etcd = std::env::var_os("FLOWAUDIT_ETCD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    Some((bin, etcd))
}

/// A free TCP port on 127.0.0.1 (the listener is closed again; the race is harmless here).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("binding 127.0.0.1:0"))?;
    Ok(l.local_addr().map_err(io("local_addr"))?.port())
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// etcd + kube-apiserver, running.
pub struct ApiServer {
    dir: PathBuf,
    bin: PathBuf,
    etcd_port: u16,
    port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    kubeconfig: PathBuf,
}

impl ApiServer {
    /// Starts etcd and the API server and waits until `/readyz` answers `ok`.
    pub fn start() -> Result<Self> {
        let (bin, etcd_bin) = binaries().ok_or_else(|| LabError::Command {
            cmd: "ApiServer::start".into(),
            stderr: "FLOWAUDIT_K8S_BIN is not set (run `cargo xtask kube-apiserver`)".into(),
        })?;
        for b in [bin.join("kube-apiserver"), bin.join("kubectl"), etcd_bin.clone()] {
            if !b.is_file() {
                return Err(LabError::Command {
                    cmd: "ApiServer::start".into(),
                    stderr: format!("{} is missing", b.display()),
                });
            }
        }
        let dir = std::env::temp_dir().join(format!("fa-apiserver-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(dir.join("serving")).map_err(io(format!("creating {}", dir.display())))?;
        let port = free_port()?;
        let mut server = Self {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            bin,
            etcd_port: free_port()?,
            port,
            etcd: None,
            apiserver: None,
        };
        // From here on, a failure drops `server`: what was started is stopped and removed.
        let d = server.dir.clone();
        crate::run("openssl", &["genrsa", "-out", &path(&d.join("sa.key")), "2048"])?;
        crate::run("openssl", &["rsa", "-in", &path(&d.join("sa.key")), "-pubout", "-out", &path(&d.join("sa.pub"))])?;
        fs::write(d.join("audit-policy.yaml"), AUDIT_POLICY).map_err(io("writing audit-policy.yaml"))?;
        fs::write(d.join("tokens.csv"), format!("{TOKEN},admin,admin-uid,\"system:masters\"\n"))
            .map_err(io("writing tokens.csv"))?;
        let (peer, metrics) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{}", server.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut etcd = Command::new(&etcd_bin);
        etcd.args(["--name", "t", "--data-dir"])
            .arg(d.join("etcd"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{metrics}")]);
        server.etcd = Some(spawn(etcd, &d.join("etcd.log"))?);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
             certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: test\n  \
             context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
            path(&d.join("serving/apiserver.crt"))
        );
        fs::write(&server.kubeconfig, kubeconfig).map_err(io("writing the kubeconfig"))?;
        server.start_apiserver()?;
        Ok(server)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The API server's audit log ([`AUDIT_POLICY`]: the policy-related writes at
    /// RequestResponse, nothing else).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("kube-audit.log")
    }

    /// The kubeconfig (server, CA from the cert dir, bearer token).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `kubectl --kubeconfig … args`, returning its stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, "")
    }

    /// Runs `kubectl` with `input` on stdin (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("running kubectl"))?;
        child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(io("kubectl stdin"))?;
        let out = child.wait_with_output().map_err(io("kubectl"))?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("kubectl {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the API server (over the running etcd) and waits for `/readyz`. It keeps its
    /// serving certificate across restarts (`--cert-dir`), so the kubeconfig stays valid.
    pub fn start_apiserver(&mut self) -> Result<()> {
        let d = &self.dir;
        let mut cmd = Command::new(self.bin.join("kube-apiserver"));
        cmd.arg(format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--insecure-port=0"])
            .arg(format!("--secure-port={}", self.port))
            .arg(format!("--cert-dir={}", path(&d.join("serving"))))
            .arg(format!("--token-auth-file={}", path(&d.join("tokens.csv"))))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", path(&d.join("sa.pub"))))
            .arg(format!("--service-account-signing-key-file={}", path(&d.join("sa.key"))))
            .args(["--service-cluster-ip-range=10.96.0.0/24", "--disable-admission-plugins=ServiceAccount"])
            .arg("--enable-priority-and-fairness=false")
            .arg(format!("--audit-policy-file={}", path(&d.join("audit-policy.yaml"))))
            .arg(format!("--audit-log-path={}", path(&self.audit_log())));
        self.apiserver = Some(spawn(cmd, &d.join("apiserver.log"))?);
        self.wait_ready()
    }

    /// Stops the API server (SIGTERM, SIGKILL after 10 s); etcd keeps running with the data.
    pub fn stop_apiserver(&mut self) {
        if let Some(child) = self.apiserver.take() {
            stop(child, Duration::from_secs(10));
        }
    }

    /// Stops and starts the API server over the same etcd; waits for `/readyz`.
    pub fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver();
        self.start_apiserver()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.apiserver.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(LabError::Command {
                    cmd: "kube-apiserver".into(),
                    stderr: format!("exited with {status}:\n{}", tail(&self.dir.join("apiserver.log"), 30)),
                });
            }
            match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(out) if out.trim() == "ok" => return Ok(()),
                Ok(out) => last = out,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(LabError::Command {
            cmd: "kube-apiserver /readyz".into(),
            stderr: format!(
                "not ready after {READY_TIMEOUT:?} (last answer: {last}); apiserver log:\n{}\netcd log:\n{}",
                tail(&self.dir.join("apiserver.log"), 30),
                tail(&self.dir.join("etcd.log"), 10)
            ),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- kube-apiserver log (tail) ---\n{}", tail(&self.dir.join("apiserver.log"), 40));
        }
        for child in [self.apiserver.take(), self.etcd.take()].into_iter().flatten() {
            stop(child, Duration::ZERO);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A number unique within this process (several servers may run in parallel tests).
fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Starts `cmd` with stdout and stderr to `log`; the child is killed if this process dies.
fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
    let file = fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let err = file.try_clone().map_err(io("dup"))?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io(format!("starting {cmd:?}")))
}

/// Ends a child we started, by its PID: SIGTERM, then SIGKILL after `grace`; reaps it.
fn stop(mut child: Child, grace: Duration) {
    let pid = child.id() as i32;
    if !grace.is_zero() {
        // SAFETY: a child we started and have not reaped, so the PID is still ours.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
}

/// A started API server for `test`, or `None` (the test then passes as skipped) when the binaries
/// are not there; with `FLOWAUDIT_REQUIRE_ROOT_TESTS=1` (set by `cargo xtask test`) a missing
/// binary is a failure instead.
pub fn server_or_skip(test: &str) -> Option<ApiServer> {
    if binaries().is_none() {
        assert!(
            std::env::var("FLOWAUDIT_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
            "{test}: FLOWAUDIT_K8S_BIN is not set and FLOWAUDIT_REQUIRE_ROOT_TESTS=1 forbids skipping \
             (run `cargo xtask kube-apiserver` and export what it prints)"
        );
        eprintln!("skipped: no kube-apiserver ({test}: FLOWAUDIT_K8S_BIN is not set)");
        return None;
    }
    Some(ApiServer::start().unwrap_or_else(|e| panic!("{test}: starting etcd + kube-apiserver: {e}")))
}
