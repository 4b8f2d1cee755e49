//! What an executable is, not where it is: a SHA-256 of its bytes,
//! computed once per file version, whether it runs from a memfd or a
//! deleted file, and the program a dynamic loader run directly loads.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_common::ExeFile;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Files larger than this are not hashed (their digest stays unknown).
pub const MAX_HASHED_BYTES: u64 = 512 << 20;
/// File versions remembered; past it the cache starts over.
const MAX_CACHED: usize = 65_536;

/// Identity facts beyond the path, carried in the identity record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExeFacts {
    /// Lower-case hex SHA-256 of the executable's bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_sha256: Option<String>,
    /// Ran from a memfd or from a file deleted since: nothing on disk
    /// names what it is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub anonymous_exec: bool,
    /// The dynamic loader the program was run with directly
    /// (`/lib64/ld-linux-x86-64.so.2 /usr/bin/curl`); `exe` is the program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_loader: Option<String>,
}

/// The kernel's `s_dev` encoding (major << 20 | minor) of a stat `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    (major << 20) | (minor & 0xf_ffff)
}

/// The `ExeFile` of an open file, as the kernel would read it.
pub fn exe_file(meta: &std::fs::Metadata) -> ExeFile {
    ExeFile {
        dev: kernel_dev(meta.dev()),
        nlink: meta.nlink() as u32,
        ino: meta.ino(),
        ctime_sec: meta.ctime(),
        ctime_nsec: meta.ctime_nsec() as u32,
        _pad: 0,
        size: meta.size() as i64,
    }
}

/// The same file, the same version: everything but the link count.
pub fn same_version(a: &ExeFile, b: &ExeFile) -> bool {
    a.dev == b.dev
        && a.ino == b.ino
        && a.ctime_sec == b.ctime_sec
        && a.ctime_nsec == b.ctime_nsec
        && a.size == b.size
}

pub fn sha256_hex(file: &mut File) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digests by file version: each version is read once.
#[derive(Debug, Default)]
pub struct DigestCache {
    by_file: HashMap<(u32, u64), (ExeFile, Option<String>)>,
    pub hashed: u64,
}

impl DigestCache {
    /// The digest of the file open at `path` if it is the version `want`
    /// (any version when `want` is None); None when it cannot be read, is
    /// another file, or is too large.
    pub fn digest(&mut self, path: &Path, want: Option<&ExeFile>) -> Option<(ExeFile, String)> {
        self.digest_if(path, want, |_| true)
    }

    /// `digest`, for files whose size `worth` accepts: a copy has its
    /// original's size, so a file of another size cannot match a rule's
    /// digest and is not read.
    pub fn digest_if(
        &mut self,
        path: &Path,
        want: Option<&ExeFile>,
        worth: impl Fn(i64) -> bool,
    ) -> Option<(ExeFile, String)> {
        let mut file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let found = exe_file(&meta);
        if !worth(found.size) {
            return None;
        }
        // Size and ctime, not device and inode: on overlayfs stat reports
        // the layer's device and inode, the kernel the overlay's.
        if let Some(want) = want
            && want.ino != 0
            && (want.size != found.size
                || want.ctime_sec != found.ctime_sec
                || want.ctime_nsec != found.ctime_nsec)
        {
            return None;
        }
        let key = (found.dev, found.ino);
        if let Some((version, digest)) = self.by_file.get(&key)
            && same_version(version, &found)
        {
            return digest.clone().map(|d| (found, d));
        }
        let digest = (meta.size() <= MAX_HASHED_BYTES)
            .then(|| sha256_hex(&mut file).ok())
            .flatten();
        self.hashed += 1;
        if self.by_file.len() >= MAX_CACHED {
            self.by_file.clear();
        }
        self.by_file.insert(key, (found, digest.clone()));
        digest.map(|d| (found, d))
    }

    /// Every file version hashed so far, with its digest.
    pub fn files(&self) -> impl Iterator<Item = (&ExeFile, &str)> {
        self.by_file
            .values()
            .filter_map(|(file, digest)| digest.as_deref().map(|d| (file, d)))
    }
}

/// A dynamic loader, by file name: `ld-linux-x86-64.so.2`, `ld-linux.so.2`,
/// `ld-musl-x86_64.so.1`, `ld.so`, `ld-2.31.so`.
pub fn is_loader(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == "ld.so" || (name.starts_with("ld-") && name.contains(".so"))
}

/// glibc ld.so options that take a value.
const LOADER_VALUE_OPTIONS: [&str; 7] = [
    "--library-path",
    "--inhibit-rpath",
    "--audit",
    "--preload",
    "--argv0",
    "--glibc-hwcaps-prepend",
    "--glibc-hwcaps-mask",
];

/// The program a loader run directly loads: its first argument after the
/// loader's own options. `args[0]` is the loader.
pub fn loader_program(args: &[String]) -> Option<&str> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--" {
            return rest.next().map(String::as_str);
        }
        if !arg.starts_with("--") {
            return Some(arg);
        }
        if LOADER_VALUE_OPTIONS.contains(&arg.as_str()) {
            rest.next();
        }
    }
    None
}

/// Where the process's view of `program` is, from the host: relative
/// names are relative to its working directory (the loader does not
/// search PATH for a name with a slash; without one it searches library
/// paths, which we do not follow).
pub fn program_path(tgid: u32, program: &str) -> PathBuf {
    if program.starts_with('/') {
        PathBuf::from(format!("/proc/{tgid}/root{program}"))
    } else {
        PathBuf::from(format!("/proc/{tgid}/cwd/{program}"))
    }
}

/// A memfd (`/memfd:name (deleted)`) or a deleted file, from the
/// kernel's link count or `/proc/PID/exe`'s text.
pub fn is_anonymous(file: &ExeFile, proc_exe: Option<&str>) -> bool {
    (file.ino != 0 && file.nlink == 0)
        || proc_exe.is_some_and(|exe| exe.starts_with("/memfd:") || exe.ends_with(" (deleted)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_program_a_loader_loads_is_found_past_its_options() {
        let cases: [(&[&str], Option<&str>); 5] = [
            (
                &["/lib64/ld-linux-x86-64.so.2", "/usr/bin/curl", "-s"],
                Some("/usr/bin/curl"),
            ),
            (
                &[
                    "ld.so",
                    "--library-path",
                    "/x",
                    "--inhibit-cache",
                    "./curl",
                    "url",
                ],
                Some("./curl"),
            ),
            (&["ld.so", "--argv0", "vim", "--", "/tmp/c"], Some("/tmp/c")),
            (&["ld.so", "--list"], None),
            (&["ld.so"], None),
        ];
        for (argv, want) in cases {
            assert_eq!(loader_program(&args(argv)), want, "{argv:?}");
        }
    }

    #[test]
    fn loaders_are_told_from_libraries_by_name() {
        assert!(is_loader("/lib64/ld-linux-x86-64.so.2"));
        assert!(is_loader("/lib/ld-musl-x86_64.so.1"));
        assert!(is_loader("/usr/lib/ld.so"));
        assert!(!is_loader("/usr/bin/ld"));
        assert!(!is_loader("/usr/bin/ldd"));
        assert!(!is_loader("/usr/lib/libc.so.6"));
    }

    #[test]
    fn anonymous_executables_are_recognised() {
        let gone = ExeFile {
            ino: 5,
            nlink: 0,
            ..ExeFile::default()
        };
        assert!(is_anonymous(&gone, None));
        assert!(is_anonymous(
            &ExeFile::default(),
            Some("/memfd:x (deleted)")
        ));
        assert!(is_anonymous(&ExeFile::default(), Some("/tmp/a (deleted)")));
        assert!(!is_anonymous(&ExeFile::default(), Some("/usr/bin/curl")));
    }

    #[test]
    fn a_copy_has_the_digest_of_its_original_and_a_new_version_is_rehashed() {
        let dir = std::env::temp_dir().join(format!("mg-exe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, b"same bytes").unwrap();
        std::fs::copy(&a, &b).unwrap();
        let mut cache = DigestCache::default();
        let (_, da) = cache.digest(&a, None).expect("digest a");
        let (_, db) = cache.digest(&b, None).expect("digest b");
        assert_eq!(da, db, "a copy has the same digest");
        assert_eq!(cache.hashed, 2);
        cache.digest(&a, None).unwrap();
        assert_eq!(cache.hashed, 2, "an unchanged version is not read again");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&a, b"other bytes").unwrap();
        let (_, da2) = cache.digest(&a, None).unwrap();
        assert_ne!(da, da2, "a rewritten file is hashed again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
