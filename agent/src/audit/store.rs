//! The audit stage's restart state under the state directory: the policy-related objects last
//! reported ([`OBJECTS_FILE`]) and the position in the kube-apiserver audit log
//! ([`POSITION_FILE`]). Every write is atomic (a temporary file in the same directory, synced,
//! then renamed over the old one), so a crash leaves the old state or the new, never half of one.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{AuditError, ObjectKey, Objects};

/// The objects last reported, in the state directory.
pub const OBJECTS_FILE: &str = "audit-objects.json";
/// The position in the kube-apiserver audit log, in the state directory.
pub const POSITION_FILE: &str = "kube-audit-log-position.json";
/// Version of both files' format.
const FORMAT: u32 = 1;

/// Creates the state directory (0750) if needed.
pub fn create_dir(dir: &Path) -> Result<(), AuditError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|source| AuditError::Io { path: dir.to_owned(), source })
}

/// Writes `bytes` to `path` atomically: `path.tmp` is written and synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let tmp = path.with_extension("json.tmp");
    let io = |source| AuditError::Io { path: path.to_owned(), source };
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o640).open(&tmp).map_err(io)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Reads a JSON state file: `Ok(None)` when it does not exist.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The content of [`OBJECTS_FILE`].
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredObjects {
    /// [`FORMAT`].
    pub format: u32,
    /// The cluster source the objects came from (`kube`, `manifests:<dir>`): a state of another
    /// source is not compared.
    pub source: String,
    /// The objects: whole for the policy kinds, only apiVersion, kind and the metadata's name,
    /// namespace, uid, resourceVersion and labels for Pods and Namespaces.
    pub objects: Vec<(ObjectKey, Value)>,
}

impl StoredObjects {
    /// What to store of `objects`.
    pub fn new(source: &str, objects: &Objects) -> Self {
        let objects = objects
            .0
            .iter()
            .map(|(key, value)| (key.clone(), if key.labels_only() { labels_part(value) } else { (**value).clone() }))
            .collect();
        Self { format: FORMAT, source: source.to_owned(), objects }
    }

    /// The stored objects as a set.
    pub fn objects(self) -> Objects {
        Objects(self.objects.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }

    /// Writes the file in `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), AuditError> {
        let path = dir.join(OBJECTS_FILE);
        let bytes = serde_json::to_vec(self).map_err(|e| AuditError::Io { path: path.clone(), source: e.into() })?;
        write_atomic(&path, &bytes)
    }

    /// Reads the file in `dir`; `None` when there is none, or it is unreadable (logged) or of
    /// another format.
    pub fn load(dir: &Path) -> Option<Self> {
        let path = dir.join(OBJECTS_FILE);
        match read::<Self>(&path) {
            Ok(Some(stored)) if stored.format == FORMAT => Some(stored),
            Ok(Some(stored)) => {
                tracing::warn!(message = "Audit state of another format; starting afresh.", path = %path.display(), format = stored.format);
                None
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(message = "Audit state unreadable; starting afresh.", path = %path.display(), %error);
                None
            }
        }
    }
}

/// apiVersion, kind and the identifying metadata and labels of a Pod or Namespace.
fn labels_part(value: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for field in ["apiVersion", "kind"] {
        if let Some(v) = value.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    let mut meta = serde_json::Map::new();
    if let Some(m) = value.get("metadata").and_then(Value::as_object) {
        for field in ["name", "namespace", "uid", "resourceVersion", "labels"] {
            if let Some(v) = m.get(field) {
                meta.insert(field.into(), v.clone());
            }
        }
    }
    out.insert("metadata".into(), Value::Object(meta));
    Value::Object(out)
}

/// The content of [`POSITION_FILE`]: where reading the kube-apiserver audit log stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// [`FORMAT`].
    pub format: u32,
    /// The followed path.
    pub path: PathBuf,
    /// The inode of the file that was being read.
    pub inode: u64,
    /// The byte offset after the last complete line read.
    pub offset: u64,
}

impl Position {
    /// A position in the file `inode` of `path`.
    pub fn new(path: &Path, inode: u64, offset: u64) -> Self {
        Self { format: FORMAT, path: path.to_owned(), inode, offset }
    }

    /// Writes the position to `file`.
    pub fn save(&self, file: &Path) -> Result<(), AuditError> {
        let bytes = serde_json::to_vec(self).map_err(|e| AuditError::Io { path: file.to_owned(), source: e.into() })?;
        write_atomic(file, &bytes)
    }

    /// Reads the position of `path` from `file`; `None` when there is none, it is unreadable
    /// (logged), or it is for another path.
    pub fn load(file: &Path, path: &Path) -> Option<Self> {
        match read::<Self>(file) {
            Ok(Some(p)) if p.format == FORMAT && p.path == path => Some(p),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(message = "Audit log position unreadable; starting at the end.", file = %file.display(), %error);
                None
            }
        }
    }
}

/// Path of a state file in the state directory.
pub fn state_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        Position::new(Path::new("/x"), 7, 10).save(&file).unwrap();
        Position::new(Path::new("/x"), 7, 20).save(&file).unwrap();
        assert_eq!(Position::load(&file, Path::new("/x")).unwrap().offset, 20);
        assert_eq!(Position::load(&file, Path::new("/other")), None, "a position of another file is not used");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["p.json"]);
        fs::write(&file, b"{not json").unwrap();
        assert_eq!(Position::load(&file, Path::new("/x")), None, "a broken file is ignored, not fatal");
    }
}
