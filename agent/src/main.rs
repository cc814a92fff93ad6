//! `flowaudit` command line. Exit codes: 0 ok, 2 bad input (names file, field, reason), 1 other.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use flowaudit::{
    config::{ConfigError, RunFlags, Settings, cgroup2_mount},
    pipeline,
};

#[derive(Parser)]
#[command(name = "flowaudit", version, about = "eBPF flow capture and policy audit sensor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture flows and write flow logs until SIGINT/SIGTERM.
    Run(RunArgs),
    /// The verdict and policy trace of one hypothetical flow.
    Explain {
        /// Cluster state: a directory of manifests.
        #[arg(long, value_name = "DIR")]
        cluster: PathBuf,
        /// Source: namespace/pod or an address.
        #[arg(long)]
        src: String,
        /// Destination: namespace/pod or an address.
        #[arg(long)]
        dst: String,
        /// tcp, udp, sctp, icmp, icmp6 or a number.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Destination port.
        #[arg(long)]
        port: Option<u16>,
        /// text or json.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Validate a configuration file and/or a manifests directory, listing every problem.
    Check {
        /// The YAML configuration to validate.
        #[arg(long, value_name = "FILE", required_unless_present = "cluster")]
        config: Option<PathBuf>,
        /// A directory of Kubernetes manifests to validate.
        #[arg(long, value_name = "DIR")]
        cluster: Option<PathBuf>,
    },
    /// Check the hash chains of a flow-log directory: exit 0 intact, 1 tampering found, 2 bad input.
    Verify {
        /// The log directory (`flows.log*`, `audit.log*`, `chain/`, `chain-heads.log`).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// The key that signed `chain-heads.log` (a file holding the secret).
        #[arg(long, value_name = "FILE")]
        hmac_key_file: Option<PathBuf>,
        /// text or json.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Write a compliance report (inventory, policy-audit, cis-benchmark) for an interval.
    Report(ReportArgs),
    /// Write one snapshot of the cluster state to an archive (`<archive>/snapshots/<time>.json`),
    /// the state the inventory report replays audit events from (`flowaudit reporter` also writes
    /// one every --snapshot-interval).
    Snapshot {
        /// Cluster state: a directory of manifests, or `kube` (the Kubernetes API).
        #[arg(long, value_name = "DIR|kube")]
        cluster: String,
        /// The archive directory (the snapshot goes to its `snapshots/`).
        #[arg(long, value_name = "DIR")]
        archive: PathBuf,
    },
    /// Make the GlobalReports' reports on their schedules until SIGINT/SIGTERM.
    Reporter(ReporterArgs),
    /// Remove the programs, links and maps that `run --pin` left pinned.
    Detach {
        /// bpffs directory of the pins.
        #[arg(long, value_name = "DIR", default_value = flowaudit::config::DEFAULT_PIN_PATH)]
        pin_path: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportKind {
    /// Endpoints' protection and exposure, with observed traffic (not implemented yet).
    NetworkAccess,
    /// Endpoints, namespaces, services in scope and their protection, from a snapshot replayed through audit logs.
    Inventory,
    /// Network policy creates, updates and deletes, from audit logs (with a GlobalReport's spec.endpoints: those of the policies applying to the selected endpoints, over a replayed snapshot).
    PolicyAudit,
    /// CIS Kubernetes benchmark results, from kube-bench JSON.
    CisBenchmark,
}

#[derive(Args)]
struct ReportArgs {
    /// The report.
    #[arg(value_enum)]
    kind: ReportKind,
    /// Start of the interval (RFC 3339, included).
    #[arg(long, value_name = "TIME")]
    from: String,
    /// End of the interval (RFC 3339, excluded).
    #[arg(long, value_name = "TIME")]
    to: String,
    /// Directory the report's files are written to (created if needed).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Formats, comma separated: csv (the report's files), json (report.json), html (report.html).
    #[arg(long, value_name = "csv,json,html", default_value = "csv")]
    format: String,
    /// Cluster state: a directory of manifests (cis-benchmark: decides check 5.3.2 from it; inventory,
    /// network-access and policy-audit with spec.endpoints: the state at --from when no snapshot is given).
    #[arg(long, value_name = "DIR|kube")]
    cluster: Option<String>,
    /// Network-access: a flow-log directory (one node's flows.log*; repeatable).
    #[arg(long, value_name = "DIR")]
    flow_log_dir: Vec<PathBuf>,
    /// An audit log: flowaudit's audit.log* or a kube-apiserver audit log, or a directory of audit.log* (repeatable).
    #[arg(long, value_name = "FILE")]
    audit_log: Vec<PathBuf>,
    /// kube-bench JSON: a node's file (<node>.json) or a directory of them (repeatable).
    #[arg(long, value_name = "FILE|DIR")]
    kube_bench: Vec<PathBuf>,
    /// A GlobalReport resource: the YAML file and the report's name.
    #[arg(long, value_name = "FILE:NAME")]
    global_report: Option<String>,
    /// Network-access: read the flows from a store (a cluster's, instead of --flow-log-dir).
    #[arg(long, value_name = "clickhouse://HOST:PORT/DB")]
    store: Option<String>,
    /// Inventory, network-access, policy-audit with spec.endpoints: a directory of snapshots (`flowaudit snapshot`); the newest at or before --from is the start.
    #[arg(long, value_name = "DIR", conflicts_with = "archive")]
    snapshot_dir: Option<PathBuf>,
    /// Inventory, network-access, policy-audit with spec.endpoints: an archive whose `snapshots/` directory is read.
    #[arg(long, value_name = "DIR")]
    archive: Option<PathBuf>,
}

/// `flowaudit report`: the files written on stdout; exit 2 on bad input.
fn report(args: ReportArgs) -> ExitCode {
    use flowaudit::report::{self, Kind};
    let request = report::Request {
        kind: Some(match args.kind {
            ReportKind::NetworkAccess => Kind::NetworkAccess,
            ReportKind::Inventory => Kind::Inventory,
            ReportKind::PolicyAudit => Kind::PolicyAudit,
            ReportKind::CisBenchmark => Kind::CisBenchmark,
        }),
        from: args.from,
        to: args.to,
        out: args.out,
        format: args.format,
        cluster: args.cluster,
        flow_log_dirs: args.flow_log_dir,
        audit_logs: args.audit_log,
        kube_bench: args.kube_bench,
        global_report: args.global_report,
        store: args.store,
        snapshot_dir: args.snapshot_dir,
        archive: args.archive,
    };
    match report::run(&request) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// `flowaudit snapshot`: the file written on stdout; exit 2 on bad input.
fn snapshot(cluster: &str, archive: &std::path::Path) -> ExitCode {
    use flowaudit::report::replay;
    let written = if cluster == "kube" {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(replay::snapshot_kube(archive)),
            Err(e) => {
                eprintln!("error: starting the runtime: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        replay::snapshot_manifests(std::path::Path::new(cluster), archive, jiff::Timestamp::now())
    };
    match written {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

#[derive(Args)]
struct ReporterArgs {
    /// Where the GlobalReports are: `kube` (the API; the status records the runs) or a directory of manifests.
    #[arg(long, value_name = "DIR|kube")]
    cluster: String,
    /// Archive directory: reports go to <archive>/<report>/<start>_<end>/.
    #[arg(long, value_name = "DIR")]
    archive: PathBuf,
    /// How long after its interval ends a report is made.
    #[arg(long, value_name = "DURATION", default_value = "30m")]
    delay: String,
    /// How far back missed reports are still made.
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    catch_up: String,
    /// How often a snapshot of the cluster state is written to <archive>/snapshots (the state the
    /// inventory, network-access and policy-audit with spec.endpoints reports replay from); 0s: never.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    snapshot_interval: String,
    /// Formats, comma separated: csv, json, html.
    #[arg(long, value_name = "csv,json,html", default_value = "csv,json,html")]
    format: String,
    /// kube-bench JSON: a node's file (<node>.json) or a directory of them (repeatable; cis-benchmark).
    #[arg(long, value_name = "FILE|DIR")]
    kube_bench: Vec<PathBuf>,
    /// An audit log file or a directory of audit.log* (repeatable; policy-audit, and the replay of
    /// inventory, network-access and policy-audit with spec.endpoints).
    #[arg(long, value_name = "FILE|DIR")]
    audit_log: Vec<PathBuf>,
    /// A flow-log directory (repeatable; network-access).
    #[arg(long, value_name = "DIR")]
    flow_log_dir: Vec<PathBuf>,
    /// Network-access: read the flows from a store (a cluster's, instead of --flow-log-dir).
    #[arg(long, value_name = "clickhouse://HOST:PORT/DB")]
    store: Option<String>,
    /// Address of /metrics and /healthz.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9465")]
    metrics_addr: String,
    /// YAML file: `exporters:` that get every row of each finished report (log type `reports`),
    /// `state_dir`, `node_name` (docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `flowaudit reporter`: exit 2 on bad configuration, 1 on other errors.
fn reporter(args: ReporterArgs) -> ExitCode {
    use flowaudit::reporter::{self, Options, ReporterError, Source, Timing};
    let settings = flowaudit::config::ReporterSettings::load(args.config.as_deref(), &args.archive, || {
        hostname::get().ok().and_then(|h| h.into_string().ok())
    })
    .map_err(|e| ReporterError::Config { file: PathBuf::from(e.source_name), field: e.field, reason: e.reason });
    let options = (|| -> Result<Options, ReporterError> {
        let flag =
            |flag: &str, reason: String| ReporterError::Config { file: PathBuf::from(flag), field: "-".into(), reason };
        let formats = flowaudit::report::parse_formats(&args.format).map_err(|e| flag("--format", e.to_string()))?;
        let metrics_addr =
            args.metrics_addr.parse().map_err(|e| flag("--metrics-addr", format!("{:?}: {e}", args.metrics_addr)))?;
        let delay = reporter::parse_duration("--delay", &args.delay)?;
        let catch_up = reporter::parse_duration("--catch-up", &args.catch_up)?;
        let snapshot_interval = reporter::parse_duration("--snapshot-interval", &args.snapshot_interval)?;
        Ok(Options {
            source: if args.cluster == "kube" { Source::Kube } else { Source::Dir(PathBuf::from(&args.cluster)) },
            archive: args.archive,
            timing: Timing { delay, catch_up },
            formats,
            kube_bench: args.kube_bench,
            audit_logs: args.audit_log,
            flow_log_dirs: args.flow_log_dir,
            store: args.store,
            metrics_addr,
            snapshot_interval,
        })
    })();
    let result = settings.and_then(|settings| options.map(|o| (settings, o))).and_then(|(settings, options)| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| ReporterError::Runtime(format!("starting the runtime: {e}")))?;
        runtime.block_on(reporter::run(options, |registry| {
            flowaudit::pipeline::report_exports(&settings, registry)
                .map_err(|e| ReporterError::Runtime(format!("starting the exporters: {e}")))
        }))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

#[derive(Args)]
struct RunArgs {
    /// YAML configuration file; flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of flows.log [default: /var/log/flowaudit].
    #[arg(long, value_name = "DIR")]
    flow_log_dir: Option<PathBuf>,
    /// Drain and write period, e.g. 15s or 1m [default: 15s].
    #[arg(long, value_name = "DURATION")]
    flush_interval: Option<String>,
    /// Interfaces to attach TC programs to (globs, comma separated) [default: none].
    #[arg(long, value_name = "GLOB,...")]
    interfaces: Option<String>,
    /// cgroup v2 directory for the cgroup_skb programs [default: the cgroup2 mount].
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<String>,
    /// Node name written in `host` [default: the hostname].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Aggregation level of allowed flows: 0 per 5-tuple, 1 without source port, 2 by name prefix, 3 also without destination port [default: 2].
    #[arg(long, value_name = "N")]
    aggregation_allowed: Option<u8>,
    /// Aggregation level of denied flows [default: 1].
    #[arg(long, value_name = "N")]
    aggregation_denied: Option<u8>,
    /// Cluster state: `kube` (the API) or a directory of manifests [default: none, names are `-`].
    #[arg(long, value_name = "kube|DIR")]
    cluster: Option<String>,
    /// Keep programs, links and maps pinned in bpffs across restarts (`flowaudit detach` removes them).
    #[arg(long)]
    pin: bool,
    /// bpffs directory of the pins [default: /sys/fs/bpf/flowaudit].
    #[arg(long, value_name = "DIR")]
    pin_path: Option<PathBuf>,
    /// Directory of the restart state (audit log) [default: /var/lib/flowaudit].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A kube-apiserver audit log (--audit-log-path) whose policy changes go to audit.log [default: none].
    #[arg(long, value_name = "FILE")]
    kube_audit_log: Option<PathBuf>,
}

impl RunArgs {
    fn flags(self) -> RunFlags {
        RunFlags {
            config: self.config,
            flow_log_dir: self.flow_log_dir,
            flush_interval: self.flush_interval,
            interfaces: self.interfaces.map(|v| vec![v]),
            cgroup: self.cgroup,
            metrics_addr: self.metrics_addr,
            node: self.node,
            aggregation_allowed: self.aggregation_allowed,
            aggregation_denied: self.aggregation_denied,
            cluster: self.cluster,
            pin: self.pin.then_some(true),
            pin_path: self.pin_path,
            state_dir: self.state_dir,
            kube_audit_log: self.kube_audit_log,
        }
    }
}

fn resolve(flags: &RunFlags) -> Result<Settings, ConfigError> {
    Settings::resolve(
        flags,
        || std::fs::read_to_string("/proc/mounts").ok().and_then(|m| cgroup2_mount(&m)),
        || hostname::get().ok().and_then(|h| h.into_string().ok()),
    )
}

/// The error and its causes, `outer: inner: root`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

/// `flowaudit check`: every problem on stderr, exit 2 if any.
fn check(config: Option<PathBuf>, cluster: Option<PathBuf>) -> ExitCode {
    let mut ok = true;
    if let Some(config) = config {
        match resolve(&RunFlags { config: Some(config.clone()), ..Default::default() }) {
            Ok(_) => println!("{}: ok", config.display()),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    if let Some(dir) = cluster {
        match flowaudit::cluster::manifests::load_dir(&dir) {
            Ok(loaded) => {
                for s in &loaded.skipped {
                    println!("skipped {}: document {}: {}: {}", s.file.display(), s.document, s.kind, s.reason);
                }
                for (kind, n) in loaded.state.counts() {
                    println!("{kind}: {n}");
                }
                println!("{}: ok", dir.display());
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                eprintln!("{}: {} problems", dir.display(), errors.len());
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::from(2) }
}

/// `flowaudit explain`.
fn explain(dir: &std::path::Path, src: &str, dst: &str, proto: &str, port: Option<u16>, output: &str) -> ExitCode {
    use flowaudit::explain as ex;
    let state = match flowaudit::cluster::manifests::load_dir(dir) {
        Ok(loaded) => loaded.state,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let index = flowaudit::enrich::Index::build(&state, std::path::Path::new("/nonexistent"));
    let question = (|| -> Result<_, ex::ExplainError> {
        Ok((ex::resolve(&index, "--src", src)?, ex::resolve(&index, "--dst", dst)?, ex::protocol(proto)?))
    })();
    let (s, d, p) = match question {
        Ok(q) => q,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let verdict = ex::explain(&state, &s, &d, p, port);
    if output == "json" {
        println!("{}", ex::to_json(&verdict));
    } else {
        print!("{}", ex::to_text(&verdict, &s, &d, proto, port));
    }
    ExitCode::SUCCESS
}

/// `flowaudit verify`: the report on stdout; exit 0 intact, 1 tampering found, 2 bad input.
fn verify(dir: &std::path::Path, hmac_key_file: Option<&std::path::Path>, format: &str) -> ExitCode {
    use flowaudit::output::{HmacKey, verify};
    let key = match hmac_key_file.map(HmacKey::from_file).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: --hmac-key-file {e}");
            return ExitCode::from(2);
        }
    };
    let report = match verify::verify_dir(dir, key.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&report).expect("a report serializes"));
    } else {
        print!("{}", report.to_text());
    }
    if report.intact { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn main() -> ExitCode {
    flowaudit::telemetry::init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, cluster } => check(config, cluster),
        Command::Detach { pin_path } => match flowaudit::capture::detach_pinned(&pin_path) {
            Ok(removed) if removed.is_empty() => {
                println!("nothing pinned under {}", pin_path.display());
                ExitCode::SUCCESS
            }
            Ok(removed) => {
                for path in removed {
                    println!("removed {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flowaudit detach: {}: {e}", pin_path.display());
                ExitCode::from(1)
            }
        },
        Command::Report(args) => report(args),
        Command::Snapshot { cluster, archive } => snapshot(&cluster, &archive),
        Command::Reporter(args) => reporter(args),
        Command::Verify { dir, hmac_key_file, format } => verify(&dir, hmac_key_file.as_deref(), &format),
        Command::Explain { cluster, src, dst, proto, port, output } => {
            explain(&cluster, &src, &dst, &proto, port, &output)
        }
        Command::Run(args) => {
            let settings = match resolve(&args.flags()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            // Before the runtime starts its threads: capabilities are per thread.
            match flowaudit::privilege::restrict_to_needed() {
                Ok(kept) => tracing::info!(
                    message = "Capabilities restricted to what capture needs.",
                    kept = %kept.iter().map(|c| c.name).collect::<Vec<_>>().join(","),
                ),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(pipeline::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ pipeline::PipelineError::Manifests(_)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("error: {}", chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
