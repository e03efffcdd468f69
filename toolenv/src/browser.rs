//! What the browser sign-in test runs for real: Debian's headless Chromium with its
//! ChromeDriver (WebDriver), and a certified OpenID provider (npm `oidc-provider`, run by
//! `oidc-provider/provider.mjs`) standing in for Google.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::progress::Step;

/// Debian's packages: `/usr/bin/chromium` and `/usr/bin/chromedriver`.
pub const PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];

/// `(chromium, chromedriver)`, or an error naming the command that installs them.
pub fn chromium() -> Result<(PathBuf, PathBuf)> {
    let browser = PathBuf::from("/usr/bin/chromium");
    let driver = PathBuf::from("/usr/bin/chromedriver");
    if crate::apt::is_executable(&browser) && crate::apt::is_executable(&driver) {
        return Ok((browser, driver));
    }
    bail!("chromium and chromedriver not found; install them with `cargo xtask setup` (Debian's `chromium` and `chromium-driver`)")
}

pub fn install_chromium() -> Result<()> {
    crate::apt::ensure(&PACKAGES)
}

fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc-provider")
}

fn cached() -> PathBuf {
    crate::cache_dir().join("oidc-provider")
}

fn installed(dir: &Path) -> bool {
    dir.join("node_modules/oidc-provider").is_dir()
        && crate::same_file(&sources().join("package.json"), &dir.join("package.json"))
}

/// The provider's script, run with `node` from the install directory (ES modules resolve
/// imports beside the script); never installs.
pub fn oidc_provider() -> Result<PathBuf> {
    let dir = cached();
    if !installed(&dir) {
        bail!(
            "npm's oidc-provider is not installed in {}: run `cargo xtask setup`",
            dir.display()
        );
    }
    let script = dir.join("provider.mjs");
    let source = sources().join("provider.mjs");
    if !crate::same_file(&source, &script) {
        let _lock = crate::lock(&dir)?;
        crate::install_file(&source, &script, 0o644)?;
    }
    Ok(script)
}

/// `npm install` of the pinned `oidc-provider` into the cache (Debian's nodejs and npm when
/// missing).
pub fn install_oidc_provider(step: &Step) -> Result<()> {
    let dest = cached();
    let _lock = crate::lock(&dest)?;
    if installed(&dest) {
        return Ok(());
    }
    if !crate::apt::on_path("npm") {
        crate::apt::ensure(&["nodejs", "npm"])?;
    }
    step.say("npm install oidc-provider");
    std::fs::copy(sources().join("package.json"), dest.join("package.json"))?;
    crate::run(
        std::process::Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dest),
    )
    .map(drop)
}
