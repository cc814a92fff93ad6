//! `cargo xtask kube-apiserver`: a real kube-apiserver and kubectl v1.20.2 for the cluster tests,
//! built once from Debian 12's `kubernetes` source package and cached outside the repository.
//!
//! Why a build: no package registry reachable here ships a kube-apiserver binary; Debian's source
//! package carries the full v1.20.2 tree with its vendor directory (see
//! `/work/shared/reference/test-infra.md` §1, which these steps follow exactly):
//!
//! 1. apt packages `golang-go etcd-server rsync golang-github-modern-go-reflect2-dev dpkg-dev`;
//! 2. `apt-get source kubernetes` through a *private* deb-src list (apt `-o` options: the
//!    machine's apt configuration and caches are not touched);
//! 3. the vendored `modern-go/reflect2` 1.0.1 is replaced by Debian's 1.0.2 (1.0.1 corrupts map
//!    iteration under Go 1.19: the apiserver crashes on `?pretty=true`, kubectl panics);
//! 4. `make generated_files`;
//! 5. `go build` in GOPATH mode (the 1.20 tree does not build in module mode) with the version
//!    ldflags, for `kube-apiserver` and `kubectl`.
//!
//! Cache: `$FLOWAUDIT_K8S_CACHE` or `/var/cache/flowaudit/k8s-1.20.2`; the binaries land in
//! `<cache>/bin`, and `<cache>/.complete` is written last, so a build that was interrupted is
//! detected (no marker) and redone from the source. A lock file serialises concurrent runs.
//! The first build takes about 15 minutes on 2 cores; later runs return at once.

use std::{
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::status;

/// The Kubernetes version built (the one in Debian 12's source package).
pub const VERSION: &str = "v1.20.2";
/// Default cache directory (outside the repository, survives between runs).
const DEFAULT_CACHE: &str = "/var/cache/flowaudit/k8s-1.20.2";
/// Packages the build needs.
const BUILD_PACKAGES: &[&str] =
    &["golang-go", "etcd-server", "rsync", "golang-github-modern-go-reflect2-dev", "dpkg-dev", "openssl"];
/// Packages the tests need at run time (etcd; openssl makes the service-account key).
const RUNTIME_PACKAGES: &[&str] = &["etcd-server", "openssl"];
/// Where Debian's `etcd-server` installs etcd.
pub const ETCD: &str = "/usr/bin/etcd";
/// The binaries built.
const BINARIES: &[(&str, &str)] = &[("kube-apiserver", "./cmd/kube-apiserver"), ("kubectl", "./cmd/kubectl")];
const MARKER: &str = ".complete";

/// What the cluster tests need: the binary directory and etcd.
pub struct K8sBins {
    /// `<cache>/bin` with `kube-apiserver` and `kubectl`.
    pub bin: PathBuf,
    /// The etcd binary.
    pub etcd: PathBuf,
}

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FLOWAUDIT_K8S_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

fn marker_content() -> String {
    format!("kubernetes {VERSION} from Debian source package kubernetes, reflect2 1.0.2\n")
}

/// Whether `cache` holds a finished build (marker written last, binaries present).
pub fn is_complete(cache: &Path) -> bool {
    fs::read_to_string(cache.join(MARKER)).is_ok_and(|m| m.starts_with(&marker_content()))
        && BINARIES.iter().all(|(name, _)| cache.join("bin").join(name).is_file())
}

fn missing_packages(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect()
}

fn apt_install(packages: &[&'static str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!("missing Debian packages {missing:?}; run as root or `apt-get install -y {}`", missing.join(" "));
    }
    eprintln!("kube-apiserver: installing {}", missing.join(" "));
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    status(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    status(install)
}

/// The Debian mirror of the machine's own sources (so the private deb-src list uses the same
/// one), `$FLOWAUDIT_DEBIAN_MIRROR` if set, else deb.debian.org.
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("FLOWAUDIT_DEBIAN_MIRROR") {
        return m;
    }
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        texts.extend(
            files
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
                .filter_map(|p| fs::read_to_string(p).ok()),
        );
    }
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("/debian"))
        .map(|w| w.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// An exclusive lock on `<cache>/.lock`, held while the returned file is open.
fn lock(cache: &Path) -> anyhow::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(".lock"))
        .with_context(|| format!("opening {}/.lock", cache.display()))?;
    // SAFETY: a valid open descriptor; flock has no other effect.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("kube-apiserver: another build holds {}/.lock; waiting for it", cache.display());
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("locking {}/.lock: {}", cache.display(), std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

fn step(what: &str, total: Instant, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let start = Instant::now();
    eprintln!("kube-apiserver: {what} ...");
    f().with_context(|| format!("kube-apiserver build step: {what}"))?;
    eprintln!(
        "kube-apiserver: {what}: done in {:.0} s ({:.1} min so far)",
        start.elapsed().as_secs_f64(),
        total.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}

fn remove_dir(path: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Ensures the binaries are in the cache (building them if missing or half-built) and etcd is
/// installed. Idempotent; a no-op when the cache is complete.
pub fn ensure() -> anyhow::Result<K8sBins> {
    let cache = cache_dir();
    let bins = K8sBins { bin: cache.join("bin"), etcd: PathBuf::from(ETCD) };
    if is_complete(&cache) {
        apt_install(RUNTIME_PACKAGES)?;
        return Ok(bins);
    }
    fs::create_dir_all(&cache).with_context(|| {
        format!(
            "creating the cache {} (run as root, or set FLOWAUDIT_K8S_CACHE to a writable directory)",
            cache.display()
        )
    })?;
    let _lock = lock(&cache)?;
    if is_complete(&cache) {
        // Another run finished it while this one waited for the lock.
        apt_install(RUNTIME_PACKAGES)?;
        return Ok(bins);
    }
    eprintln!(
        "kube-apiserver: {VERSION} is not in {} yet: building kube-apiserver and kubectl from Debian's \
         `kubernetes` source package.\nkube-apiserver: THE FIRST BUILD TAKES ABOUT 15 MINUTES (2 cores); \
         later runs use the cache.",
        cache.display()
    );
    build(&cache)?;
    Ok(bins)
}

fn build(cache: &Path) -> anyhow::Result<()> {
    let total = Instant::now();
    let bin = cache.join("bin");
    // Whatever a previous, interrupted run left: no marker means it is not trusted.
    let _ = fs::remove_file(cache.join(MARKER));
    remove_dir(&bin)?;
    let work = cache.join("work");
    // The Go build cache (work/gocache) is kept across failed runs: it is content-addressed.
    let apt_dir = work.join("apt");
    let dl = work.join("dl");
    let gopath = work.join("gopath");
    let k = gopath.join("src/k8s.io/kubernetes");
    let out = work.join("out");
    let gocache = work.join("gocache");

    step("apt packages", total, || apt_install(BUILD_PACKAGES))?;

    step("source package (private deb-src list)", total, || {
        let etc = apt_dir.join("etc");
        let lists = apt_dir.join("lists");
        fs::create_dir_all(&etc)?;
        fs::create_dir_all(lists.join("partial"))?;
        fs::create_dir_all(&dl)?;
        let mirror = debian_mirror();
        fs::write(etc.join("flowaudit-src.list"), format!("deb-src {mirror} bookworm main\n"))?;
        let apt = |args: &[&str]| {
            let mut c = Command::new("apt-get");
            c.arg("-o")
                .arg("Dir::Etc::sourcelist=/dev/null")
                .arg("-o")
                .arg(format!("Dir::Etc::sourceparts={}", etc.display()))
                .arg("-o")
                .arg(format!("Dir::State::Lists={}", lists.display()))
                // No binary caches built from the private lists into /var/cache/apt.
                .args(["-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache="])
                .args(args)
                .current_dir(&dl);
            c
        };
        status(apt(&["update", "-qq"]))?;
        status(apt(&["source", "--download-only", "-qq", "kubernetes"]))?;
        let dsc = fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("kubernetes_")))
            .filter(|p| p.extension().is_some_and(|e| e == "dsc"))
            .max()
            .context("apt-get source left no kubernetes_*.dsc")?;
        eprintln!("kube-apiserver: source {}", dsc.display());
        remove_dir(&gopath)?;
        fs::create_dir_all(k.parent().expect("parent"))?;
        // Unpacked straight into GOPATH (no symlink: Go resolves the working directory).
        let mut x = Command::new("dpkg-source");
        x.arg("-x").arg(&dsc).arg(&k);
        status(x)
    })?;

    step("reflect2 fix (vendored 1.0.1 -> Debian's 1.0.2)", total, || {
        let vendored = k.join("vendor/github.com/modern-go/reflect2");
        let debian = Path::new("/usr/share/gocode/src/github.com/modern-go/reflect2");
        if !debian.is_dir() {
            bail!("{} is missing (package golang-github-modern-go-reflect2-dev)", debian.display());
        }
        remove_dir(&vendored)?;
        let mut cp = Command::new("cp");
        cp.arg("-r").arg(debian).arg(k.join("vendor/github.com/modern-go/"));
        status(cp)?;
        for entry in fs::read_dir(&vendored)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with("_test.go") {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    })?;

    let go_env = |c: &mut Command| {
        for var in ["GOPATH", "GO111MODULE", "GOFLAGS", "GOCACHE", "GOROOT", "GOBIN", "GOOS", "GOARCH"] {
            c.env_remove(var);
        }
    };

    step("make generated_files (about 2 min)", total, || {
        let mut make = Command::new("make");
        make.arg("generated_files").current_dir(&k);
        go_env(&mut make);
        status(make)
    })?;

    let v = "k8s.io/kubernetes/vendor/k8s.io";
    let ldflags = format!(
        "-s -w -X {v}/component-base/version.gitVersion={VERSION} -X {v}/component-base/version.gitMajor=1 \
         -X {v}/component-base/version.gitMinor=20 -X {v}/client-go/pkg/version.gitVersion={VERSION}"
    );
    remove_dir(&out)?;
    fs::create_dir_all(&out)?;
    for (name, pkg) in BINARIES {
        step(&format!("go build {name} (GOPATH mode)"), total, || {
            let mut go = Command::new("go");
            go_env(&mut go);
            go.args(["build", "-ldflags", &ldflags, "-o"])
                .arg(out.join(name))
                .arg(pkg)
                .current_dir(&k)
                .env("PWD", &k)
                .env("GOPATH", &gopath)
                .env("GO111MODULE", "off")
                .env("CGO_ENABLED", "0")
                .env("GOFLAGS", "")
                .env("GOCACHE", &gocache);
            status(go)
        })?;
    }

    step("version check", total, || {
        let check = |name: &str, args: &[&str]| -> anyhow::Result<()> {
            let o = Command::new(out.join(name)).args(args).output().with_context(|| format!("running {name}"))?;
            let text = String::from_utf8_lossy(&o.stdout);
            if !text.contains(VERSION) {
                bail!("{name} {args:?} printed {text:?}, not {VERSION}");
            }
            eprintln!("kube-apiserver: {name}: {}", text.trim());
            Ok(())
        };
        check("kube-apiserver", &["--version"])?;
        check("kubectl", &["version", "--client", "--short"])
    })?;

    fs::rename(&out, &bin).with_context(|| format!("moving {} to {}", out.display(), bin.display()))?;
    let minutes = total.elapsed().as_secs_f64() / 60.0;
    // Written last: its presence means the cache is complete.
    fs::write(cache.join(MARKER), format!("{}built in {minutes:.1} min\n", marker_content()))?;
    eprintln!("kube-apiserver: {VERSION} built in {minutes:.1} min into {}", bin.display());
    // The source tree and Go cache (several GB) are not needed any more.
    remove_dir(&work)?;
    Ok(())
}

/// `cargo xtask kube-apiserver`.
pub fn run() -> anyhow::Result<()> {
    let bins = ensure()?;
    println!("FLOWAUDIT_K8S_BIN={}", bins.bin.display());
    println!("FLOWAUDIT_ETCD={}", bins.etcd.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_cache_is_detected() {
        let dir = std::env::temp_dir().join(format!("fa-k8s-cache-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        assert!(!is_complete(&dir), "empty cache");
        for (name, _) in BINARIES {
            fs::write(dir.join("bin").join(name), "x").unwrap();
        }
        assert!(!is_complete(&dir), "binaries without the marker (interrupted build)");
        fs::write(dir.join(MARKER), marker_content()).unwrap();
        assert!(is_complete(&dir));
        fs::remove_file(dir.join("bin/kubectl")).unwrap();
        assert!(!is_complete(&dir), "marker without a binary");
        fs::remove_dir_all(&dir).unwrap();
    }
}
