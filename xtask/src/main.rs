//! Developer tasks: `cargo xtask setup | build | test | demo | bench | fuzz | kube-apiserver | crdgen`.
//!
//! Every task installs what it needs first, idempotently (`setup`): Debian packages, the nightly
//! toolchain's `rust-src`, and bpf-linker built against Debian's LLVM 22. Root-only steps (apt,
//! the lab) say so when run without root.

mod bench;
mod bench_cpu;
mod bench_lab;
mod bench_memory;
mod demo;
mod fuzz;
mod kube_apiserver;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install build and test dependencies (idempotent).
    Setup,
    /// Build the agent (and the lab tools).
    Build {
        /// Release profile.
        #[arg(long)]
        release: bool,
    },
    /// Unit tests, then the kernel tests (root).
    Test,
    /// A lab node with three pods, the agent, traffic, the flow log; cleaned up at the end.
    Demo,
    /// The demo itself, run as a child of `demo` (which cleans up if it is interrupted).
    #[command(hide = true)]
    DemoRun,
    /// Per-packet cost of each program and iperf3 throughput with and without the agent.
    Bench,
    /// Only the memory part of `bench` (RSS at 100k live flows, kernel maps, bounds): prints
    /// its section of `docs/performance.md`; `--write-doc` replaces it there.
    #[command(hide = true)]
    BenchMemory {
        /// Replace the section in docs/performance.md.
        #[arg(long)]
        write_doc: bool,
    },
    /// Only the lab-rates part of `bench` (TCP and UDP iperf3, short connections; each
    /// configuration's ratio to no programs paired by round): prints its three tables;
    /// `--write-doc` replaces their sections of docs/performance.md.
    #[command(hide = true)]
    BenchLab {
        /// Rounds, each running every configuration back to back.
        #[arg(long, default_value_t = bench_lab::ROUNDS)]
        rounds: usize,
        /// N,M: iperf3 `-A N,M` (its client on CPU N, its server on CPU M); `none`: not pinned.
        #[arg(long, default_value = bench_lab::IPERF_AFFINITY)]
        iperf_affinity: String,
        /// Replace the three sections in docs/performance.md.
        #[arg(long)]
        write_doc: bool,
        /// Record the first round's TCP runs of each configuration with `perf record -g` into
        /// DIR/<configuration number>.data (offloads off) and DIR/<number>-offloads.data.
        #[arg(long, value_name = "DIR")]
        perf: Option<PathBuf>,
    },
    /// Only the CPU-per-flow part of `bench` (short connections, the best of `--rounds`): prints
    /// its table (`--write-doc`: replaces its section of docs/performance.md); `--perf FILE` records the agent's busy phase with
    /// `perf record --call-graph dwarf` (FILE.N per round when there are several).
    #[command(hide = true)]
    BenchCpu {
        /// Rounds, each in a lab of its own.
        #[arg(long, default_value_t = bench_cpu::ROUNDS)]
        rounds: usize,
        /// perf.data output.
        #[arg(long)]
        perf: Option<PathBuf>,
        /// LABEL=PATH: measure this agent binary (repeat to compare several, rounds interleaved)
        /// instead of the one just built.
        #[arg(long, value_parser = parse_agent)]
        agent: Vec<(String, PathBuf)>,
        /// Replace the section in docs/performance.md (not with --agent).
        #[arg(long, conflicts_with = "agent")]
        write_doc: bool,
    },
    /// Fuzz the parsers of what the agent reads from outside (cargo-fuzz, nightly): each target
    /// for N seconds; fails on a crash and names the reproducer. Not part of `test`.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// One target (default: all).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// Ensure kube-apiserver and kubectl v1.20.2 are cached outside the repository for the
    /// cluster tests (built from Debian's source package on first use: about 15 minutes).
    KubeApiserver,
    /// Write the CRDs generated from the Rust types (agent/src/report/resource.rs) to
    /// deploy/base/crds/; a unit test of the agent fails while the committed files differ.
    Crdgen,
}

/// `LABEL=PATH` of `bench-cpu --agent`.
fn parse_agent(s: &str) -> Result<(String, PathBuf), String> {
    let (label, path) = s.split_once('=').ok_or_else(|| format!("{s}: expected LABEL=PATH"))?;
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!("{}: no such file", path.display()));
    }
    Ok((label.to_owned(), path))
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// `cargo` with `$CARGO_HOME/bin` (bpf-linker) on PATH, run at the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).env("PATH", setup::path_with_cargo_bin());
    cmd
}

/// Runs `cmd`, failing with its description when it fails.
pub fn status(mut cmd: Command) -> anyhow::Result<()> {
    let what = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// Builds the agent and the lab tools; returns the target profile directory.
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "flowaudit", "-p", "flowaudit-lab"]);
    if release {
        cmd.arg("--release");
    }
    status(cmd)?;
    Ok(build_dir(release))
}

/// The directory of the binaries `cargo build` makes (with `--release` or not).
pub fn build_dir(release: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    target.join(if release { "release" } else { "debug" })
}

fn is_root() -> bool {
    // SAFETY: no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a `cargo test` command, echoing its output; returns (passed, failed) summed over its
/// `test result:` lines.
fn cargo_test(mut cmd: Command) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead as _;
    let what = format!("{cmd:?}");
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("starting {what}"))?;
    let (mut passed, mut failed) = (0, 0);
    for line in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word)?.split_whitespace().last()?.parse::<u64>().ok())
            };
            passed += num(" passed").unwrap_or(0);
            failed += num(" failed").unwrap_or(0);
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("{what} failed: {status}");
    }
    Ok((passed, failed))
}

fn test() -> anyhow::Result<()> {
    setup::run()?;
    let bin = build(false)?;
    // Unit and pipeline tests: no root, no kernel.
    let mut unit = cargo();
    unit.args(["test", "--no-fail-fast", "-p", "flowaudit-common", "-p", "flowaudit", "-p", "xtask"]);
    // setup installed chromium: the HTML report test must run, not skip.
    unit.env("FLOWAUDIT_REQUIRE_BROWSER", "1");
    let (mut passed, mut failed) = cargo_test(unit)?;
    // Kernel and cluster tests: the real programs, the lab, a real kube-apiserver + etcd, root.
    if is_root() {
        // Built once into a cache outside the repository (about 15 minutes the first time).
        let k8s = kube_apiserver::ensure()?;
        let mut kernel = cargo();
        kernel
            .args(["test", "--no-fail-fast", "-p", "flowaudit-lab", "--", "--test-threads", "2"])
            .env("FLOWAUDIT_REQUIRE_ROOT_TESTS", "1")
            .env("FLOWAUDIT_REQUIRE_SINK_TESTS", "1")
            .env("FLOWAUDIT_SINKS_VENV", setup::sinks_venv())
            .env("FLOWAUDIT_BIN_FLOWAUDIT", bin.join("flowaudit"))
            .env("FLOWAUDIT_K8S_BIN", &k8s.bin)
            .env("FLOWAUDIT_ETCD", &k8s.etcd);
        let (p, f) = cargo_test(kernel)?;
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    if !is_root() {
        bail!("the kernel tests need root and did not run: run `sudo -E cargo xtask test`");
    }
    Ok(())
}

/// `cargo xtask crdgen`: runs the agent's `crdgen` example, which renders the CRDs from the
/// Rust types (kube's `CustomResource` derive) into `deploy/base/crds/`. The agent's build needs
/// the eBPF toolchain, so `setup` runs first.
fn crdgen() -> anyhow::Result<()> {
    setup::run()?;
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "flowaudit", "--example", "crdgen", "--"]).arg(root().join("deploy/base/crds"));
    status(cmd)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => {
            setup::run()?;
            build(release).map(|_| ())
        }
        Task::Test => test(),
        Task::Demo => demo::supervise(),
        Task::DemoRun => demo::run(),
        Task::Bench => bench::run(),
        Task::BenchMemory { write_doc } => bench_memory::alone(write_doc),
        Task::BenchLab { rounds, iperf_affinity, write_doc, perf } => {
            let iperf_affinity = Some(iperf_affinity).filter(|a| a != "none");
            bench_lab::alone(&bench_lab::Options { rounds, iperf_affinity, perf }, write_doc)
        }
        Task::BenchCpu { rounds, perf, agent, write_doc } => bench_cpu::alone(rounds, perf, agent, write_doc),
        Task::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
        Task::KubeApiserver => kube_apiserver::run(),
        Task::Crdgen => crdgen(),
    }
}
