//! Compiles the BPF shaper and the bench's empty programs (C, under `bpf/` at
//! the workspace root) with clang into OUT_DIR, where `src/shaper/mod.rs` and
//! `src/empty.rs` embed them. `bpf/shaper.c` includes `shaper.h` and the
//! headers under `bpf/lib/`; a change to any of them compiles it again.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

const SOURCES: &[&str] = &["shaper.c", "empty.c"];
const HEADERS: &[&str] = &["shaper.h"];
/// Directories of headers: cargo looks at every file in them (new ones too).
const HEADER_DIRS: &[&str] = &["lib"];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../../bpf");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // Debian keeps asm/types.h under the multiarch directory.
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    if !Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        fail("the libbpf headers (bpf/bpf_helpers.h) are missing: install them with `apt-get install libbpf-dev`");
    }
    for header in HEADERS.iter().chain(HEADER_DIRS) {
        println!("cargo:rerun-if-changed={}", bpf_dir.join(header).display());
    }
    for source in SOURCES {
        let src = bpf_dir.join(source);
        println!("cargo:rerun-if-changed={}", src.display());
        let obj = out_dir.join(Path::new(source).with_extension("o"));
        let status = Command::new("clang")
            // v3: atomic fetch-and-add (the flow classifier's turn counter).
            // scripts/bpf-same.sh compiles with these flags too: change both.
            .args([
                "-g", "-O2", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
            ])
            .arg(format!("-I{multiarch}"))
            .arg(format!("-I{}", bpf_dir.display()))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => fail(&format!("clang failed to compile {} ({s})", src.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fail("clang is not installed: install it with `apt-get install clang` (BPF programs are C, compiled by clang)")
            }
            Err(e) => fail(&format!("could not run clang: {e}")),
        }
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}
