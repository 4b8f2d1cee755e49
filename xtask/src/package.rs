//! `cargo xtask package`: the .deb and the tarball (with install.sh), both
//! staged from the one description in packaging/layout.rs that
//! `modelgate install --dry-run` prints.
//!
//! The .deb is built with `dpkg-deb --root-owner-group` from a staged tree:
//! no cargo-deb, nothing to install. `cargo xtask test` packages the debug
//! binary the same way (debug info stripped, light compression), so the
//! package test needs no release build.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{
    build_cmd,
    layout::{self, Source},
    util,
};

#[derive(Debug, Args)]
pub struct PackageArgs {
    /// Package the debug build instead of a release build (what the tests
    /// install): same layout, debug info stripped, light compression;
    /// written under target/xtask/package-debug.
    #[arg(long)]
    debug: bool,
}

/// What one packaging run produced.
pub struct Packages {
    pub deb: PathBuf,
    pub tarball: PathBuf,
}

pub fn run(args: &PackageArgs) -> Result<()> {
    let release = !args.debug;
    let bin = build_cmd::build(release)?;
    let packages = package(&bin, release)?;
    println!("package: {}", packages.deb.display());
    println!("package: {}", packages.tarball.display());
    Ok(())
}

/// Where the packages of a profile go.
pub fn out_dir(release: bool) -> PathBuf {
    if release {
        util::target_dir().join("package")
    } else {
        util::xtask_dir().join("package-debug")
    }
}

/// Packages `bin` (a build of the agent) into `out_dir(release)`.
pub fn package(bin: &Path, release: bool) -> Result<Packages> {
    let root = util::workspace_root();
    check_policies_listed(&root)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = debian_arch()?;
    let out = out_dir(release);
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let deb_root = stage.join("deb");
    let tar_name = format!("{}-{version}-{arch}", layout::PACKAGE);
    let tar_dir = stage.join(&tar_name);
    let tar_root = tar_dir.join("root");

    for file in layout::FILES {
        let staged = place(&deb_root, file.dest);
        match file.source {
            Source::Binary if release => copy(bin, &staged)?,
            // Debug info is most of a debug build's size and nothing the
            // installed agent uses.
            Source::Binary => util::run_checked(
                Command::new("objcopy")
                    .arg("--strip-debug")
                    .arg(bin)
                    .arg(&staged),
                "stripping the debug binary for the test package",
                "install binutils (apt-get install -y binutils)",
            )?,
            Source::Repo(path) => copy(&root.join(path), &staged)?,
        }
        set_mode(&staged, file.mode)?;
        let in_tar = place(&tar_root, file.dest);
        fs::hard_link(&staged, &in_tar)
            .or_else(|_| fs::copy(&staged, &in_tar).map(|_| ()))
            .with_context(|| format!("staging {}", in_tar.display()))?;
    }

    let binary = place(&deb_root, layout::BINARY);
    let control = deb_root.join("DEBIAN");
    fs::create_dir_all(&control)?;
    write(
        &control.join("control"),
        &control_file(version, arch, &depends(&binary)?, &deb_root)?,
        0o644,
    )?;
    let conffiles: String = layout::FILES
        .iter()
        .filter(|f| f.conffile)
        .map(|f| format!("{}\n", f.dest))
        .collect();
    write(&control.join("conffiles"), &conffiles, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        let source = root.join("packaging/deb").join(script);
        copy(&source, &control.join(script))?;
        set_mode(&control.join(script), 0o755)?;
    }

    let deb = out.join(format!("{}_{version}_{arch}.deb", layout::PACKAGE));
    let mut dpkg = Command::new("dpkg-deb");
    dpkg.arg("--root-owner-group");
    // xz is what every dpkg reads; a test package only needs to be quick.
    if release {
        dpkg.arg("-Zxz");
    } else {
        dpkg.args(["-Zgzip", "-z1"]);
    }
    dpkg.arg("--build").arg(&deb_root).arg(&deb);
    util::run_checked(
        dpkg.stdout(std::process::Stdio::null()),
        "building the .deb",
        "dpkg-deb comes with dpkg (apt-get install -y dpkg); its message is above",
    )?;

    let install_sh = fs::read_to_string(root.join("packaging/install.sh"))
        .context("reading packaging/install.sh")?;
    write(
        &tar_dir.join("install.sh"),
        &install_sh.replace("@FILES@", &install_sh_files()),
        0o755,
    )?;
    let tarball = out.join(format!("{tar_name}.tar.gz"));
    let gzip = if release { "gzip -9" } else { "gzip -1" };
    util::run_checked(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--numeric-owner", "--sort=name"])
            .arg(format!("--use-compress-program={gzip}"))
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&stage)
            .arg(&tar_name),
        "building the tarball",
        "GNU tar and gzip are needed; their message is above",
    )?;
    Ok(Packages { deb, tarball })
}

/// `<root>/<dest>`, its directories created (0755).
fn place(root: &Path, dest: &str) -> PathBuf {
    let path = root.join(dest.trim_start_matches('/'));
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    path
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Every file under policies/ must be in the layout, so nothing the repo
/// ships is silently left out of the package.
fn check_policies_listed(root: &Path) -> Result<()> {
    let listed: Vec<&str> = layout::FILES
        .iter()
        .filter_map(|f| match f.source {
            Source::Repo(path) => Some(path),
            Source::Binary => None,
        })
        .collect();
    let mut missing = Vec::new();
    let mut stack = vec![root.join("policies")];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            if !listed.contains(&rel.as_str()) {
                missing.push(rel);
            }
        }
    }
    if !missing.is_empty() {
        missing.sort();
        bail!(
            "not in the package: {}; add each to FILES in packaging/layout.rs (where it is \
             installed and why), so the package and `modelgate install --dry-run` include it",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The Debian name of the architecture this xtask (and so the agent) was
/// built for.
fn debian_arch() -> Result<&'static str> {
    Ok(match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64el",
        "s390x" => "s390x",
        other => bail!("no Debian architecture name known for {other}; add it to debian_arch()"),
    })
}

/// The packages providing the shared libraries the binary links, from its
/// ELF NEEDED entries; libc6 with the newest GLIBC symbol version it uses.
fn depends(binary: &Path) -> Result<String> {
    let dynamic =
        util::stdout_of(Command::new("readelf").arg("-d").arg(binary)).with_context(|| {
            format!(
                "`readelf -d {}` failed; install binutils (apt-get install -y binutils)",
                binary.display()
            )
        })?;
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut depends = Vec::new();
    for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
        let Some(library) = line.split('[').nth(1).and_then(|l| l.strip_suffix(']')) else {
            continue;
        };
        let package = match library {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1"
            | "libutil.so.1" => match glibc_version(&bytes) {
                Some(version) => format!("libc6 (>= {version})"),
                None => "libc6".to_string(),
            },
            "libgcc_s.so.1" => "libgcc-s1".to_string(),
            l if l.starts_with("ld-linux") => continue,
            other => bail!(
                "the agent links {other}, which the xtask does not map to a Debian \
                 package; add it to depends() in xtask/src/package.rs"
            ),
        };
        if !depends.contains(&package) {
            depends.push(package);
        }
    }
    Ok(depends.join(", "))
}

/// The newest `GLIBC_x.y[.z]` symbol version named in the binary.
fn glibc_version(bytes: &[u8]) -> Option<String> {
    let marker = b"GLIBC_";
    let mut newest: Option<Vec<u32>> = None;
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(marker.len()).position(|w| w == marker) {
        let start = at + offset + marker.len();
        let end = bytes[start..]
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .map_or(bytes.len(), |n| start + n);
        let parsed: Option<Vec<u32>> = std::str::from_utf8(&bytes[start..end])
            .ok()
            .filter(|s| !s.is_empty() && !s.ends_with('.'))
            .map(|s| s.split('.').map_while(|p| p.parse().ok()).collect());
        if let Some(version) = parsed.filter(|v| v.len() >= 2)
            && newest.as_ref().is_none_or(|n| version > *n)
        {
            newest = Some(version);
        }
        at = end.max(start);
    }
    newest.map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>().join("."))
}

fn control_file(version: &str, arch: &str, depends: &str, root: &Path) -> Result<String> {
    let description: String = layout::DESCRIPTION
        .lines()
        .map(|line| format!(" {line}\n"))
        .collect();
    Ok(format!(
        "Package: {}\nVersion: {version}\nArchitecture: {arch}\nMaintainer: {}\n\
         Installed-Size: {}\nDepends: {depends}\nSection: admin\nPriority: optional\n\
         Homepage: {}\nDescription: {}\n{description}",
        layout::PACKAGE,
        layout::MAINTAINER,
        installed_size_kib(root)?,
        layout::HOMEPAGE,
        layout::SUMMARY,
    ))
}

/// Sum of the staged files' sizes in KiB, as dpkg shows it.
fn installed_size_kib(root: &Path) -> Result<u64> {
    let mut bytes = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    Ok(bytes.div_ceil(1024))
}

/// install.sh's file table: kind, mode, path.
fn install_sh_files() -> String {
    layout::FILES
        .iter()
        .map(|f| {
            let kind = match (f.source, f.conffile) {
                (_, true) => "conf",
                (Source::Binary, false) => "bin",
                (Source::Repo(_), false) => "file",
            };
            format!("{kind} {:04o} {}\n", f.mode, f.dest)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_version_is_the_newest_named() {
        let bytes = b"x\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0GLIBC_2.";
        assert_eq!(glibc_version(bytes).as_deref(), Some("2.34"));
        assert_eq!(glibc_version(b"none here"), None);
    }

    #[test]
    fn the_install_sh_table_marks_conffiles() {
        let table = install_sh_files();
        assert!(table.contains("bin 0755 /usr/bin/modelgate\n"), "{table}");
        assert!(
            table.contains("conf 0644 /etc/modelgate/agent.yaml\n"),
            "{table}"
        );
        assert!(table.contains("file 0644 /lib/systemd/system/modelgate.service\n"));
    }

    #[test]
    fn every_policy_file_is_packaged() {
        check_policies_listed(&util::workspace_root()).unwrap();
    }
}
