//! A clone must work alone: no file in the repository may reach for a directory beside it
//! (such as a `shared` folder next to the checkout) for tools or scripts.

use std::path::{Path, PathBuf};

/// Directories that are built or downloaded, not written by us.
const SKIPPED: [&str; 3] = [".git", "target", "node_modules"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if !SKIPPED.iter().any(|s| name == *s) && !path.is_symlink() {
                files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_file_refers_to_a_sibling_shared_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Spelt in pieces so this file does not match itself.
    let sibling = ["..", "/shared"].concat();
    let mut all = Vec::new();
    files(&root, &mut all);
    assert!(
        all.len() > 100,
        "walked only {} files under {}",
        all.len(),
        root.display()
    );
    let offenders: Vec<String> = all
        .iter()
        .filter(|p| {
            std::fs::read(p).is_ok_and(|bytes| {
                bytes
                    .windows(sibling.len())
                    .any(|w| w == sibling.as_bytes())
            })
        })
        .map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "these files refer to {sibling}, which a user's clone does not have: {offenders:?}"
    );
}
