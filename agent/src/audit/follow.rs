//! The follower of a kube-apiserver audit log (`--audit-log-path`): JSON lines of
//! `audit.k8s.io/v1` Events, read like `tail -F`.
//!
//! Takes: the file's path and the state directory. Gives: the policy-related events (see
//! [`LineFilter::keep`]) with the annotation `flowaudit.io/source: kube-audit-log`, their user kept.
//! Rotation is followed by inode and size: a renamed file (the API server's own rotation) is read
//! to its end before the new file is read from its start; a truncated file (copytruncate) is read
//! again from its start; a file that does not exist yet is waited for. The position (inode and
//! offset after the last complete line) is stored in the state directory after each read
//! ([`Follower::commit`]): a restart resumes there, in the rotated file if it was rotated while
//! the agent was down and is still in the same directory. The very first start begins at the end.
//! Must never: panic on a line (a malformed line is counted in
//! `flowaudit_audit_lines_rejected_total{reason}` and logged with file and line number), read an
//! incomplete last line before its newline arrives, or read a line twice across a restart.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::{
    AuditError, AuditEvent, AuditMetrics, ObjectKey, SOURCE_ANNOTATION, Source,
    store::{POSITION_FILE, Position},
};

/// A line longer than this is skipped (counted as `too_long`).
pub const MAX_LINE: usize = 16 << 20;

/// What to follow.
#[derive(Clone, Debug)]
pub struct FollowerConfig {
    /// The kube-apiserver audit log.
    pub path: PathBuf,
    /// The state directory (the position is kept there).
    pub state_dir: PathBuf,
    /// How often the file is checked for new lines and rotation.
    pub poll: Duration,
}

/// An open file being read.
struct Reader {
    file: File,
    /// The path it was opened under (for logs).
    name: PathBuf,
    inode: u64,
    /// The offset after the last complete line.
    offset: u64,
    /// Bytes after `offset` read so far (the start of a line whose newline has not come).
    partial: Vec<u8>,
    /// The number of the next line, from 1.
    line: u64,
    /// Skipping the rest of a line longer than [`MAX_LINE`].
    skipping: bool,
}

/// Follows one kube-apiserver audit log. See the module documentation.
pub struct Follower {
    path: PathBuf,
    position_file: PathBuf,
    reader: Option<Reader>,
    /// The last position stored.
    committed: Option<Position>,
    filter: LineFilter,
    metrics: AuditMetrics,
}

/// The pure part of the follower: one line of the log in, the event kept (if any) out. It holds
/// the labels of pods and namespaces as the log's events showed them, to tell a label change from
/// another update. Touches no file: the `audit_line` fuzz target drives it directly.
#[derive(Debug, Default)]
pub struct LineFilter {
    labels: HashMap<(String, String, String), Value>,
}

impl Follower {
    /// Opens the log at the stored position, or at its end if there is none (first start).
    pub fn open(config: &FollowerConfig, metrics: AuditMetrics) -> Result<Self, AuditError> {
        super::store::create_dir(&config.state_dir)?;
        let position_file = config.state_dir.join(POSITION_FILE);
        let stored = Position::load(&position_file, &config.path);
        let mut follower = Self {
            path: config.path.clone(),
            position_file,
            reader: None,
            committed: stored.clone(),
            filter: LineFilter::default(),
            metrics,
        };
        let current = fs::metadata(&config.path).ok();
        let (name, offset) = match (&stored, &current) {
            (Some(p), Some(m)) if p.inode == m.ino() && p.offset <= m.len() => (config.path.clone(), p.offset),
            (Some(p), Some(m)) if p.inode == m.ino() => {
                tracing::warn!(message = "The kube-apiserver audit log was truncated while flowaudit was down; reading it from its start.", path = %config.path.display());
                (config.path.clone(), 0)
            }
            (Some(p), _) => match rotated(&config.path, p.inode) {
                // Rotated while down: the rest of the old file first, then the new one.
                Some(old) => (old, p.offset),
                None => {
                    if current.is_some() {
                        tracing::warn!(
                            message = "The kube-apiserver audit log was rotated while flowaudit was down and the old file is gone; events between may be missing.",
                            path = %config.path.display()
                        );
                    }
                    (config.path.clone(), 0)
                }
            },
            (None, Some(m)) => {
                tracing::info!(message = "Following the kube-apiserver audit log from its end (first start).", path = %config.path.display());
                (config.path.clone(), m.len())
            }
            (None, None) => (config.path.clone(), 0),
        };
        if let Err(error) = follower.open_at(&name, offset) {
            tracing::info!(message = "The kube-apiserver audit log cannot be opened yet; waiting for it.", path = %name.display(), %error);
        }
        follower.commit()?;
        Ok(follower)
    }

    /// Opens `name` at `offset`, counting the lines before it (for line numbers in logs).
    fn open_at(&mut self, name: &Path, offset: u64) -> io::Result<()> {
        let mut file = File::open(name)?;
        let inode = file.metadata()?.ino();
        let mut lines = 0u64;
        if offset > 0 {
            let mut counter = BufReader::new((&mut file).take(offset));
            loop {
                let buf = counter.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
                let n = buf.len();
                counter.consume(n);
            }
        }
        file.seek(SeekFrom::Start(offset))?;
        self.reader = Some(Reader {
            file,
            name: name.to_owned(),
            inode,
            offset,
            partial: Vec::new(),
            line: lines + 1,
            skipping: false,
        });
        Ok(())
    }

    /// Reads what was appended since the last call, following rotation and truncation, and
    /// returns the events kept. Call [`Follower::commit`] once they are handed on.
    pub fn poll(&mut self) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        if self.reader.is_none() {
            if fs::metadata(&self.path).is_err() {
                return events;
            }
            let path = self.path.clone();
            if let Err(error) = self.open_at(&path, 0) {
                tracing::warn!(message = "Cannot open the kube-apiserver audit log.", path = %path.display(), %error);
                return events;
            }
            tracing::info!(message = "Reading the kube-apiserver audit log from its start (it is new).", path = %path.display());
        }
        // Bounded: each turn either stops or moves to a new file or offset 0.
        for _ in 0..8 {
            self.read_available(&mut events);
            let Some(reader) = &self.reader else { break };
            match fs::metadata(&self.path) {
                Ok(m) if m.ino() != reader.inode => {
                    // Renamed (or deleted) and a new file created: finish the old one first.
                    self.read_available(&mut events);
                    self.finish_file(&mut events);
                    let path = self.path.clone();
                    tracing::info!(message = "The kube-apiserver audit log was rotated; reading the new file.", path = %path.display());
                    if let Err(error) = self.open_at(&path, 0) {
                        tracing::warn!(message = "Cannot open the rotated kube-apiserver audit log.", path = %path.display(), %error);
                        self.reader = None;
                        break;
                    }
                }
                Ok(m) if m.len() < reader.offset + reader.partial.len() as u64 => {
                    tracing::warn!(message = "The kube-apiserver audit log was truncated; reading it from its start.", path = %self.path.display());
                    let path = self.path.clone();
                    if self.open_at(&path, 0).is_err() {
                        self.reader = None;
                        break;
                    }
                }
                // Unchanged, or renamed and not yet recreated: keep reading the open file.
                _ => break,
            }
        }
        events
    }

    /// Reads the open file to its end, handling every complete line.
    fn read_available(&mut self, events: &mut Vec<AuditEvent>) {
        let Some(reader) = self.reader.as_mut() else { return };
        let mut chunk = vec![0u8; 64 * 1024];
        let mut lines = Vec::new();
        loop {
            let n = match reader.file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!(message = "Reading the kube-apiserver audit log failed.", path = %reader.name.display(), %error);
                    break;
                }
            };
            let mut rest = &chunk[..n];
            while let Some(i) = rest.iter().position(|b| *b == b'\n') {
                let (head, tail) = rest.split_at(i);
                let consumed = (reader.partial.len() + head.len() + 1) as u64;
                if reader.skipping {
                    reader.skipping = false;
                    lines.push((reader.line, None));
                } else {
                    reader.partial.extend_from_slice(head);
                    lines.push((reader.line, Some(std::mem::take(&mut reader.partial))));
                }
                reader.partial.clear();
                reader.offset += consumed;
                reader.line += 1;
                rest = &tail[1..];
            }
            if reader.skipping {
                reader.offset += rest.len() as u64;
            } else {
                reader.partial.extend_from_slice(rest);
                if reader.partial.len() > MAX_LINE {
                    reader.offset += reader.partial.len() as u64;
                    reader.partial.clear();
                    reader.skipping = true;
                }
            }
        }
        let name = reader.name.clone();
        for (line, text) in lines {
            match text {
                Some(text) => self.line(&name, line, &text, events),
                None => self.reject(&name, line, "too_long", "longer than the limit (16 MiB)"),
            }
        }
    }

    /// The end of a file that will not grow any more (rotated away): a last line without a
    /// newline is read as it is.
    fn finish_file(&mut self, events: &mut Vec<AuditEvent>) {
        let Some(reader) = self.reader.as_mut() else { return };
        let (name, line) = (reader.name.clone(), reader.line);
        if reader.skipping {
            self.reject(&name, line, "too_long", "longer than the limit (16 MiB)");
        } else if !reader.partial.is_empty() {
            let text = std::mem::take(&mut reader.partial);
            if serde_json::from_slice::<Value>(&text).is_ok() {
                self.line(&name, line, &text, events);
            } else {
                self.reject(&name, line, "partial", "the file was rotated in the middle of this line");
            }
        }
    }

    fn reject(&self, file: &Path, line: u64, reason: &'static str, error: &str) {
        self.metrics.rejected.with_label_values(&[reason]).inc();
        tracing::warn!(message = "Skipping a line of the kube-apiserver audit log.", file = %file.display(), line, reason, error);
    }

    /// Handles one complete line.
    fn line(&mut self, file: &Path, line: u64, text: &[u8], events: &mut Vec<AuditEvent>) {
        match self.filter.line(text) {
            Ok(Some(event)) => events.push(event),
            Ok(None) => {}
            Err(error) => self.reject(file, line, "malformed", &error),
        }
    }
    /// Stores the position after the lines returned so far (atomically), if it moved.
    pub fn commit(&mut self) -> Result<(), AuditError> {
        let Some(reader) = &self.reader else { return Ok(()) };
        // While a rotated file is read, the position names its inode under the followed path:
        // a restart finds it again by inode in the same directory.
        let now = Position::new(&self.path, reader.inode, reader.offset);
        if self.committed.as_ref() != Some(&now) {
            now.save(&self.position_file)?;
            self.committed = Some(now);
        }
        Ok(())
    }

    /// Polls every `poll` and sends the events to `tx`, committing the position after each
    /// batch is handed on, until `shutdown` is true or `tx` is closed (a last poll is made).
    pub async fn run(mut self, tx: mpsc::Sender<AuditEvent>, poll: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stop = *shutdown.borrow();
            for event in self.poll() {
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            if let Err(error) = self.commit() {
                tracing::error!(message = "Storing the kube-apiserver audit log position failed.", %error);
            }
            if stop {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

impl LineFilter {
    /// One complete line (without its newline; a trailing `\r` is ignored): `Ok(None)` for a
    /// blank line or an event not kept, the error text for a line that is not an audit event.
    pub fn line(&mut self, text: &[u8]) -> Result<Option<AuditEvent>, String> {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_line(text).map(|event| self.keep(event))
    }

    /// The event, annotated, if it is a completed, successful create, update, patch or delete of
    /// a policy-related object; for Pods and Namespaces, an update or patch only when it changed
    /// the labels (as far as the event shows: a patch of `metadata.labels`, or a response object
    /// whose labels differ from the last this log showed, or were not seen yet).
    pub fn keep(&mut self, mut event: AuditEvent) -> Option<AuditEvent> {
        if event.stage != "ResponseComplete" || !["create", "update", "patch", "delete"].contains(&event.verb.as_str())
        {
            return None;
        }
        let r = event.object_ref.as_ref()?;
        if r.subresource.is_some() {
            return None;
        }
        let group = ObjectKey::group(r.api_group.as_deref().unwrap_or(""));
        let resource = r.resource.as_deref()?;
        if !ObjectKey::is_audited(group, resource) {
            return None;
        }
        let code = event.response_status.as_ref().and_then(|s| s.code)?;
        if !(200..300).contains(&code) {
            return None;
        }
        let key = ObjectKey {
            api_group: group.to_owned(),
            resource: resource.to_owned(),
            namespace: r.namespace.clone().unwrap_or_default(),
            name: r.name.clone().unwrap_or_default(),
        };
        if key.labels_only() {
            let id = (key.resource.clone(), key.namespace.clone(), key.name.clone());
            let labels = |v: &Option<Value>| v.as_ref().and_then(|o| o.pointer("/metadata/labels")).cloned();
            let after =
                labels(&event.response_object).map(|l| if l.is_null() { Value::Object(Default::default()) } else { l });
            match event.verb.as_str() {
                "delete" => {
                    self.labels.remove(&id);
                }
                "create" => {
                    if let Some(after) = after {
                        self.labels.insert(id, after);
                    }
                }
                _ => {
                    let changed = match after {
                        Some(after) => self.labels.insert(id, after.clone()).is_none_or(|before| before != after),
                        None => labels(&event.request_object).is_some(),
                    };
                    if !changed {
                        return None;
                    }
                }
            }
        }
        event.annotations.insert(SOURCE_ANNOTATION.to_owned(), Source::KubeAuditLog.as_str().to_owned());
        Some(event)
    }
}

/// One line as an event: a JSON object of kind `Event` in `audit.k8s.io`.
pub fn parse_line(text: &[u8]) -> Result<AuditEvent, String> {
    let event: AuditEvent = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if event.kind != "Event" || !event.api_version.starts_with("audit.k8s.io/") {
        return Err(format!("not an audit.k8s.io Event (kind {:?}, apiVersion {:?})", event.kind, event.api_version));
    }
    Ok(event)
}

/// The file of inode `inode` in the directory of `path` whose name starts with the stem of
/// `path`'s name (`audit.log` → `audit-2026-11-27T00-00-00.000.log`, `audit.log.1`).
fn rotated(path: &Path, inode: u64) -> Option<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let stem = path.file_stem()?.to_string_lossy().into_owned();
    fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&stem))
            && fs::metadata(p).is_ok_and(|m| m.ino() == inode)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use serde_json::json;

    use super::*;

    fn line(verb: &str, resource: &str, name: &str, extra: Value) -> String {
        let mut v = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
            "auditID": format!("id-{verb}-{name}"), "stage": "ResponseComplete", "verb": verb,
            "user": {"username": "alice", "groups": ["dev"]},
            "objectRef": {"resource": resource, "namespace": "shop", "name": name, "apiGroup": "networking.k8s.io", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": "2026-11-27T00:00:00.000000Z", "stageTimestamp": "2026-11-27T00:00:00.100000Z"
        });
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        format!("{v}\n")
    }

    fn np(verb: &str, name: &str) -> String {
        line(verb, "networkpolicies", name, json!({}))
    }

    struct Fixture {
        dir: tempfile::TempDir,
        config: FollowerConfig,
        metrics: AuditMetrics,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = FollowerConfig {
                path: dir.path().join("audit.log"),
                state_dir: dir.path().join("state"),
                poll: Duration::from_millis(10),
            };
            Self { dir, config, metrics: AuditMetrics::unregistered() }
        }

        fn append(&self, text: &str) {
            let mut f = fs::OpenOptions::new().create(true).append(true).open(&self.config.path).unwrap();
            f.write_all(text.as_bytes()).unwrap();
        }

        fn follower(&self) -> Follower {
            Follower::open(&self.config, self.metrics.clone()).unwrap()
        }

        fn rejected(&self, reason: &str) -> u64 {
            self.metrics.rejected.with_label_values(&[reason]).get()
        }
    }

    fn names(events: &[AuditEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{} {}", e.verb, e.object_ref.as_ref().unwrap().name.as_deref().unwrap()))
            .collect()
    }

    fn poll(f: &mut Follower) -> Vec<String> {
        let events = f.poll();
        f.commit().unwrap();
        assert!(events.iter().all(|e| e.source() == Some("kube-audit-log") && e.user.username == "alice"));
        names(&events)
    }

    /// The first start begins at the end; appended lines are read; only policy-related,
    /// completed, successful writes are kept.
    #[test]
    fn starts_at_the_end_and_keeps_policy_changes() {
        let fx = Fixture::new();
        fx.append(&np("create", "old"));
        let mut f = fx.follower();
        assert_eq!(poll(&mut f), Vec::<String>::new(), "what was there before the first start is not read");
        fx.append(&np("create", "a"));
        fx.append(&np("get", "a"));
        fx.append(&line(
            "create",
            "services",
            "svc",
            json!({"objectRef": {"resource": "services", "namespace": "shop", "name": "svc", "apiVersion": "v1"}}),
        ));
        fx.append(&line("update", "networkpolicies", "b", json!({"stage": "RequestReceived"})));
        fx.append(&line("update", "networkpolicies", "c", json!({"responseStatus": {"metadata": {}, "code": 409}})));
        fx.append(&line("patch", "globalnetworkpolicies", "d", json!({"objectRef": {"resource": "globalnetworkpolicies", "name": "d", "apiGroup": "crd.projectcalico.org", "apiVersion": "v1"}})));
        fx.append(&np("delete", "a"));
        assert_eq!(poll(&mut f), ["create a", "patch d", "delete a"]);
    }

    /// Pods and namespaces: creates and deletes are kept, updates only when the labels changed;
    /// status updates (a subresource) never.
    #[test]
    fn pod_updates_are_kept_only_for_label_changes() {
        let fx = Fixture::new();
        let mut f = fx.follower();
        let pod = |verb: &str, labels: Value, extra: Value| {
            let mut e = json!({
                "objectRef": {"resource": "pods", "namespace": "shop", "name": "web", "apiVersion": "v1"},
                "responseObject": {"kind": "Pod", "metadata": {"name": "web", "labels": labels}},
            });
            e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            line(verb, "pods", "web", e)
        };
        fx.append(&pod("create", json!({"app": "web"}), json!({})));
        fx.append(&pod("update", json!({"app": "web"}), json!({})));
        fx.append(&pod("patch", json!({"app": "api"}), json!({})));
        fx.append(&pod("patch", json!({"app": "api"}), json!({"objectRef": {"resource": "pods", "namespace": "shop", "name": "web", "apiVersion": "v1", "subresource": "status"}})));
        fx.append(&pod("delete", json!({"app": "api"}), json!({})));
        assert_eq!(poll(&mut f), ["create web", "patch web", "delete web"]);
    }

    /// A last line without its newline waits for the rest.
    #[test]
    fn a_partial_line_waits_for_its_newline() {
        let fx = Fixture::new();
        fx.append("");
        let mut f = fx.follower();
        let whole = np("create", "a");
        let (head, tail) = whole.split_at(40);
        fx.append(head);
        assert_eq!(poll(&mut f), Vec::<String>::new());
        assert_eq!(fx.rejected("malformed"), 0);
        fx.append(tail);
        assert_eq!(poll(&mut f), ["create a"]);
    }

    /// Malformed lines are counted and skipped; the lines after them are read.
    #[test]
    fn malformed_lines_are_counted_not_fatal() {
        let fx = Fixture::new();
        fx.append("");
        let mut f = fx.follower();
        fx.append("{not json\n");
        fx.append("{\"kind\":\"Pod\",\"apiVersion\":\"v1\"}\n");
        fx.append("\n");
        fx.append(&np("create", "a"));
        assert_eq!(poll(&mut f), ["create a"]);
        assert_eq!(fx.rejected("malformed"), 2);
    }

    /// The line filter alone (the `audit_line` fuzz target's entry point): blank lines and
    /// `\r` endings are ignored, other kinds are errors, labels are remembered across lines.
    #[test]
    fn the_line_filter_keeps_the_same_events_without_a_file() {
        let mut filter = LineFilter::default();
        assert!(matches!(filter.line(b" \r"), Ok(None)));
        assert!(filter.line(br#"{"kind":"Pod","apiVersion":"v1"}"#).is_err());
        let create = np("create", "a");
        let event = filter.line(create.trim_end().as_bytes()).unwrap().unwrap();
        assert_eq!(event.source(), Some("kube-audit-log"));
        let labels = json!({"responseObject": {"metadata": {"labels": {"app": "web"}}}});
        let pod = line("update", "pods", "web", labels);
        let pod = pod.replace("networking.k8s.io", "");
        assert!(filter.line(format!("{}\r", pod.trim_end()).as_bytes()).unwrap().is_some());
        assert!(filter.line(pod.trim_end().as_bytes()).unwrap().is_none(), "the same labels again");
    }

    /// Rotation by rename: the rest of the old file, then the new file from its start.
    #[test]
    fn rotation_by_rename_reads_the_old_rest_then_the_new_file() {
        let fx = Fixture::new();
        fx.append("");
        let mut f = fx.follower();
        fx.append(&np("create", "a"));
        assert_eq!(poll(&mut f), ["create a"]);
        fx.append(&np("update", "a"));
        fs::rename(&fx.config.path, fx.dir.path().join("audit-2026-11-27T00-00-00.000.log")).unwrap();
        // Renamed, not yet recreated: the old file is still read.
        assert_eq!(poll(&mut f), ["update a"]);
        fx.append(&np("delete", "a"));
        fx.append(&np("create", "b"));
        assert_eq!(poll(&mut f), ["delete a", "create b"]);
    }

    /// Truncation (copytruncate): the file is read again from its start.
    #[test]
    fn truncation_reads_from_the_start() {
        let fx = Fixture::new();
        fx.append("");
        let mut f = fx.follower();
        fx.append(&np("create", "a"));
        fx.append(&np("update", "a"));
        assert_eq!(poll(&mut f), ["create a", "update a"]);
        fs::write(&fx.config.path, np("delete", "a")).unwrap();
        assert_eq!(poll(&mut f), ["delete a"]);
    }

    /// A restart resumes after the last line read: nothing twice, nothing missed; also when the
    /// file was rotated while the agent was down.
    #[test]
    fn a_restart_resumes_at_the_stored_offset() {
        let fx = Fixture::new();
        fx.append("");
        let mut f = fx.follower();
        fx.append(&np("create", "a"));
        assert_eq!(poll(&mut f), ["create a"]);
        drop(f);
        fx.append(&np("update", "a"));
        let mut f = fx.follower();
        assert_eq!(poll(&mut f), ["update a"]);
        drop(f);

        // Down while the log rotated: the rest of the old file, then the new one.
        fx.append(&np("delete", "a"));
        fs::rename(&fx.config.path, fx.dir.path().join("audit-1.log")).unwrap();
        fx.append(&np("create", "b"));
        let mut f = fx.follower();
        assert_eq!(poll(&mut f), ["delete a", "create b"]);
        drop(f);
        let mut f = fx.follower();
        assert_eq!(poll(&mut f), Vec::<String>::new(), "nothing twice");
    }

    /// Random bytes (newlines among them) appended in random chunks: no panic, and the stored
    /// offset is always just after the last newline written (a cheap stand-in for a fuzz target).
    #[test]
    fn random_input_never_panics_and_the_offset_tracks_newlines() {
        let fx = Fixture::new();
        fx.append("");
        let mut f = fx.follower();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = np("create", "a");
        let mut written = Vec::new();
        for _ in 0..300 {
            let chunk: Vec<u8> = match next() % 4 {
                // A valid line, possibly cut anywhere.
                0 => valid.as_bytes()[..(next() as usize % (valid.len() + 1))].to_vec(),
                1 => valid.as_bytes().to_vec(),
                // Valid JSON of the wrong shape, or a flipped byte in a valid line.
                2 => {
                    let mut v = valid.as_bytes().to_vec();
                    let i = next() as usize % v.len();
                    v[i] ^= 1 << (next() % 8);
                    v
                }
                _ => (0..next() % 64).map(|_| [b'\n', b'{', b'"', 0xff, b'a'][next() as usize % 5]).collect(),
            };
            // Raw bytes: invalid UTF-8 too.
            fs::OpenOptions::new().append(true).open(&fx.config.path).unwrap().write_all(&chunk).unwrap();
            written.extend_from_slice(&chunk);
            f.poll();
            f.commit().unwrap();
            let expected = written.iter().rposition(|b| *b == b'\n').map_or(0, |i| i as u64 + 1);
            assert_eq!(f.reader.as_ref().unwrap().offset, expected);
        }
        assert!(fx.rejected("malformed") > 0);
    }

    /// A line longer than [`MAX_LINE`] is skipped and counted; the next line is read.
    #[test]
    fn an_overlong_line_is_skipped() {
        let fx = Fixture::new();
        fx.append("");
        let mut f = fx.follower();
        fx.append(&"x".repeat(MAX_LINE + 10));
        assert_eq!(poll(&mut f), Vec::<String>::new());
        fx.append("yy\n");
        fx.append(&np("create", "a"));
        assert_eq!(poll(&mut f), ["create a"]);
        assert_eq!(fx.rejected("too_long"), 1);
        assert_eq!(fx.rejected("malformed"), 0);
    }

    /// A file that does not exist yet is waited for and read from its start.
    #[test]
    fn a_missing_file_is_waited_for() {
        let fx = Fixture::new();
        let mut f = fx.follower();
        assert_eq!(poll(&mut f), Vec::<String>::new());
        fx.append(&np("create", "a"));
        assert_eq!(poll(&mut f), ["create a"]);
    }
}
