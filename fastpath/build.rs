//! Compiles the tc program (src/bpf/fastpath.bpf.c) with clang into
//! OUT_DIR/fastpath.bpf.o, which the crate embeds. clang is `$WEFT_CLANG`,
//! else the first of clang-19 and clang on PATH (scripts/deps installs
//! clang-19). Without clang the object is empty and the crate says so at
//! run time (FastpathError::NotBuilt): a build for the nftables data plane
//! alone needs no clang.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/bpf/fastpath.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=WEFT_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("fastpath.bpf.o");
    let candidates: Vec<String> = match std::env::var("WEFT_CLANG") {
        Ok(clang) => vec![clang],
        Err(_) => vec!["clang-19".into(), "clang".into()],
    };
    let Some(clang) = candidates.into_iter().find(|c| Command::new(c).arg("--version").output().is_ok()) else {
        println!(
            "cargo:warning=no clang found: weft-fastpath is built without its BPF program (dataplane: bpf unavailable)"
        );
        std::fs::write(&out, b"").expect("write empty BPF object");
        return;
    };
    // With -target bpf clang does not search the host's multiarch include
    // directory, where Debian keeps <asm/types.h>.
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default());
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", SOURCE, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("run {clang}: {e}"));
    assert!(status.success(), "{clang} failed to compile {SOURCE}");
}
