//! Rebuilds the eBPF object when bpf-linker changes (cargo cannot see a linker on PATH).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
