//! Who made a connection: the identity record, the same everywhere it
//! appears (events, audit, alerts, usage).

pub mod cgroup_path;
pub mod cgroups;
pub mod cmdline;
pub mod exe;
pub mod procs;
pub mod users;

use serde::Serialize;

use self::{cgroup_path::CgroupInfo, exe::ExeFacts};

/// How many ancestors the record carries.
pub const PARENT_CHAIN: usize = 4;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Parent {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Identity {
    pub pid: u32,
    pub tgid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// exe_sha256, anonymous_exec, exe_loader.
    #[serde(flatten)]
    pub exe_facts: ExeFacts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<Parent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(flatten)]
    pub cgroup_info: CgroupInfo,
}

impl Identity {
    /// The name to show a person: the executable, else the comm.
    pub fn who(&self) -> &str {
        self.exe.as_deref().unwrap_or(&self.comm)
    }
}

/// A NUL-padded kernel string (comm) as text.
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
