//! A policy's version: a digest of its files, so the same policy has the
//! same version on every host and `modelgate status` can show whether a
//! fleet runs what was rolled out.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// First 12 hex digits of SHA-256 over every YAML file under `dir` (path
/// relative to `dir`, then content), in path order. The policy's own test
/// cases (`tests/`) do not change what is enforced, so they are left out.
pub fn version(dir: &Path) -> String {
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files.sort();
    let mut hash = Sha256::new();
    for relative in files {
        let Ok(content) = std::fs::read(dir.join(&relative)) else {
            continue;
        };
        hash.update(relative.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update((content.len() as u64).to_le_bytes());
        hash.update(&content);
    }
    hash.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        if path.is_dir() {
            if relative != Path::new("tests") {
                collect(root, &path, out);
            }
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(relative.to_path_buf());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_with_content_and_names_but_not_with_tests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), "default_action: monitor\n").unwrap();
        let first = version(dir.path());
        assert_eq!(first.len(), 12);
        assert_eq!(first, version(dir.path()), "stable");
        std::fs::create_dir(dir.path().join("tests")).unwrap();
        std::fs::write(dir.path().join("tests/a.yaml"), "cases: []\n").unwrap();
        assert_eq!(first, version(dir.path()), "test cases are not policy");
        std::fs::create_dir(dir.path().join("policy.d")).unwrap();
        std::fs::write(dir.path().join("policy.d/x.yaml"), "rules: []\n").unwrap();
        let second = version(dir.path());
        assert_ne!(first, second);
        std::fs::rename(
            dir.path().join("policy.d/x.yaml"),
            dir.path().join("policy.d/y.yaml"),
        )
        .unwrap();
        assert_ne!(second, version(dir.path()));
    }
}
