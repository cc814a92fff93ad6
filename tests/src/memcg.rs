//! A memory cgroup with a hard limit, for running the agent under a memory bound.
//!
//! Takes: a limit in bytes. Gives: a cgroup directory a lab command can join before it starts
//! ([`crate::Lab::node_command_in`]), its peak usage and its OOM-kill count. Uses the cgroup v2
//! memory controller when the v2 root delegates it, else the v1 `memory` hierarchy (under this
//! process's own memory cgroup). Must never: change a cgroup it did not create, or stay behind:
//! dropping it moves any process left in it to its parent and removes the directory; a cgroup
//! whose creator is gone is removed by [`remove_stale`].

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{LabError, cgroup2_root, io};

/// Prefix of the cgroups made here: `famem-<creator pid>-<n>`.
const PREFIX: &str = "famem-";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A memory cgroup this process created.
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
    limit: u64,
}

/// Where new memory cgroups go: (parent directory, cgroup v2).
fn parent() -> Result<(PathBuf, bool), LabError> {
    if let Some(root) = cgroup2_root() {
        let delegated = fs::read_to_string(root.join("cgroup.subtree_control")).unwrap_or_default();
        if delegated.split_whitespace().any(|c| c == "memory") {
            return Ok((root, true));
        }
    }
    let own = fs::read_to_string("/proc/self/cgroup").map_err(io("reading /proc/self/cgroup"))?;
    let path = own
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.trim_start_matches('/').to_owned())
        })
        .ok_or_else(|| LabError::Io {
            what: "finding a memory cgroup".into(),
            source: std::io::Error::other("no cgroup v2 memory controller and no v1 memory hierarchy"),
        })?;
    Ok((Path::new("/sys/fs/cgroup/memory").join(path), false))
}

fn read_u64(path: &Path) -> Result<u64, LabError> {
    let text = fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    text.trim().parse().map_err(|_| LabError::Io {
        what: format!("parsing {}", path.display()),
        source: std::io::Error::other(text.trim().to_owned()),
    })
}

/// The value of `key` in a flat keyed file (`memory.events`, `memory.oom_control`).
fn keyed(path: &Path, key: &str) -> Result<u64, LabError> {
    let text = fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0))
}

impl MemoryCgroup {
    /// Creates a memory cgroup limited to `limit` bytes (no swap beyond it where the kernel lets
    /// us say so).
    pub fn create(limit: u64) -> Result<MemoryCgroup, LabError> {
        let (parent, v2) = parent()?;
        let dir = parent.join(format!("{PREFIX}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let cg = MemoryCgroup { dir, v2, limit };
        let write = |file: &str, value: &str| {
            let path = cg.dir.join(file);
            fs::write(&path, value).map_err(io(format!("writing {value} to {}", path.display())))
        };
        if v2 {
            write("memory.max", &limit.to_string())?;
            if cg.dir.join("memory.swap.max").exists() {
                write("memory.swap.max", "0")?;
            }
        } else {
            write("memory.limit_in_bytes", &limit.to_string())?;
            if cg.dir.join("memory.memsw.limit_in_bytes").exists() {
                write("memory.memsw.limit_in_bytes", &limit.to_string())?;
            }
        }
        Ok(cg)
    }

    /// The directory (join it through its `cgroup.procs`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether this is a cgroup v2 memory cgroup (else v1).
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// Peak usage in bytes since creation (process memory, kernel memory such as BPF maps, and
    /// page cache of files written by its processes).
    pub fn peak(&self) -> Result<u64, LabError> {
        read_u64(&self.dir.join(if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" }))
    }

    /// Processes the OOM killer killed in it.
    pub fn oom_kills(&self) -> Result<u64, LabError> {
        if self.v2 {
            keyed(&self.dir.join("memory.events"), "oom_kill")
        } else {
            keyed(&self.dir.join("memory.oom_control"), "oom_kill")
        }
    }
}

fn remove(dir: &Path) {
    if let (Ok(procs), Some(parent)) = (fs::read_to_string(dir.join("cgroup.procs")), dir.parent()) {
        for pid in procs.split_whitespace() {
            let _ = fs::write(parent.join("cgroup.procs"), pid);
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        remove(&self.dir);
    }
}

/// Removes the memory cgroups of creators that no longer run.
pub fn remove_stale() {
    let Ok((parent, _)) = parent() else { return };
    let Ok(entries) = fs::read_dir(&parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove(&e.path());
        }
    }
}
