//! The .deb and the tarball, installed and removed for real: dpkg runs the
//! maintainer scripts (group, CA, unit), the installed agent starts with
//! only the unit's capabilities, and a purge leaves nothing behind.
//!
//! All of it happens in a scratch root: an overlay of the host's `/` in a
//! private mount namespace, its writes on a tmpfs, with a private bpffs at
//! /sys/fs/bpf. dpkg's database, /etc/group, /etc/modelgate and the pins of
//! the host are never touched, and everything vanishes with the namespace,
//! also when the test fails. PID 1 here is not systemd, so the postinst
//! must enable the unit without starting it, and say so.

#[path = "../../packaging/layout.rs"]
#[allow(
    dead_code,
    reason = "the test checks files and names, not descriptions"
)]
mod layout;

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use modelgate_tests::{TestCgroup, require_root};

/// The packages `cargo xtask test` built from the debug binary.
fn package(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run `cargo xtask test`, which builds the packages first")
    });
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A private mount namespace holding an overlay of `/`, kept alive by a
/// sleeping process; commands enter it with nsenter and chroot.
struct Scratch {
    holder: Child,
    /// The overlay's mount point, inside the namespace.
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        // --propagation private: none of these mounts reaches the host.
        let script = r#"
            set -eu
            d=$1
            mount -t tmpfs scratch "$d"
            mkdir "$d/upper" "$d/work" "$d/root"
            mount -t overlay overlay -o "lowerdir=/,upperdir=$d/upper,workdir=$d/work" "$d/root"
            for fs in proc sys dev; do mount --rbind "/$fs" "$d/root/$fs"; done
            # Pins of an agent started or removed in here stay in here.
            mount -t bpf bpf "$d/root/sys/fs/bpf"
            # An agent run on the host (the README's command) leaves its
            # state, and its socket directory (/run is on the root
            # filesystem on these machines); a fresh host has neither.
            shift
            for p in "$@"; do rm -rf "$d/root$p"; done
            echo ready
            exec sleep infinity
        "#;
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(dir.path())
            .args([layout::CONFIG_DIR, layout::STATE_DIR, layout::RUNTIME_DIR])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) runs");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "setting up the scratch root (overlay of / in a mount namespace) failed"
        );
        Scratch {
            holder,
            root,
            _dir: dir,
        }
    }

    /// `path` of the scratch root, as this process can reach it.
    fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.root.strip_prefix("/").unwrap())
            .join(path.trim_start_matches('/'))
    }

    /// A command run as root inside the scratch root.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "--", "chroot"])
            .arg(&self.root)
            .arg(program)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
        cmd
    }

    /// Runs a shell command inside; returns its output, asserting success.
    fn sh(&self, script: &str) -> String {
        let out = self.command("sh").args(["-c", script]).output().unwrap();
        let text = text(&out);
        assert!(out.status.success(), "`{script}` failed:\n{text}");
        text
    }

    fn group(&self, name: &str) -> Option<u32> {
        let groups = fs::read_to_string(self.path("/etc/group")).unwrap();
        groups.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| fields[2].parse().unwrap())
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The last process in the namespace: the overlay, the tmpfs and
        // the private bpffs go with it.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn deb_installs_configures_runs_and_purges_cleanly() {
    require_root();
    let deb = package("MODELGATE_DEB");

    // The package itself: control fields, conffiles, file modes and owners.
    let info = text(
        &Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .output()
            .unwrap(),
    );
    for field in [
        "Package: modelgate",
        "Depends: ",
        "libc6 (>= 2.",
        "Maintainer: ",
        "Description: ",
    ] {
        assert!(info.contains(field), "control lacks `{field}`:\n{info}");
    }
    let conffiles = text(
        &Command::new("dpkg-deb")
            .args(["--info"])
            .arg(&deb)
            .arg("conffiles")
            .output()
            .unwrap(),
    );
    let expected: Vec<&str> = layout::FILES
        .iter()
        .filter(|f| f.conffile)
        .map(|f| f.dest)
        .collect();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        expected,
        "conffiles must be exactly the /etc files"
    );
    assert!(expected.contains(&"/etc/modelgate/agent.yaml"));
    assert!(expected.contains(&"/etc/modelgate/policies/policy.yaml"));
    let contents = text(
        &Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .unwrap(),
    );
    for file in layout::FILES {
        let permissions = format!("-{}", rwx(file.mode));
        let line = contents
            .lines()
            .find(|l| l.ends_with(&format!(".{}", file.dest)))
            .unwrap_or_else(|| panic!("{} is not in the package:\n{contents}", file.dest));
        assert!(
            line.starts_with(&format!("{permissions} root/root")),
            "{}: expected {permissions} root/root, got {line}",
            file.dest
        );
    }

    let scratch = Scratch::new();
    assert!(
        scratch.group(layout::GROUP).is_none(),
        "the scratch root starts without the group (is modelgate installed on this host?)"
    );
    fs::copy(&deb, scratch.path("/tmp/modelgate.deb")).unwrap();

    // Install: postinst creates the group and the CA, enables the unit,
    // and does not start it, since systemd is not running.
    let installed = scratch.sh("dpkg -i /tmp/modelgate.deb 2>&1");
    assert!(
        installed.contains("systemd is not running here") && installed.contains("not started"),
        "the postinst must say it did not start the unit:\n{installed}"
    );
    assert!(
        !scratch.path("/run/modelgate").exists(),
        "no agent may have started: /run/modelgate exists"
    );
    let status = scratch.sh("dpkg -s modelgate");
    assert!(status.contains("Status: install ok installed"), "{status}");
    for file in layout::FILES {
        let path = scratch.path(file.dest);
        assert_eq!(mode(&path), file.mode, "mode of {}", file.dest);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "{} owned by root",
            file.dest
        );
    }
    let gid = scratch
        .group(layout::GROUP)
        .expect("the postinst creates the group modelgate");
    assert!(gid < 1000, "modelgate is a system group, got gid {gid}");
    assert_eq!(mode(&scratch.path(layout::STATE_DIR)), 0o700);
    assert_eq!(
        mode(&scratch.path("/var/lib/modelgate/ca-key.pem")),
        0o600,
        "the CA key must be 0600"
    );
    assert!(
        fs::read_to_string(scratch.path("/var/lib/modelgate/ca.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        fs::symlink_metadata(
            scratch.path("/etc/systemd/system/multi-user.target.wants/modelgate.service")
        )
        .is_ok(),
        "the postinst enables the unit"
    );
    // The installed unit is valid for this systemd (the binary exists now).
    scratch.sh("systemd-analyze verify /lib/systemd/system/modelgate.service");
    let plan = scratch.sh("modelgate install --dry-run");
    for file in layout::FILES {
        assert!(plan.contains(file.dest), "dry run misses {}", file.dest);
    }

    // The installed agent, with exactly the unit's capabilities, attaches,
    // serves, and gives its control socket to the group.
    let unit = fs::read_to_string(scratch.path("/lib/systemd/system/modelgate.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds the capabilities")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let cgroup = TestCgroup::new("package");
    let mut agent = scratch
        .command("setpriv")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .args([
            "--",
            "/usr/bin/modelgate",
            "--state-dir",
            "/tmp/agent-state",
            "run",
            "--proxy-port",
            "0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--cgroup",
        ])
        .arg(&cgroup.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = scratch.path("/tmp/agent-state/control.sock");
    let start = Instant::now();
    while !socket.exists() {
        if let Some(status) = agent.try_wait().unwrap() {
            let mut log = String::new();
            std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut log).unwrap();
            panic!(
                "the installed agent exited ({status}) with the unit's capabilities ({caps:?}):\n{log}"
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no control socket after 30 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let meta = fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), gid, "the socket belongs to group modelgate");
    let status = scratch.sh("modelgate --state-dir /tmp/agent-state status");
    assert!(status.contains("modelgate"), "{status}");
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let stopped = agent.wait().unwrap();
    assert!(
        stopped.success(),
        "the agent stops cleanly on SIGTERM: {stopped}"
    );

    // Purge: prerm, postrm; nothing of the package is left.
    let purged = scratch.sh("dpkg --purge modelgate 2>&1");
    for path in [
        layout::BINARY,
        "/lib/systemd/system/modelgate.service",
        layout::CONFIG_DIR,
        layout::STATE_DIR,
        "/etc/systemd/system/multi-user.target.wants/modelgate.service",
        "/usr/share/doc/modelgate",
    ] {
        assert!(
            fs::symlink_metadata(scratch.path(path)).is_err(),
            "{path} is left after purge:\n{purged}"
        );
    }
    assert!(
        scratch.group(layout::GROUP).is_none(),
        "the group is removed on purge:\n{purged}"
    );
    let after = text(
        &scratch
            .command("dpkg")
            .args(["-s", "modelgate"])
            .output()
            .unwrap(),
    );
    assert!(
        !after.contains("install ok installed"),
        "still installed:\n{after}"
    );
}

#[test]
fn tarball_install_sh_dry_run_install_and_purge() {
    require_root();
    let tarball = package("MODELGATE_TARBALL");
    let scratch = Scratch::new();
    fs::copy(&tarball, scratch.path("/tmp/modelgate.tar.gz")).unwrap();
    scratch.sh("mkdir /tmp/t && tar -xzf /tmp/modelgate.tar.gz -C /tmp/t");
    let dir = "/tmp/t/modelgate-*";

    // --dry-run prints every step and changes nothing.
    let plan = scratch.sh(&format!("cd {dir} && ./install.sh --dry-run"));
    for file in layout::FILES {
        assert!(
            plan.contains(&format!(" {}\n", file.dest)),
            "dry run misses {}:\n{plan}",
            file.dest
        );
    }
    assert!(plan.contains("+ groupadd --system modelgate"), "{plan}");
    assert!(plan.contains("modelgate ca export"), "{plan}");
    assert!(
        plan.contains("+ systemctl enable modelgate.service"),
        "{plan}"
    );
    assert!(!scratch.path(layout::BINARY).exists(), "dry run installed");
    assert!(
        scratch.group(layout::GROUP).is_none(),
        "dry run made the group"
    );

    let installed = scratch.sh(&format!("cd {dir} && ./install.sh"));
    for file in layout::FILES {
        assert_eq!(mode(&scratch.path(file.dest)), file.mode, "{}", file.dest);
    }
    assert!(scratch.group(layout::GROUP).is_some(), "{installed}");
    assert_eq!(mode(&scratch.path("/var/lib/modelgate/ca-key.pem")), 0o600);
    assert!(
        installed.contains("systemd is not running"),
        "install.sh must say it did not start the unit:\n{installed}"
    );

    // An edited configuration survives a reinstall; ours goes beside it.
    fs::write(
        scratch.path("/etc/modelgate/agent.yaml"),
        "proxy_port: 15444\n",
    )
    .unwrap();
    let again = scratch.sh(&format!("cd {dir} && ./install.sh"));
    assert!(
        again.contains("kept your /etc/modelgate/agent.yaml"),
        "{again}"
    );
    assert_eq!(
        fs::read_to_string(scratch.path("/etc/modelgate/agent.yaml")).unwrap(),
        "proxy_port: 15444\n"
    );
    assert!(scratch.path("/etc/modelgate/agent.yaml.new").exists());

    let removed = scratch.sh(&format!("cd {dir} && ./install.sh --uninstall --purge"));
    for path in [
        layout::BINARY,
        "/lib/systemd/system/modelgate.service",
        layout::CONFIG_DIR,
        layout::STATE_DIR,
        "/usr/share/doc/modelgate",
    ] {
        assert!(
            fs::symlink_metadata(scratch.path(path)).is_err(),
            "{path} is left after --uninstall --purge:\n{removed}"
        );
    }
    assert!(scratch.group(layout::GROUP).is_none(), "{removed}");
}

/// `ls -l` letters of a file mode, e.g. 0o755 → rwxr-xr-x.
fn rwx(mode: u32) -> String {
    (0..9)
        .map(|bit| {
            let set = mode & (0o400 >> bit) != 0;
            match (set, bit % 3) {
                (false, _) => '-',
                (true, 0) => 'r',
                (true, 1) => 'w',
                (true, _) => 'x',
            }
        })
        .collect()
}
