//! What the modelgate package installs and does, described once: `cargo
//! xtask package` stages the .deb and the tarball (and writes their file
//! lists and conffiles) from it, and `modelgate install --dry-run` prints
//! it for review. Both crates include this file with `#[path]`, since the
//! xtask cannot depend on the agent crate: it holds plain data only, with
//! no dependencies.

/// The Debian package, the tarball's prefix, the unit's name.
pub const PACKAGE: &str = "modelgate";
/// Members may use the control socket (status, top, usage, policy reload).
pub const GROUP: &str = "modelgate";
pub const UNIT: &str = "modelgate.service";
pub const BINARY: &str = "/usr/bin/modelgate";
pub const CONFIG_DIR: &str = "/etc/modelgate";
/// Mode 0700, root: the CA key, audit, usage, alerts.
pub const STATE_DIR: &str = "/var/lib/modelgate";
pub const RUNTIME_DIR: &str = "/run/modelgate";
pub const PIN_DIR: &str = "/sys/fs/bpf/modelgate";
pub const MAINTAINER: &str = "modelgate developers <modelgate@users.noreply.github.com>";
pub const HOMEPAGE: &str = "https://github.com/modelgate/modelgate";
pub const SUMMARY: &str = "finds, attributes and governs every connection to a model API";
pub const DESCRIPTION: &str = "\
modelgate is an eBPF host agent. It sees every outbound connection to a
model API (OpenAI, Anthropic, Azure OpenAI, Bedrock, Gemini, Mistral,
self-hosted servers, ...), says which process, user, systemd unit and
container made it, and allows, reports, blocks or redirects it through a
local policy proxy that audits each request.";

/// Where a packaged file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The agent binary being packaged.
    Binary,
    /// A file of the repository, relative to the workspace root.
    Repo(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct File {
    pub source: Source,
    /// Absolute path on the installed host.
    pub dest: &'static str,
    pub mode: u32,
    /// Configuration the administrator owns: an upgrade never overwrites
    /// an edited copy (dpkg conffile; install.sh writes `<dest>.new`).
    pub conffile: bool,
    pub what: &'static str,
}

const fn file(source: Source, dest: &'static str, mode: u32, what: &'static str) -> File {
    File {
        source,
        dest,
        mode,
        conffile: false,
        what,
    }
}

const fn conf(repo: &'static str, dest: &'static str, what: &'static str) -> File {
    File {
        source: Source::Repo(repo),
        dest,
        mode: 0o644,
        conffile: true,
        what,
    }
}

/// Every file of the package. Every file under `policies/` must be listed:
/// `cargo xtask package` refuses to build when one is not.
pub const FILES: &[File] = &[
    file(
        Source::Binary,
        BINARY,
        0o755,
        "the agent and its command line",
    ),
    file(
        Source::Repo("packaging/modelgate.service"),
        "/lib/systemd/system/modelgate.service",
        0o644,
        "the hardened systemd unit",
    ),
    conf(
        "packaging/agent.yaml",
        "/etc/modelgate/agent.yaml",
        "agent settings, every option documented",
    ),
    conf(
        "policies/endpoints.yaml",
        "/etc/modelgate/policies/endpoints.yaml",
        "the catalog of model-API endpoints",
    ),
    conf(
        "policies/policy.yaml",
        "/etc/modelgate/policies/policy.yaml",
        "the default policy (monitor: report, block nothing)",
    ),
    conf(
        "policies/prices.yaml",
        "/etc/modelgate/policies/prices.yaml",
        "model prices for cost estimates and dollar budgets",
    ),
    conf(
        "policies/tests/default.yaml",
        "/etc/modelgate/policies/tests/default.yaml",
        "test cases of the default policy (modelgate policy test)",
    ),
    file(
        Source::Repo("policies/policy.schema.json"),
        "/usr/share/modelgate/policy.schema.json",
        0o644,
        "JSON Schema of policy files, for editors",
    ),
    file(
        Source::Repo("policies/examples/README.md"),
        "/usr/share/doc/modelgate/examples/README.md",
        0o644,
        "example policies to start from",
    ),
    file(
        Source::Repo("policies/examples/budget.yaml"),
        "/usr/share/doc/modelgate/examples/budget.yaml",
        0o644,
        "example: budgets",
    ),
    file(
        Source::Repo("policies/examples/known-providers-only.yaml"),
        "/usr/share/doc/modelgate/examples/known-providers-only.yaml",
        0o644,
        "example: approved providers only",
    ),
    file(
        Source::Repo("policies/examples/managed-credentials.yaml"),
        "/usr/share/doc/modelgate/examples/managed-credentials.yaml",
        0o644,
        "example: managed credentials",
    ),
    file(
        Source::Repo("policies/examples/redirect-and-protect.yaml"),
        "/usr/share/doc/modelgate/examples/redirect-and-protect.yaml",
        0o644,
        "example: redirect everything, block secrets, redact PII",
    ),
    file(
        Source::Repo("policies/examples/team-model-allowlist.yaml"),
        "/usr/share/doc/modelgate/examples/team-model-allowlist.yaml",
        0o644,
        "example: per-team model allow-lists",
    ),
    file(
        Source::Repo("policies/examples/tests/redirect-and-protect.yaml"),
        "/usr/share/doc/modelgate/examples/tests/redirect-and-protect.yaml",
        0o644,
        "test cases of the redirect-and-protect example",
    ),
    file(
        Source::Repo("README.md"),
        "/usr/share/doc/modelgate/README.md",
        0o644,
        "the manual",
    ),
];

/// What installing does besides copying files, in order (the .deb's
/// postinst and install.sh both do exactly this).
pub const INSTALL_STEPS: &[&str] = &[
    "create the system group `modelgate` unless it exists (addgroup --system, else groupadd --system); \
     members may use the control socket /run/modelgate/control.sock (0660 root:modelgate)",
    "create /var/lib/modelgate (0700 root) and the local CA in it with `modelgate ca export`: \
     ca.pem 0644, ca-key.pem 0600 (an existing CA is kept)",
    "enable modelgate.service (WantedBy=multi-user.target)",
    "when systemd runs (/run/systemd/system exists): daemon-reload, then start the unit, or restart it \
     on an upgrade (the pinned programs keep enforcing in between); honours policy-rc.d through \
     deb-systemd-invoke. Without systemd nothing is started: the message says so",
];

/// What removing does.
pub const REMOVE_STEPS: &[&str] = &[
    "remove (apt remove / install.sh --uninstall): stop modelgate.service (an upgrade does not stop it), \
     remove the pinned programs with `modelgate uninstall-bpf` (/sys/fs/bpf/modelgate), remove the \
     files; /etc/modelgate and /var/lib/modelgate stay",
    "purge (apt purge / install.sh --uninstall --purge): also remove /etc/modelgate, /var/lib/modelgate \
     (the CA, audit, usage store, alerts), the CA from the system trust store if `modelgate ca install` \
     put it there, and the group `modelgate`",
];
