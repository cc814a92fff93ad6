//! Builds the eBPF object (nightly, `-Z build-std=core`, bpf-linker) and puts it in OUT_DIR,
//! where `capture` embeds it. `FLOWAUDIT_EBPF_OBJ=path` uses a prebuilt object instead.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=FLOWAUDIT_EBPF_OBJ");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    if let Some(obj) = std::env::var_os("FLOWAUDIT_EBPF_OBJ") {
        std::fs::copy(&obj, out_dir.join("flowaudit-ebpf"))
            .with_context(|| format!("copying {}", obj.to_string_lossy()))?;
        return Ok(());
    }
    let meta = cargo_metadata::MetadataCommand::new().no_deps().exec()?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "flowaudit-ebpf")
        .ok_or_else(|| anyhow!("flowaudit-ebpf is not in the workspace"))?;
    let root = pkg.manifest_path.parent().ok_or_else(|| anyhow!("no parent"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "flowaudit-ebpf", root_dir: root.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
