//! What loading and attaching the kernel programs can fail on, each with
//! what to do about it where there is something.

use std::path::PathBuf;

use aya::programs::ProgramError;

use super::{pins::PinError, tracefmt::TraceFormatError};

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "loading the eBPF object failed; the kernel needs BTF, CONFIG_CGROUP_BPF and \
         CONFIG_BPF_SYSCALL, and the agent needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
         (or root)"
    )]
    Load(#[source] aya::EbpfError),
    #[error(
        "tracefs is not mounted at {0} and mounting it failed; run `mount -t tracefs nodev {0}`"
    )]
    NoTracefs(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    TraceFormat(#[from] TraceFormatError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("program {0} is missing from the eBPF object; rebuild the agent (cargo xtask build)")]
    MissingProgram(String),
    #[error("the kernel rejected program {program}")]
    Rejected {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {program}")]
    Program {
        program: String,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {program} to {target}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: AttachError,
    },
    #[error("cannot open cgroup {}; pass --cgroup with a directory in the cgroup2 mount", .path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("switching {program} to the new program")]
    Switch {
        program: &'static str,
        #[source]
        source: PinError,
    },
    #[error("removing the pin {}", .path.display())]
    RemovePin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning a link at {}", .path.display())]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

/// Why a program could not be attached and its link taken.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
}

/// A kernel map could not be taken, read or written.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "map {0} is missing from the eBPF object: the embedded programs and the agent disagree; \
         rebuild the agent (cargo xtask build)"
    )]
    Missing(String),
    #[error("map {name} has an unexpected type")]
    WrongType {
        name: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{access} {map}{}", access.hint())]
    Access {
        access: Access,
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading CLOCK_BOOTTIME for MG_HEARTBEAT")]
    Clock(#[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    /// An insert, which a full map refuses.
    Insert,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Read => "reading",
            Access::Write => "writing",
            Access::Insert => "inserting into",
        })
    }
}

impl Access {
    fn hint(self) -> &'static str {
        match self {
            Access::Insert => " (is it full?)",
            Access::Read | Access::Write => "",
        }
    }
}

/// Names the map and the access on an aya result.
pub(super) trait OnMap<T> {
    fn on(self, access: Access, map: &'static str) -> Result<T, MapsError>;
}

impl<T> OnMap<T> for std::result::Result<T, aya::maps::MapError> {
    fn on(self, access: Access, map: &'static str) -> Result<T, MapsError> {
        self.map_err(|source| MapsError::Access {
            access,
            map,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which map and what was tried, and a hint where a full map is the
    /// likely cause.
    #[test]
    fn errors_name_the_map_and_the_access() {
        let err = |access| {
            Err::<(), _>(aya::maps::MapError::KeyNotFound)
                .on(access, "MG_ENDPOINTS")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(Access::Insert),
            "inserting into MG_ENDPOINTS (is it full?)"
        );
        assert_eq!(err(Access::Read), "reading MG_ENDPOINTS");
        assert_eq!(err(Access::Write), "writing MG_ENDPOINTS");
    }
}
