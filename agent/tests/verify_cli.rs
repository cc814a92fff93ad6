//! `flowaudit verify` through the built binary: exit 0 intact, 1 tampering found, 2 bad input.

use std::{fs, path::Path, process::Command};

use flowaudit::output::{Evidence, FileConfig, HmacKey, Retention, RotatingLog};

fn verify(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowaudit")).arg("verify").args(args).output().expect("runs");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// flows.log with three rotated files and audit.log, signed with the key in `key_file`.
fn logs(dir: &Path, key_file: &Path) {
    fs::write(key_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let key = HmacKey::from_file(key_file).unwrap();
    for name in ["flows.log", "audit.log"] {
        let cfg = FileConfig { dir: dir.to_owned(), max_file_size: 100, max_files: 5 };
        let evidence = Evidence { retention: Retention::default(), hmac_key: Some(key.clone()) };
        let mut log = RotatingLog::open_with(cfg, name, evidence).unwrap();
        for n in 1..=16 {
            log.append_line(format!("{name}-{n:04}-xxxxxx").as_bytes()).unwrap();
            log.flush().unwrap();
        }
    }
}

#[test]
fn exit_codes_0_intact_1_tampered_2_bad_input() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("logs");
    let key = root.path().join("hmac.key");
    logs(&dir, &key);
    let d = dir.to_str().unwrap();
    let k = key.to_str().unwrap();

    let (code, out, err) = verify(&[d, "--hmac-key-file", k]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("{d}: intact")), "{out}");
    assert!(out.contains("flows.log: 4 files") && out.contains("audit.log: 4 files"), "{out}");

    let (code, out, _) = verify(&[d, "--format", "json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["intact"], true);

    // One byte of a rotated audit file, and the oldest flows file gone.
    let path = dir.join("audit.log.2");
    let mut bytes = fs::read(&path).unwrap();
    bytes[3] = b'X';
    fs::write(&path, bytes).unwrap();
    fs::remove_file(dir.join("flows.log.3")).unwrap();
    let (code, out, err) = verify(&[d, "--hmac-key-file", k]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("changed: audit.log.2 lines 1-1"), "{out}");
    assert!(out.contains("removed: flows.log.3"), "{out}");
    let (code, out, _) = verify(&[d, "--format", "json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The changed block; the removed file (its chain is left) and the gap before the oldest file.
    assert_eq!(report["findings"].as_array().unwrap().len(), 3, "{report:#}");

    let other = root.path().join("other.key");
    fs::write(&other, "another key, long enough to use\n").unwrap();
    let (code, out, _) = verify(&[d, "--hmac-key-file", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("bad_signature: chain-heads.log"), "{out}");

    let missing = root.path().join("missing");
    let (code, _, err) = verify(&[missing.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    let (code, _, err) = verify(&[d, "--hmac-key-file", "/no/such/key"]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/key"), "{err}");
    let (code, _, err) = verify(&[root.path().to_str().unwrap()]);
    assert_eq!(code, 2, "a directory without logs");
    assert!(err.contains("not a flowaudit log directory"), "{err}");
    let (code, _, _) = verify(&[d, "--format", "xml"]);
    assert_eq!(code, 2);
}
