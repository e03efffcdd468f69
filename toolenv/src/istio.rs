//! Offline validation of the Istio objects Nexus renders, against Istio's CRD schemas as npm's
//! `@kubernetes-models/istio` compiles them. No istiod runs in the tests, so this is how a
//! rendered EnvoyFilter or VirtualService is checked against what Istio would accept.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

use crate::npm::NpmPackages;
use crate::progress::Step;

/// The validator script and its npm manifest, kept in this crate (`istio-validate/`).
const PACKAGES: NpmPackages = NpmPackages {
    name: "istio-validate",
    installed_marker: "@kubernetes-models/istio",
};

/// The directory with the schemas installed; never installs.
pub fn dir() -> Result<PathBuf> {
    PACKAGES.dir()
}

/// `npm install` of the pinned schema packages into the cache.
pub fn install(step: &Step) -> Result<PathBuf> {
    PACKAGES.install(step)
}

/// Validates every Istio object in `files`; Ok with node's output when all pass, Err with it
/// when any fails (or none was found).
pub fn validate(files: &[PathBuf]) -> Result<String> {
    let script = PACKAGES.script("validate.mjs")?;
    let dir = PACKAGES.dir()?;
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
