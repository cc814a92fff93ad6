//! `cargo xtask fuzz [--seconds N] [TARGET]`: the cargo-fuzz targets of `fuzz/` (the parsers of
//! what the agent reads from outside), each run for N seconds.
//!
//! Installs cargo-fuzz (pinned) when `cargo fuzz --version` does not report it, then runs
//! `cargo +nightly fuzz run TARGET fuzz/target/corpus/TARGET fuzz/corpus/TARGET --
//! -max_total_time=N -rss_limit_mb=2048` in `fuzz/`. The seeds in `fuzz/corpus/` are read but
//! never written: the corpus a run grows goes to `fuzz/target/corpus/` (ignored by git) and is
//! reused by the next run. Every target runs even when one fails; a crash (or a leak, an OOM, a
//! timeout) fails the task with the paths of the reproducers libFuzzer wrote to
//! `fuzz/artifacts/TARGET/`. Not part of `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context as _, bail};

use crate::{root, setup};

/// The cargo-fuzz release installed when missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The targets of `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: &[&str] = &["config", "audit_line", "manifests"];

/// `cargo` through rustup's proxy (so `+nightly` works), with `$CARGO_HOME/bin` on PATH and
/// without what the `cargo run` of xtask set for xtask: its toolchain, and the package variables
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Some build scripts (ring's) ask to rerun when
/// those change, so leaving them would rebuild half of `fuzz/target` after a plain `cargo fuzz`.
fn rustup_cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.env("PATH", setup::path_with_cargo_bin()).env_remove("RUSTUP_TOOLCHAIN").env_remove("RUSTC");
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || ["CARGO", "CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"].contains(&&*key)
        {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

/// Installs cargo-fuzz [`CARGO_FUZZ_VERSION`] unless `cargo fuzz --version` reports it.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = rustup_cargo()
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed.split_whitespace().any(|w| w == CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} (a minute or two, once)");
    let mut c = rustup_cargo();
    c.args(["install", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION, "--locked"]);
    crate::status(c)
}

/// The files libFuzzer wrote to `dir` since `since` (crash-, leak-, oom-, timeout- files).
fn artifacts_since(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Runs `target` (every target when `None`) for `seconds` each.
pub fn run(seconds: u64, target: Option<&str>) -> anyhow::Result<()> {
    setup::run()?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = root().join("fuzz");
    let targets: Vec<&str> = match target {
        Some(t) => vec![t],
        None => TARGETS.to_vec(),
    };
    let mut failures = Vec::new();
    for t in targets {
        let corpus = fuzz_dir.join("target/corpus").join(t);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let started = SystemTime::now();
        let mut cmd = rustup_cargo();
        cmd.current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", t])
            .arg(&corpus)
            .arg(fuzz_dir.join("corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-print_final_stats=1"]);
        eprintln!("fuzz: {t} for {seconds}s");
        let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
        if !status.success() {
            let found = artifacts_since(&fuzz_dir.join("artifacts").join(t), started);
            for path in &found {
                eprintln!("fuzz: {t}: reproducer {}", path.display());
            }
            if found.is_empty() {
                eprintln!("fuzz: {t}: failed ({status}) without a reproducer (a build error?)");
            }
            failures.push(t);
        }
    }
    if !failures.is_empty() {
        bail!(
            "fuzzing failed: {} (reproduce with `cargo +nightly fuzz run TARGET REPRODUCER` in fuzz/)",
            failures.join(", ")
        );
    }
    Ok(())
}
