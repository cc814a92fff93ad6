//! cgroup v2 ids of pods, read from the cgroup filesystem.
//!
//! A socket's cgroup is its container's, below the pod's cgroup, so a pod owns the id of its
//! directory and of every directory below it. Pod directories are found by UID under the kubelet's
//! `kubepods` trees (cgroupfs driver: `.../pod<uid>`; systemd driver:
//! `...-pod<uid with _ for ->.slice`), or named by the manifests source's annotation.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Directories that are kubelet pod cgroups below `root`, by pod UID (with `-`).
pub fn kubepods_dirs(root: &Path) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(root) else { return out };
    let mut stack: Vec<(PathBuf, u32)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kubepods"))
        .map(|e| (e.path(), 1))
        .collect();
    while let Some((dir, depth)) = stack.pop() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(uid) = pod_uid(&name) {
            out.insert(uid, dir);
            continue;
        }
        if depth >= 4 {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

/// The pod UID in a kubepods directory name, if it is a pod's.
pub fn pod_uid(name: &str) -> Option<String> {
    let i = name.rfind("pod")?;
    let rest = &name[i + 3..];
    let uid = rest.strip_suffix(".slice").unwrap_or(rest);
    let looks = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_');
    looks.then(|| uid.replace('_', "-"))
}

/// The cgroup ids (inode numbers) of `dir` and every directory below it.
pub fn ids_below(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&d) else { continue };
        out.push(meta.ino());
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_of_both_cgroup_drivers() {
        let uid = "0b8a7e2c-1f7d-4c56-9c1e-2f3d4e5f6a7b";
        assert_eq!(pod_uid(&format!("pod{uid}")), Some(uid.to_owned()));
        assert_eq!(pod_uid(&format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"))), Some(uid.to_owned()));
        assert_eq!(pod_uid("kubepods-besteffort.slice"), None);
        assert_eq!(pod_uid("podman"), None);
    }

    #[test]
    fn finds_pod_directories_and_everything_below() {
        let root = tempfile::tempdir().unwrap();
        let uid = "0b8a7e2c-1f7d-4c56-9c1e-2f3d4e5f6a7b";
        let systemd = root
            .path()
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")));
        std::fs::create_dir_all(systemd.join("cri-containerd-abc.scope")).unwrap();
        let other = root.path().join("kubepods/besteffort/pod11111111-2222-3333-4444-555555555555");
        std::fs::create_dir_all(&other).unwrap();
        let dirs = kubepods_dirs(root.path());
        assert_eq!(dirs.get(uid), Some(&systemd));
        assert!(dirs.contains_key("11111111-2222-3333-4444-555555555555"));
        let ids = ids_below(&systemd);
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&std::fs::metadata(systemd.join("cri-containerd-abc.scope")).unwrap().ino()));
    }
}
