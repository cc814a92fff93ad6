//! Benchmark helper: attaches flowaudit's empty programs where the agent attaches its real ones
//! and holds them until standard input closes. `cargo xtask bench` runs it in the lab's node
//! namespace to measure what the hooks cost by themselves.
//!
//! `empty_hooks CGROUP [INTERFACE...]`

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cgroup, interfaces)) = args.split_first() else {
        eprintln!("usage: empty_hooks CGROUP [INTERFACE...]");
        std::process::exit(2);
    };
    let _attached = match flowaudit::capture::bench::attach_empty(std::path::Path::new(cgroup), interfaces) {
        Ok(ebpf) => ebpf,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!("attached");
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}
