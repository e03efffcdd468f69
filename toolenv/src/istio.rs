//! Offline validation of the Istio objects Nexus renders, against Istio's CRD schemas as npm's
//! `@kubernetes-models/istio` compiles them. No istiod runs in the tests, so this is how a
//! rendered EnvoyFilter or VirtualService is checked against what Istio would accept.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::progress::Step;

/// The validator script and its npm manifest, kept in this crate.
fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("istio-validate")
}

fn cached() -> PathBuf {
    crate::cache_dir().join("istio-validate")
}

fn installed(dir: &Path) -> bool {
    dir.join("node_modules/@kubernetes-models/istio").is_dir()
        && crate::same_file(&sources().join("package.json"), &dir.join("package.json"))
}

/// The directory with the schemas installed; never installs.
pub fn dir() -> Result<PathBuf> {
    let dir = cached();
    if installed(&dir) {
        return Ok(dir);
    }
    bail!(
        "Istio's CRD schemas are not installed in {}: run `cargo xtask setup`",
        dir.display()
    )
}

/// `npm install` of the pinned schema packages into the cache (Debian's nodejs and npm when
/// missing).
pub fn install(step: &Step) -> Result<PathBuf> {
    let dest = cached();
    let _lock = crate::lock(&dest)?;
    if installed(&dest) {
        return Ok(dest);
    }
    if !crate::apt::on_path("npm") {
        crate::apt::ensure(&["nodejs", "npm"])?;
    }
    step.say("npm install @kubernetes-models/istio (Istio CRD schemas)");
    std::fs::copy(sources().join("package.json"), dest.join("package.json"))?;
    crate::run(
        Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dest),
    )?;
    Ok(dest)
}

/// Validates every Istio object in `files`; Ok with node's output when all pass, Err with it
/// when any fails (or none was found).
pub fn validate(files: &[PathBuf]) -> Result<String> {
    let dir = dir()?;
    // ES modules resolve imports next to the script, so it runs from the install directory.
    let script = dir.join("validate.mjs");
    let source = sources().join("validate.mjs");
    if !crate::same_file(&source, &script) {
        let _lock = crate::lock(&dir)?;
        crate::install_file(&source, &script, 0o644)?;
    }
    let absolute: Vec<PathBuf> = files
        .iter()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
        .collect();
    let out: Output = Command::new("node")
        .arg(&script)
        .args(&absolute)
        .current_dir(&dir)
        .output()
        .context("running node (apt-get install nodejs)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("Istio schema validation failed:\n{text}");
    }
    Ok(text)
}
