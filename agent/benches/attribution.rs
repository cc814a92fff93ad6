//! Userspace cost per flow record on one core: enrichment and attribution against 10,000 pods
//! and 1,000 policies over 100 namespaces. Prints a table (CPU ns per record); asserts nothing on
//! time, only (untimed, after the rounds) that the stage gave every record the verdict and traces
//! of a fresh walk of its flow.
//!
//! The state is generated as manifests and read by the manifests source, so its load time is
//! measured too. Records are random pod pairs on ports 80/443/5432/8080 with ephemeral source
//! ports. Times are the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so waiting for a core on
//! a loaded machine is not counted; each per-record step is the best of three rounds, each
//! round on fresh copies of the records and, for the attribute stage, a fresh stage (an empty
//! verdict cache and memo, as after a state change).
//!
//! What the attribute stage keeps per state version beyond the compiled policies (per endpoint
//! the policies selecting it and its labels, namespace and named ports as ids; per label set what
//! each selector says of it; the written traces) is filled as records arrive, so its cost is in
//! the first-pass row, not in a row of its own.
//!
//! `FLOWAUDIT_BENCH_PROFILE=N` runs only the steps of the target instead (enrich, then the first
//! pass of a stage just updated, N times, printing each), for a profiler.

use std::{fmt::Write as _, time::Duration};

use flowaudit::{
    attribute::{Attributor, FlowView, PolicySet},
    cluster::manifests,
    enrich::{EnrichConfig, Enricher, IdentityLookup, Index},
    model::FlowRecord,
};

const NAMESPACES: usize = 100;
const PODS_PER_NS: usize = 100;
const POLICIES_PER_NS: usize = 10;
const RECORDS: usize = 200_000;
const ROUNDS: usize = 3;

/// This thread's CPU time.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The CPU time `f` takes, and what it returns.
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = cpu_now();
    let out = f();
    (cpu_now() - t, out)
}

fn pod_ip(ns: usize, pod: usize) -> String {
    format!("10.{}.{}.{}", 100 + ns / 100, ns % 100, pod + 1)
}

fn manifests() -> String {
    let mut y = String::with_capacity(4 << 20);
    for ns in 0..NAMESPACES {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{team: t{}, env: {}}}}}\n---\n",
            ns % 10,
            if ns % 2 == 0 { "prod" } else { "dev" }
        );
        for p in 0..PODS_PER_NS {
            let _ = write!(
                y,
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: app{}-{p}, generateName: app{}-, namespace: ns-{ns}, labels: {{app: a{}, tier: t{}}}}}\n\
                 spec: {{containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {}}}\n---\n",
                p % 20,
                p % 20,
                p % 20,
                p % 3,
                pod_ip(ns, p)
            );
        }
        for k in 0..POLICIES_PER_NS {
            let _ = write!(
                y,
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{k}, namespace: ns-{ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: a{}}}}}\n  \
                 ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}, {{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}]\n    ports: [{{port: 80}}, {{port: http}}]\n  \
                 - from: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.200.0.0/16]}}}}]\n    ports: [{{port: 5432, endPort: 5440}}]\n  egress:\n  - to: [{{namespaceSelector: {{}}}}]\n---\n",
                (2 * k) % 20,
                (2 * k + 1) % 20,
                (ns + k) % 10
            );
        }
    }
    y
}

/// CPU ns per record of a step over all records.
fn per_record(d: Duration) -> f64 {
    d.as_nanos() as f64 / RECORDS as f64
}

/// The flow of an enriched record of this bench (TCP, addresses and ports set).
fn view(r: &FlowRecord) -> FlowView<'_> {
    FlowView {
        src: r.context.source.as_deref(),
        src_ip: r.source_ip.expect("ip"),
        dst: r.context.dest.as_deref(),
        dst_ip: r.dest_ip.expect("ip"),
        proto: 6,
        src_port: r.source_port,
        dst_port: r.dest_port,
        icmp: None,
    }
}

/// Panics unless the stage's first pass gives every record the verdict and traces a fresh walk
/// of its flow gives (what the memo and the cache keep must not change an answer).
fn check(state: &flowaudit::cluster::ClusterState, enricher: &mut Enricher, base: &[FlowRecord]) {
    let set = PolicySet::compile(state);
    let mut attributor = Attributor::new();
    attributor.update(state, 0);
    let mut records = base.to_vec();
    enricher.enrich(&mut records, 1);
    attributor.attribute(&mut records);
    for r in &records {
        let v = set.evaluate(&view(r));
        let egress = v.egress.as_ref().expect("the source is a pod");
        let got = (r.action, &r.policies.enforced_policies, r.pending_action, &r.policies.pending_policies);
        let want = (egress.enforced.action, &egress.enforced.trace, egress.pending.action, &egress.pending.trace);
        assert_eq!(got, want, "{:?} -> {:?}", r.source_ip, r.dest_ip);
        assert_eq!(r.flow_action, v.action(), "{:?} -> {:?}", r.source_ip, r.dest_ip);
    }
}

/// A small xorshift generator: the same records every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("cluster.yaml"), manifests()).expect("write");
    let (load, state) = timed(|| manifests::load_dir(dir.path()).expect("valid manifests").state);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let ports = [80u16, 443, 5432, 8080];
    let base: Vec<FlowRecord> = (0..RECORDS)
        .map(|_| {
            let (sn, sp, dn, dp) = (
                rng.next() as usize % NAMESPACES,
                rng.next() as usize % PODS_PER_NS,
                rng.next() as usize % NAMESPACES,
                rng.next() as usize % PODS_PER_NS,
            );
            let mut r = FlowRecord::sample(
                &pod_ip(sn, sp),
                32768 + (rng.next() % 28000) as u16,
                &pod_ip(dn, dp),
                ports[rng.next() as usize % ports.len()],
            );
            r.context.proto = 6;
            r
        })
        .collect();
    let shared = std::sync::Arc::new(state.clone());
    let mut enricher =
        Enricher::new(EnrichConfig { cgroup_root: "/nonexistent".into(), grace: std::time::Duration::from_secs(60) });
    let index = Index::build(&state, std::path::Path::new("/nonexistent"));
    let _ = index.by_ip(base[0].dest_ip.expect("ip"));
    // For a profiler: only the steps of the target (enrich, then a fresh stage's first pass), N times.
    if let Some(n) = std::env::var("FLOWAUDIT_BENCH_PROFILE").ok().and_then(|n| n.parse::<usize>().ok()) {
        enricher.update(&shared, 0);
        let mut attributor = Attributor::new();
        for _ in 0..n {
            let mut records = base.clone();
            attributor.update(&state, 0);
            let (e, ()) = timed(|| enricher.enrich(&mut records, 1));
            let (a, ()) = timed(|| attributor.attribute(&mut records));
            println!("enrich {:.0} ns, first pass {:.0} ns per record", per_record(e), per_record(a));
        }
        return;
    }

    // Best of ROUNDS per step: [compile, index, enrich, uncached, first pass, warm].
    let mut best = [Duration::MAX; 6];
    let mut denied = 0usize;
    for _ in 0..ROUNDS {
        let mut took = [Duration::ZERO; 6];
        took[0] = timed(|| PolicySet::compile(&state)).0;
        let set = PolicySet::compile(&state);
        took[1] = timed(|| enricher.update(&shared, 0)).0;
        let mut records = base.clone();
        took[2] = timed(|| enricher.enrich(&mut records, 1)).0;
        // Attribution without the verdict cache: every record walks the tiers.
        (took[3], denied) = timed(|| {
            let mut denied = 0usize;
            for r in &records {
                let v = set.evaluate(&view(r));
                denied += usize::from(v.action() == flowaudit::model::Action::Deny);
            }
            denied
        });
        // The stage as the pipeline runs it after a state change: verdict cache per state
        // version (pairs and ports repeat), filled here.
        let mut attributor = Attributor::new();
        attributor.update(&state, 0);
        took[4] = timed(|| attributor.attribute(&mut records)).0;
        let mut again = records.clone();
        took[5] = timed(|| attributor.attribute(&mut again)).0;
        for (b, t) in best.iter_mut().zip(took) {
            *b = (*b).min(t);
        }
    }
    let [compile, index_build, enrich, uncached, cold, warm] = best;
    check(&state, &mut enricher, &base);

    let per = per_record;
    println!(
        "state: {} namespaces, {} pods, {} policies; {} records, {:.1}% denied; CPU time, best of {ROUNDS}",
        NAMESPACES,
        state.pods.len(),
        state.network_policies.len(),
        RECORDS,
        100.0 * denied as f64 / RECORDS as f64
    );
    println!("| step | total | ns per record |");
    println!("|---|---:|---:|");
    println!("| load manifests (once per change) | {:.0} ms | - |", load.as_secs_f64() * 1e3);
    println!("| compile policies (once per change) | {:.1} ms | - |", compile.as_secs_f64() * 1e3);
    println!("| build the identity index (once per change) | {:.1} ms | - |", index_build.as_secs_f64() * 1e3);
    println!("| enrich | {:.1} ms | {:.0} |", enrich.as_secs_f64() * 1e3, per(enrich));
    println!(
        "| attribute, no cache (every record walks the tiers) | {:.1} ms | {:.0} |",
        uncached.as_secs_f64() * 1e3,
        per(uncached)
    );
    println!("| attribute stage, first pass (cache filling) | {:.1} ms | {:.0} |", cold.as_secs_f64() * 1e3, per(cold));
    println!("| attribute stage, warm cache | {:.1} ms | {:.0} |", warm.as_secs_f64() * 1e3, per(warm));
    println!("| enrich + attribute (first pass) | - | {:.0} |", per(enrich) + per(cold));
}
