//! What the browser sign-in test runs for real: Debian's headless Chromium with its
//! ChromeDriver (WebDriver), and a certified OpenID provider (npm `oidc-provider`, run by
//! `oidc-provider/provider.mjs`) standing in for Google.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::npm::NpmPackages;
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

/// The provider and its npm manifest, kept in this crate (`oidc-provider/`).
const PROVIDER: NpmPackages = NpmPackages {
    name: "oidc-provider",
    installed_marker: "oidc-provider",
};

/// The provider's script, run with `node` from its directory; never installs.
pub fn oidc_provider() -> Result<PathBuf> {
    PROVIDER.script("provider.mjs")
}

/// `npm install` of the pinned `oidc-provider` into the cache.
pub fn install_oidc_provider(step: &Step) -> Result<()> {
    PROVIDER.install(step).map(drop)
}
