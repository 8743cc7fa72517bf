//! Build script: with the `kernel-relay` feature, compiles the relay's tc
//! program (`bpf/relay.bpf.c`) with clang for the BPF target into OUT_DIR,
//! where `src/media/kernel.rs` includes it. Without the feature it does
//! nothing, so the default build needs no BPF toolchain.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/relay.bpf.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    if std::env::var_os("CARGO_FEATURE_KERNEL_RELAY").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // Debian keeps asm/types.h under the multiarch folder.
    let multiarch = match arch.as_str() {
        "x86_64" => "/usr/include/x86_64-linux-gnu",
        "aarch64" => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include",
    };
    let candidates = match std::env::var("CLANG") {
        Ok(c) => vec![c],
        Err(_) => ["clang", "clang-19", "clang-16", "clang-15", "clang-14"]
            .map(String::from)
            .to_vec(),
    };
    for clang in &candidates {
        let status = Command::new(clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .args(["-c", "bpf/relay.bpf.c", "-o"])
            .arg(out.join("relay.bpf.o"))
            .status();
        match status {
            Ok(s) if s.success() => return,
            Ok(s) => {
                panic!("{clang} could not compile bpf/relay.bpf.c ({s}); see its messages above")
            }
            Err(_) => continue,
        }
    }
    panic!(
        "the kernel-relay feature needs clang with the BPF target and libbpf's headers \
         (Debian: apt install clang libbpf-dev; or set CLANG=/path/to/clang); tried {candidates:?}"
    );
}
