//! `cargo xtask bootstrap`: installs what the agent's build script needs to
//! compile the kernel programs: the nightly toolchain's `rust-src` and a
//! `bpf-linker` built against that nightly's own LLVM. Idempotent: each piece
//! that is already there is only reported.

use std::{fs, os::unix::fs::symlink, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{self, nightly, run_checked, stdout_of};

const INSTALL_NIGHTLY: &str = "rustup toolchain install nightly --component rust-src";

pub fn run() -> Result<()> {
    if util::which("rustup").is_none() {
        bail!(
            "rustup is not on PATH: the kernel programs are built with the nightly toolchain \
             through rustup.\nhint: install rustup (https://rustup.rs), then run `{INSTALL_NIGHTLY}`"
        );
    }
    let version = ensure_nightly()?;
    ensure_rust_src()?;
    ensure_bpf_linker(&version)
}

/// Returns `rustc -vV` of the nightly toolchain.
fn ensure_nightly() -> Result<String> {
    let listed = stdout_of(Command::new("rustup").args(["toolchain", "list"]))
        .context("`rustup toolchain list` failed")?;
    if !has_nightly(&listed) {
        println!("bootstrap: nightly toolchain missing; trying `{INSTALL_NIGHTLY}`...");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--component", "rust-src"]);
        run_checked(
            &mut install,
            "installing the nightly toolchain",
            &format!(
                "the kernel programs need the nightly toolchain; install it with \
                 `{INSTALL_NIGHTLY}` (this machine may not reach the Rust release servers), \
                 then run `cargo xtask bootstrap` again"
            ),
        )?;
    }
    let version = stdout_of(nightly("rustc").arg("-vV")).with_context(|| {
        format!(
            "`rustup run nightly rustc -vV` failed: the nightly toolchain is missing or broken\n\
             hint: run `{INSTALL_NIGHTLY}`"
        )
    })?;
    let release = version
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .unwrap_or("unknown release");
    println!("bootstrap: nightly toolchain present ({release})");
    Ok(version)
}

fn ensure_rust_src() -> Result<()> {
    let installed = stdout_of(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    if has_component(&installed, "rust-src") {
        println!("bootstrap: rust-src present");
        return Ok(());
    }
    println!("bootstrap: installing rust-src for nightly...");
    run_checked(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "installing the nightly rust-src component",
        "run `rustup component add rust-src --toolchain nightly` by hand",
    )
}

/// Checks bpf-linker the way the build uses it: aya-build runs the eBPF
/// build under `rustup run nightly`, which also puts the nightly's libLLVM on
/// the library path.
fn bpf_linker_version() -> Option<String> {
    stdout_of(nightly("bpf-linker").arg("--version")).map(|v| v.trim().to_owned())
}

fn ensure_bpf_linker(rustc_version: &str) -> Result<()> {
    if let Some(version) = bpf_linker_version() {
        println!("bootstrap: bpf-linker present ({version})");
        return Ok(());
    }
    let major = parse_llvm_major(rustc_version).with_context(|| {
        format!("no `LLVM version: N.N.N` line in `rustc +nightly -vV`:\n{rustc_version}")
    })?;
    let sysroot = stdout_of(nightly("rustc").args(["--print", "sysroot"]))
        .context("`rustup run nightly rustc --print sysroot` failed")?;
    let llvm_dir = Path::new(sysroot.trim()).join("lib");
    let names: Vec<String> = fs::read_dir(&llvm_dir)
        .with_context(|| format!("listing {}", llvm_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let lib = pick_libllvm(&names).with_context(|| {
        format!(
            "no libLLVM.so.* in {}: bpf-linker is built against the nightly's own LLVM\n\
             hint: reinstall the nightly with `{INSTALL_NIGHTLY}`",
            llvm_dir.display()
        )
    })?;
    let prefix = util::xtask_dir().join("llvm-prefix");
    link_llvm_prefix(&prefix, &llvm_dir.join(lib))?;

    println!("bootstrap: installing bpf-linker (about a minute)...");
    let feature = format!("llvm-{major}");
    let mut install = util::cargo();
    install
        .args(["install", "bpf-linker", "--version", "^0.13", "--force"])
        .args(["--no-default-features", "--features", &feature])
        .env("LLVM_PREFIX", &prefix);
    run_checked(
        &mut install,
        "building bpf-linker",
        "it needs crates.io and a C/C++ toolchain (apt-get install -y build-essential); \
         then run `cargo xtask bootstrap` again",
    )?;
    match bpf_linker_version() {
        Some(version) => {
            println!("bootstrap: bpf-linker installed ({version})");
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but `rustup run nightly bpf-linker --version` fails\n\
             hint: make sure cargo's bin directory (~/.cargo/bin) is on PATH"
        ),
    }
}

/// Makes `prefix/lib` hold `libLLVM.so` (what the build links against) and a
/// link under the library's own name (what the installed binary loads, via
/// the RUNPATH the build records), both pointing at `lib`.
fn link_llvm_prefix(prefix: &Path, lib: &Path) -> Result<()> {
    let dir = prefix.join("lib");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let own_name = lib.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(own_name)] {
        let link = dir.join(name);
        symlink(lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), lib.display()))?;
    }
    Ok(())
}

/// `true` when `rustup toolchain list` shows the `nightly` channel (not
/// only a dated nightly, which `rustup run nightly` would not use).
fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name == "nightly"
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
}

/// `true` when `rustup component list --installed` names `component`
/// (with or without a target suffix).
fn has_component(list: &str, component: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|name| {
            name.strip_prefix(component)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
        })
}

/// The LLVM major version from `rustc -vV` (`LLVM version: 22.1.4` → 22).
fn parse_llvm_major(rustc_version: &str) -> Option<u32> {
    rustc_version
        .lines()
        .find_map(|l| l.trim().strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The shared libLLVM among a toolchain's `lib/` entries: `libLLVM.so.*`
/// (e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`), else `libLLVM-*.so`.
fn pick_libllvm(names: &[String]) -> Option<&str> {
    let pick =
        |pred: &dyn Fn(&str) -> bool| names.iter().map(String::as_str).filter(|n| pred(n)).max();
    pick(&|n| n.strip_prefix("libLLVM.so.").is_some_and(|v| !v.is_empty()))
        .or_else(|| pick(&|n| n.starts_with("libLLVM-") && n.ends_with(".so")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIGHTLY_VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\n\
        binary: rustc\n\
        commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\n\
        commit-date: 2026-05-19\n\
        host: x86_64-unknown-linux-gnu\n\
        release: 1.97.0-nightly\n\
        LLVM version: 22.1.4\n";

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn llvm_major_from_rustc_vv() {
        assert_eq!(parse_llvm_major(NIGHTLY_VV), Some(22));
        assert_eq!(parse_llvm_major("LLVM version: 9.0.1"), Some(9));
        assert_eq!(parse_llvm_major("rustc 1.0\nbinary: rustc\n"), None);
        assert_eq!(parse_llvm_major("LLVM version: x.y"), None);
    }

    #[test]
    fn picks_the_versioned_libllvm() {
        let listing = names(&[
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver-b5a965480ee51f9a.so",
            "rustlib",
        ]);
        assert_eq!(
            pick_libllvm(&listing),
            Some("libLLVM.so.22.1-rust-1.97.0-nightly")
        );
    }

    #[test]
    fn falls_back_to_the_dashed_libllvm() {
        let listing = names(&["libLLVM-18-rust-1.80.0-nightly.so", "libLLVM.so", "rustlib"]);
        assert_eq!(
            pick_libllvm(&listing),
            Some("libLLVM-18-rust-1.80.0-nightly.so")
        );
    }

    #[test]
    fn no_libllvm() {
        assert_eq!(
            pick_libllvm(&names(&["librustc_driver-x.so", "rustlib"])),
            None
        );
        assert_eq!(pick_libllvm(&[]), None);
    }

    #[test]
    fn nightly_in_toolchain_list() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n\
                    1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(list));
        assert!(has_nightly("nightly\n"));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));
        assert!(!has_nightly(
            "nightly-2026-05-19-x86_64-unknown-linux-gnu\n"
        ));
    }

    #[test]
    fn rust_src_in_component_list() {
        let list = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(list, "rust-src"));
        assert!(!has_component(
            "cargo-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
        assert!(has_component(
            "rust-src-x86_64-unknown-linux-gnu (installed)\n",
            "rust-src"
        ));
    }
}
