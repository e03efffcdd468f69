//! Building the filters for `wasm32-unknown-unknown`, on whatever toolchain this machine has.
//!
//! Route 1 (a developer's laptop): rustup has the target installed, so plain
//! `cargo build --target wasm32-unknown-unknown`.
//! Route 2 (machines whose rustup cannot add targets): Debian's `rustc-web` with its std
//! sources (`rust-web-src`), building std ourselves (`-Z build-std`, allowed by
//! `RUSTC_BOOTSTRAP=1`) and linking with LLVM's `wasm-ld-19`, in its own target dir so the two
//! compilers never share artifacts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

const TARGET: &str = "wasm32-unknown-unknown";
// clang-19 and llvm-19 (llvm-ar) compile the C parts of `ring` (nexus-auth) for wasm32.
const DEBIAN_PACKAGES: [&str; 6] = [
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "lld-19",
    "clang-19",
    "llvm-19",
];
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_LINKER: &str = "wasm-ld-19";

/// Builds every cdylib crate under `filters/` and writes `target/filters/<lib>.wasm` and
/// `<lib>.wasm.sha256`. Returns the written module paths.
pub fn build_filters(root: &Path) -> Result<Vec<PathBuf>> {
    let crates = filter_crates(root)?;
    if crates.is_empty() {
        bail!("no cdylib crates found under filters/");
    }
    let rustflags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        TARGET.replace('-', "_").to_uppercase()
    );
    let reproducible = reproducible_flags(root);
    let target_dir = if rustup_has_target() {
        eprintln!("xtask: building filters with rustup's {TARGET} target");
        let mut cmd = crate::cargo();
        cmd.env(&rustflags_var, &reproducible)
            .args(["build", "--release", "--target", TARGET]);
        add_packages(&mut cmd, &crates);
        crate::status(cmd.current_dir(root))?;
        root.join("target")
    } else {
        eprintln!(
            "xtask: rustup has no {TARGET} target; building with Debian's rustc-web (-Z build-std)"
        );
        ensure_debian_toolchain()?;
        let dir = root.join("target").join("wasm-debian");
        let mut cmd = Command::new(DEBIAN_CARGO);
        // The rustup cargo running xtask exports its own toolchain; none of it applies here.
        for var in [
            "RUSTUP_TOOLCHAIN",
            "RUSTC",
            "RUSTDOC",
            "RUSTC_WRAPPER",
            "CARGO",
            "RUSTFLAGS",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("RUSTC", DEBIAN_RUSTC)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", &dir)
            .env("CC_wasm32_unknown_unknown", "clang-19")
            .env("AR_wasm32_unknown_unknown", "llvm-ar-19")
            .env(
                &rustflags_var,
                format!("-C linker={DEBIAN_LINKER} {reproducible}"),
            )
            .args(["build", "--release", "--target", TARGET])
            .args(["-Z", "build-std=std,panic_abort"]);
        add_packages(&mut cmd, &crates);
        crate::status(cmd.current_dir(root))?;
        dir
    };
    let out = root.join("target").join("filters");
    std::fs::create_dir_all(&out)?;
    let mut written = Vec::new();
    for (_, lib) in &crates {
        let built = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{lib}.wasm"));
        let bytes =
            std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
        let dest = out.join(format!("{lib}.wasm"));
        std::fs::write(&dest, &bytes)?;
        let digest = hex(&Sha256::digest(&bytes));
        std::fs::write(
            out.join(format!("{lib}.wasm.sha256")),
            format!("{digest}\n"),
        )?;
        eprintln!(
            "xtask: {} ({} KiB, sha256 {digest})",
            dest.display(),
            bytes.len() / 1024
        );
        written.push(dest);
    }
    Ok(written)
}

/// The checkout and cargo-home paths end up in panic locations inside the module; mapping them
/// to fixed names makes the `.wasm` (and the sha256 an EnvoyFilter pins) the same wherever the
/// repository is cloned.
fn reproducible_flags(root: &Path) -> String {
    let mut flags = format!("--remap-path-prefix={}=/nexus", root.display());
    let cargo_home = std::env::var("CARGO_HOME")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cargo")));
    if let Some(home) = cargo_home {
        flags.push_str(&format!(" --remap-path-prefix={home}=/cargo"));
    }
    flags
}

fn add_packages(cmd: &mut Command, crates: &[(String, String)]) {
    for (package, _) in crates {
        cmd.args(["-p", package]);
    }
}

/// (package name, lib target name) of every cdylib under filters/.
fn filter_crates(root: &Path) -> Result<Vec<(String, String)>> {
    let output = crate::cargo()
        .current_dir(root)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let filters_dir = root.join("filters");
    let mut found = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().unwrap_or_default());
        if !manifest.starts_with(&filters_dir) {
            continue;
        }
        for target in pkg["targets"].as_array().into_iter().flatten() {
            let is_cdylib = target["crate_types"]
                .as_array()
                .is_some_and(|t| t.iter().any(|k| k == "cdylib"));
            if is_cdylib {
                found.push((
                    pkg["name"].as_str().unwrap_or_default().to_string(),
                    target["name"]
                        .as_str()
                        .unwrap_or_default()
                        .replace('-', "_"),
                ));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false)
}

/// Makes sure one of the two routes can build: rustup's target, or Debian's packages.
pub fn ensure_toolchain() -> Result<()> {
    if rustup_has_target() {
        return Ok(());
    }
    ensure_debian_toolchain()
}

fn ensure_debian_toolchain() -> Result<()> {
    nexus_toolenv::apt::ensure(&DEBIAN_PACKAGES).with_context(|| {
        format!("the {TARGET} build needs Debian's rust toolchain (or, with rustup: rustup target add {TARGET})")
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
