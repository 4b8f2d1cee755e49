//! Rule conditions and how they match an identity.

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;

use super::{Action, controls::Controls};
use crate::{
    catalog::{HostPattern, ProviderName},
    identity::cgroup_path::ContainerRuntime,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    /// For people reading the policy; accepted and kept, not interpreted.
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Match,
    pub action: Action,
    /// Request-level controls, applied by the proxy when this rule decides
    /// a request.
    #[serde(default)]
    pub controls: Controls,
}

impl Rule {
    /// Whether only the proxy can apply this rule (it looks inside
    /// requests, or changes them): the kernel must then redirect.
    pub fn needs_proxy(&self) -> bool {
        self.matches.has_request_conditions()
            || !self.controls.is_empty()
            || self.action == Action::Quarantine
    }
}

/// All listed conditions must hold; within one condition, any listed value
/// may match. An empty condition matches everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Executable path globs, e.g. `/usr/bin/curl`, `/opt/*/bin/python3*`.
    /// A literal path also matches any file with the same bytes (a copy,
    /// a memfd), by its SHA-256; a hard link is the same file.
    #[serde(default)]
    pub exe: Vec<PathGlob>,
    /// SHA-256 digests (hex) of executables, wherever they run from.
    #[serde(default)]
    pub exe_sha256: Vec<Sha256Hex>,
    /// true: processes running a memfd or a deleted file; false: the others.
    #[serde(default)]
    pub anonymous_exec: Option<bool>,
    /// Digests of the files `exe`'s literal paths name, filled in by the
    /// agent (`Policy::set_exe_digests`); not part of the policy file.
    #[serde(skip)]
    pub exe_digests: Vec<String>,
    /// Exact process names (the kernel's 15-character comm).
    #[serde(default)]
    pub comm: Vec<Comm>,
    /// User names or numeric uids.
    #[serde(default)]
    pub user: Vec<UserSpec>,
    /// systemd unit globs, e.g. `nginx.service`, `app-*.scope`.
    #[serde(default)]
    pub unit: Vec<PathGlob>,
    /// Container ids or id prefixes (at least 12 hex characters).
    #[serde(default)]
    pub container: Vec<ContainerId>,
    #[serde(default)]
    pub runtime: Vec<ContainerRuntime>,
    /// cgroup v2 path globs relative to the mount, e.g. `/system.slice/*`.
    #[serde(default)]
    pub cgroup: Vec<PathGlob>,
    #[serde(default)]
    pub provider: Vec<ProviderName>,
    /// Group names or numeric gids (the process's primary group).
    #[serde(default)]
    pub group: Vec<UserSpec>,
    /// Kubernetes pod UIDs (from the cgroup path).
    #[serde(default)]
    pub pod: Vec<String>,
    /// Request conditions, seen only by the proxy: the host the client
    /// asked for, the model, the API path and whether it streams.
    #[serde(default)]
    pub host: Vec<HostPattern>,
    #[serde(default)]
    pub model: Vec<ModelGlob>,
    #[serde(default)]
    pub path: Vec<PathGlob>,
    #[serde(default)]
    pub stream: Option<bool>,
}

/// What the proxy knows about a request.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    pub host: Option<&'a str>,
    pub model: Option<&'a str>,
    pub path: &'a str,
    pub stream: bool,
}

/// What the agent knows about a process.
#[derive(Debug, Clone, Default)]
pub struct ProcFacts<'a> {
    pub exe: Option<&'a str>,
    /// Lower-case hex SHA-256 of the executable, when known.
    pub exe_sha256: Option<&'a str>,
    pub anonymous_exec: bool,
    pub comm: &'a str,
    pub uid: u32,
    pub user: Option<&'a str>,
    pub gid: u32,
    pub group: Option<&'a str>,
}

/// What the agent knows about a cgroup.
#[derive(Debug, Clone, Default)]
pub struct CgroupFacts<'a> {
    pub path: &'a str,
    pub unit: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub runtime: Option<ContainerRuntime>,
    pub pod_uid: Option<&'a str>,
}

impl Match {
    pub fn has_process_conditions(&self) -> bool {
        self.has_exe_conditions()
            || !self.comm.is_empty()
            || !self.user.is_empty()
            || !self.group.is_empty()
    }

    /// Conditions on what the executable is: the kernel can decide them at
    /// exec from the agent's verdict for the file.
    pub fn has_exe_conditions(&self) -> bool {
        !self.exe.is_empty() || !self.exe_sha256.is_empty() || self.anonymous_exec.is_some()
    }

    /// Identity conditions the exec hook cannot know: comm, user, group
    /// and the cgroup's.
    pub fn has_non_exe_identity_conditions(&self) -> bool {
        !self.comm.is_empty()
            || !self.user.is_empty()
            || !self.group.is_empty()
            || self.has_cgroup_conditions()
    }

    /// Whether `exe`, `exe_sha256` and `anonymous_exec` hold. `None` for a
    /// fact that is unknown (`exe` and `exe_sha256` of a file not hashed).
    pub fn exe_conditions_hold(&self, proc: &ProcFacts<'_>) -> bool {
        let exe_ok = self.exe.is_empty()
            || proc
                .exe
                .is_some_and(|exe| self.exe.iter().any(|g| g.is_match(exe)))
            || proc
                .exe_sha256
                .is_some_and(|d| self.exe_digests.iter().any(|x| x == d));
        let sha_ok = self.exe_sha256.is_empty()
            || proc
                .exe_sha256
                .is_some_and(|d| self.exe_sha256.iter().any(|x| x.0 == d));
        let anon_ok = self.anonymous_exec.is_none_or(|a| a == proc.anonymous_exec);
        exe_ok && sha_ok && anon_ok
    }

    pub fn has_cgroup_conditions(&self) -> bool {
        !self.unit.is_empty()
            || !self.container.is_empty()
            || !self.runtime.is_empty()
            || !self.cgroup.is_empty()
            || !self.pod.is_empty()
    }

    pub fn has_request_conditions(&self) -> bool {
        !self.host.is_empty()
            || !self.model.is_empty()
            || !self.path.is_empty()
            || self.stream.is_some()
    }

    /// Everything, including the request: the proxy's view.
    pub fn matches_request(
        &self,
        proc: Option<&ProcFacts<'_>>,
        cgroup: Option<&CgroupFacts<'_>>,
        provider: &str,
        request: &RequestFacts<'_>,
    ) -> bool {
        if !self.matches(proc, cgroup, provider) {
            return false;
        }
        let host_ok = self.host.is_empty()
            || request
                .host
                .is_some_and(|host| self.host.iter().any(|h| h.matches(host)));
        let model_ok = self.model.is_empty()
            || request
                .model
                .is_some_and(|model| self.model.iter().any(|g| g.is_match(model)));
        let path_ok = self.path.is_empty() || self.path.iter().any(|g| g.is_match(request.path));
        let stream_ok = self.stream.is_none_or(|s| s == request.stream);
        host_ok && model_ok && path_ok && stream_ok
    }

    /// Identity and provider only; request conditions are not looked at.
    /// `proc`/`cgroup` are None when that level is unknown: a rule that needs
    /// it does not match (the kernel falls through to the next level).
    pub fn matches(
        &self,
        proc: Option<&ProcFacts<'_>>,
        cgroup: Option<&CgroupFacts<'_>>,
        provider: &str,
    ) -> bool {
        if !self.provider.is_empty() && !self.provider.iter().any(|p| p.0 == provider) {
            return false;
        }
        if self.has_process_conditions() {
            let Some(proc) = proc else { return false };
            let exe_ok = self.exe_conditions_hold(proc);
            let comm_ok = self.comm.is_empty() || self.comm.iter().any(|c| c.0 == proc.comm);
            let user_ok = self.user.is_empty()
                || self.user.iter().any(|u| match u {
                    UserSpec::Uid(uid) => *uid == proc.uid,
                    UserSpec::Name(name) => proc.user == Some(name.as_str()),
                });
            let group_ok = self.group.is_empty()
                || self.group.iter().any(|g| match g {
                    UserSpec::Uid(gid) => *gid == proc.gid,
                    UserSpec::Name(name) => proc.group == Some(name.as_str()),
                });
            if !(exe_ok && comm_ok && user_ok && group_ok) {
                return false;
            }
        }
        if self.has_cgroup_conditions() {
            let Some(cgroup) = cgroup else { return false };
            let unit_ok = self.unit.is_empty()
                || cgroup
                    .unit
                    .is_some_and(|unit| self.unit.iter().any(|g| g.is_match(unit)));
            let container_ok = self.container.is_empty()
                || cgroup
                    .container_id
                    .is_some_and(|id| self.container.iter().any(|c| id.starts_with(&c.0)));
            let runtime_ok = self.runtime.is_empty()
                || cgroup.runtime.is_some_and(|r| self.runtime.contains(&r));
            let cgroup_ok =
                self.cgroup.is_empty() || self.cgroup.iter().any(|g| g.is_match(cgroup.path));
            let pod_ok = self.pod.is_empty()
                || cgroup
                    .pod_uid
                    .is_some_and(|pod| self.pod.iter().any(|p| p.eq_ignore_ascii_case(pod)));
            if !(unit_ok && container_ok && runtime_ok && cgroup_ok && pod_ok) {
                return false;
            }
        }
        true
    }

    /// True when every identity this rule can match, `other` can match too —
    /// i.e. `other` placed after `self` is unreachable. Conservative: only
    /// unconditional conditions and identical value lists count.
    pub fn covers(&self, other: &Match) -> bool {
        fn covers<T: PartialEq>(mine: &[T], theirs: &[T]) -> bool {
            mine.is_empty() || (!theirs.is_empty() && theirs.iter().all(|t| mine.contains(t)))
        }
        covers(&self.exe, &other.exe)
            && covers(&self.exe_sha256, &other.exe_sha256)
            && (self.anonymous_exec.is_none() || self.anonymous_exec == other.anonymous_exec)
            && covers(&self.comm, &other.comm)
            && covers(&self.user, &other.user)
            && covers(&self.unit, &other.unit)
            && covers(&self.container, &other.container)
            && covers(&self.runtime, &other.runtime)
            && covers(&self.cgroup, &other.cgroup)
            && covers(&self.provider, &other.provider)
            && covers(&self.group, &other.group)
            && covers(&self.pod, &other.pod)
            && covers(&self.host, &other.host)
            && covers(&self.model, &other.model)
            && covers(&self.path, &other.path)
            && (self.stream.is_none() || self.stream == other.stream)
    }
}

/// A glob where `*` stays within one path segment and `**` crosses them.
#[derive(Debug, Clone)]
pub struct PathGlob {
    source: String,
    matcher: GlobMatcher,
}

impl PathGlob {
    pub fn is_match(&self, value: &str) -> bool {
        self.matcher.is_match(value)
    }

    /// The path itself when the glob has no wildcard: it names one file.
    pub fn literal(&self) -> Option<&str> {
        (!self.source.contains(['*', '?', '[', '{', '\\'])).then_some(self.source.as_str())
    }
}

/// A SHA-256 digest in hex (64 characters), kept lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(pub String);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?.to_ascii_lowercase();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom(format!(
                "exe_sha256 `{text}` must be 64 hex characters (`sha256sum FILE` prints it)"
            )));
        }
        Ok(Sha256Hex(text))
    }
}

impl PartialEq for PathGlob {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> Deserialize<'de> for PathGlob {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let source = String::deserialize(de)?;
        let glob: Glob = GlobBuilder::new(&source)
            .literal_separator(true)
            .build()
            .map_err(|err| serde::de::Error::custom(format!("invalid glob `{source}`: {err}")))?;
        Ok(PathGlob {
            matcher: glob.compile_matcher(),
            source,
        })
    }
}

/// A model-name glob: `*` matches anything (model names have no path
/// segments, though some contain `/`, e.g. `meta-llama/Llama-3.1-8B`).
#[derive(Debug, Clone)]
pub struct ModelGlob {
    source: String,
    matcher: GlobMatcher,
}

impl ModelGlob {
    pub fn is_match(&self, model: &str) -> bool {
        self.matcher.is_match(model)
    }
}

impl PartialEq for ModelGlob {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl<'de> Deserialize<'de> for ModelGlob {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let source = String::deserialize(de)?;
        let glob = GlobBuilder::new(&source)
            .literal_separator(false)
            .case_insensitive(true)
            .build()
            .map_err(|err| {
                serde::de::Error::custom(format!("invalid model glob `{source}`: {err}"))
            })?;
        Ok(ModelGlob {
            matcher: glob.compile_matcher(),
            source,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comm(pub String);

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let comm = String::deserialize(de)?;
        if comm.is_empty() || comm.len() > 15 {
            return Err(serde::de::Error::custom(format!(
                "comm `{comm}` must be 1-15 bytes: the kernel keeps only the first 15 \
                 characters of a process name; use `exe` to match a full path"
            )));
        }
        Ok(Comm(comm))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSpec {
    Uid(u32),
    Name(String),
}

impl<'de> Deserialize<'de> for UserSpec {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Uid(u32),
            Name(String),
        }
        Ok(match Raw::deserialize(de)? {
            Raw::Uid(uid) => UserSpec::Uid(uid),
            Raw::Name(name) => match name.parse::<u32>() {
                Ok(uid) => UserSpec::Uid(uid),
                Err(_) => UserSpec::Name(name),
            },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerId(pub String);

impl<'de> Deserialize<'de> for ContainerId {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let id = String::deserialize(de)?.to_ascii_lowercase();
        if id.len() < 12 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(serde::de::Error::custom(format!(
                "container id `{id}` must be 12-64 hex characters (a full id or a prefix \
                 as `docker ps` prints it)"
            )));
        }
        Ok(ContainerId(id))
    }
}
