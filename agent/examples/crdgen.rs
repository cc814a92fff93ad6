//! crdgen: writes the CRDs generated from the Rust types
//! ([`flowaudit::report::resource::crd_files`]) into a directory, by default
//! `deploy/base/crds/` of the workspace. Run by `cargo xtask crdgen`; an example rather than a
//! binary so that the release build (`cargo build --release -p flowaudit`, the Containerfile)
//! does not carry it.
//!
//! Takes: an optional output directory. Gives: one YAML file per CRD, and removes any other
//! `*.yaml` there (a CRD whose type is gone). Must never: write outside that directory.

use std::path::PathBuf;

use anyhow::Context as _;
use flowaudit::report::resource::{CRD_DIR, crd_files};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(CRD_DIR));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = crd_files();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !files.iter().any(|(n, _)| *n == name) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!("removed {}", path.display());
        }
    }
    for (name, text) in files {
        let path = dir.join(&name);
        let unchanged = std::fs::read_to_string(&path).is_ok_and(|old| old == text);
        if !unchanged {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        println!("{} {}", if unchanged { "unchanged" } else { "wrote" }, path.display());
    }
    Ok(())
}
