//! Which kubectl talks to the control plane: one within a minor version of the server, which is the
//! skew kubectl supports (and warns about beyond).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// kubectl within one minor version of `version`'s (what kubectl supports).
pub fn find(version: &str) -> Result<PathBuf> {
    let minor = minor_of(version).with_context(|| format!("{version:?} is not v1.X.Y"))?;
    let names = [
        format!("kubectl.1.{minor}"),
        format!("kubectl.1.{}", minor - 1),
        format!("kubectl.1.{}", minor + 1),
        "kubectl".to_string(),
    ];
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    // Some installs (the Google Cloud SDK's) keep the versioned kubectls beside the real `kubectl`,
    // which PATH reaches only through a symlink.
    let beside: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| {
            std::fs::canonicalize(d.join("kubectl"))
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        })
        .collect();
    dirs.extend(beside);
    let mut tried = Vec::new();
    let mut seen = HashSet::new();
    for name in &names {
        for dir in &dirs {
            let path = dir.join(name);
            if !path.is_file() || !seen.insert(std::fs::canonicalize(&path).unwrap_or(path.clone())) {
                continue;
            }
            match client_minor(&path) {
                Some(m) if m.abs_diff(minor) <= 1 => return Ok(path),
                m => tried.push(format!("{} (client minor {m:?})", path.display())),
            }
        }
    }
    bail!(
        "no kubectl within one minor version of {version} (tried: {}); pass --kubectl",
        if tried.is_empty() {
            "none found".to_string()
        } else {
            tried.join(", ")
        }
    )
}

fn minor_of(version: &str) -> Option<u32> {
    version.strip_prefix("v1.")?.split('.').next()?.parse().ok()
}

fn client_minor(kubectl: &Path) -> Option<u32> {
    let out = Command::new(kubectl)
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["clientVersion"]["minor"]
        .as_str()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions() {
        assert_eq!(minor_of("v1.34.4"), Some(34));
        assert_eq!(minor_of("1.34.4"), None);
    }
}
