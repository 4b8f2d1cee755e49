//! `modelgate policy explain`: what the policy would do with a request,
//! without sending anything.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    audit::Outcome,
    catalog::Catalog,
    config,
    control::{client::Client, status::Status},
    identity::cgroup_path::{self, ContainerRuntime},
    inspect,
    policy::{
        Action, CgroupFacts, Policy, ProcFacts, RequestFacts,
        decide::{self, DataFinding},
    },
    providers,
};

/// Who and what: the same facts a policy test case gives.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    /// Executable path of the calling process.
    #[arg(long)]
    #[serde(default)]
    pub exe: Option<String>,
    /// Process name (defaults to the exe's file name, cut to 15 bytes).
    #[arg(long)]
    #[serde(default)]
    pub comm: Option<String>,
    /// User name or uid.
    #[arg(long)]
    #[serde(default)]
    pub user: Option<String>,
    /// Group name or gid.
    #[arg(long)]
    #[serde(default)]
    pub group: Option<String>,
    /// systemd unit, e.g. billing.service.
    #[arg(long)]
    #[serde(default)]
    pub unit: Option<String>,
    /// Container id.
    #[arg(long)]
    #[serde(default)]
    pub container: Option<String>,
    #[arg(long)]
    #[serde(default)]
    pub runtime: Option<ContainerRuntime>,
    /// cgroup path (relative to the cgroup2 mount); unit and container are
    /// parsed from it when not given.
    #[arg(long)]
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The API host called, e.g. api.openai.com.
    #[arg(long)]
    #[serde(default)]
    pub host: String,
    #[arg(long)]
    #[serde(default)]
    pub model: Option<String>,
    /// API path (default: the usual chat path of the provider).
    #[arg(long)]
    #[serde(default)]
    pub path: Option<String>,
    #[arg(long)]
    #[serde(default)]
    pub stream: bool,
    /// A file with the prompt text, or a whole JSON request body.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub prompt_file: Option<PathBuf>,
    /// The prompt text itself (policy tests).
    #[arg(skip)]
    #[serde(default)]
    pub prompt: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    #[command(flatten)]
    given: Given,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Explanation {
    pub provider: String,
    /// The kernel's verdict at connect() and the rule behind it.
    pub connect: Action,
    pub connect_rule: String,
    /// What the proxy does with the request (when the connection reaches it).
    pub decision: &'static str,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub findings: Vec<DataFinding>,
}

pub fn explain(policy: &Policy, catalog: &Catalog, given: &Given) -> Result<Explanation> {
    let host = given.host.trim().to_ascii_lowercase();
    if host.is_empty() {
        bail!("give the API host with --host (e.g. --host api.openai.com)");
    }
    let provider = catalog
        .providers
        .iter()
        .find(|p| p.hosts.iter().any(|h| h.matches(&host)))
        .ok_or_else(|| anyhow!("`{host}` is not a host in the catalog (endpoints.yaml)"))?;
    let comm = given.comm.clone().unwrap_or_else(|| {
        let name = given
            .exe
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .unwrap_or("");
        name.chars().take(15).collect()
    });
    let (uid, user) = id_or_name(given.user.as_deref());
    let (gid, group) = id_or_name(given.group.as_deref());
    let proc = ProcFacts {
        exe: given.exe.as_deref(),
        comm: &comm,
        uid,
        user: user.as_deref(),
        gid,
        group: group.as_deref(),
        ..ProcFacts::default()
    };
    let parsed = given
        .cgroup
        .as_deref()
        .map(cgroup_path::parse)
        .unwrap_or_default();
    let cgroup = CgroupFacts {
        path: given.cgroup.as_deref().unwrap_or("/"),
        unit: given.unit.as_deref().or(parsed.unit.as_deref()),
        container_id: given
            .container
            .as_deref()
            .or(parsed.container_id.as_deref()),
        runtime: given.runtime.or(parsed.container_runtime),
        pod_uid: parsed.pod_uid.as_deref(),
    };
    let body = bytes::Bytes::from(body(given)?);
    let given_path = given
        .path
        .clone()
        .unwrap_or_else(|| default_path(provider.api, given.model.as_deref()));
    // As the proxy reads a request: the normalised path, the query apart.
    let (raw_path, query) = match given_path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (given_path.as_str(), None),
    };
    let path = inspect::path::normalize(raw_path);
    let read = inspect::read_body(&body, None, None, providers::reads_json(&path));
    let info = providers::parse_request_json(&path, read.json());
    let model = given.model.clone().or(info.model.clone());
    let request = RequestFacts {
        host: Some(&host),
        model: model.as_deref(),
        path: &path,
        stream: given.stream || info.stream,
    };
    let mut info = info;
    info.model = model.clone();
    let (connect, connect_rule) = decide::connect_action(
        policy,
        policy.default_action,
        &proc,
        &cgroup,
        &provider.name.0,
    );
    let decision = decide::decide(
        policy,
        policy.default_action,
        &proc,
        &cgroup,
        &provider.name.0,
        &request,
        &info,
        &decide::Content {
            body: &read,
            query,
            headers: &http::HeaderMap::new(),
        },
    );
    let verdict = match (&decision.refuse, connect) {
        (_, Action::Block) => "blocked at connect",
        (_, Action::Allow | Action::Monitor) => "not proxied",
        (_, Action::Passthrough) => "passthrough",
        (Some((kind, _)), _) => Outcome::from(*kind).as_str(),
        (None, _) if decision.redact => "forward redacted",
        (None, _) => "forward",
    };
    Ok(Explanation {
        provider: provider.name.0.clone(),
        connect,
        connect_rule,
        decision: verdict,
        rule: decision.rule_name.clone(),
        reason: decision.refuse.map(|(_, why)| why),
        findings: decision.findings,
    })
}

fn id_or_name(value: Option<&str>) -> (u32, Option<String>) {
    match value {
        None => (u32::MAX, None),
        Some(v) => match v.parse::<u32>() {
            Ok(id) => (id, None),
            Err(_) => (u32::MAX, Some(v.to_string())),
        },
    }
}

/// The request body to judge: a JSON file as is, or text wrapped as a
/// chat message.
fn body(given: &Given) -> Result<Vec<u8>> {
    let text = match (&given.prompt_file, &given.prompt) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("reading the prompt file {}", file.display()))?,
        (None, Some(prompt)) => prompt.clone(),
        (None, None) => String::new(),
    };
    if serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object()) {
        return Ok(text.into_bytes());
    }
    let mut body = serde_json::json!({"messages": [{"role": "user", "content": text}]});
    if let Some(model) = &given.model {
        body["model"] = model.clone().into();
    }
    if given.stream {
        body["stream"] = true.into();
    }
    Ok(body.to_string().into_bytes())
}

fn default_path(api: crate::catalog::Api, model: Option<&str>) -> String {
    use crate::catalog::Api;
    match api {
        Api::Anthropic => "/v1/messages".into(),
        Api::Gemini | Api::Vertex => {
            format!(
                "/v1beta/models/{}:generateContent",
                model.unwrap_or("gemini")
            )
        }
        Api::Bedrock => format!("/model/{}/converse", model.unwrap_or("model")),
        _ => "/v1/chat/completions".into(),
    }
}

/// Which policy an explanation was made against.
#[derive(Debug, Serialize, PartialEq)]
pub struct Source {
    /// The policy directory read.
    pub policies: String,
    /// The version (hash) of the files read.
    pub version: String,
    /// The running agent asked, when one runs at the state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInForce>,
    /// The default action used, and where it came from: `policy` (the
    /// file's `default_action`) or `agent` (its `--default-action` or
    /// agent.yaml override).
    pub default_action: Action,
    pub default_action_from: &'static str,
    /// The policy directory of a running agent that uses another one than
    /// the files read (its override then does not apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_policies: Option<String>,
}

/// What the running agent has in force.
#[derive(Debug, Serialize, PartialEq)]
pub struct AgentInForce {
    pub pid: u32,
    /// The policy version the agent loaded; differs from the files' when
    /// they changed since (a reload puts them in force).
    pub version: String,
    pub default_action: Action,
}

/// The running agent's policy directory and default action, `None` when no
/// agent runs there (or it cannot be asked, which is said).
fn agent_in_force(state_dir: Option<&Path>) -> Option<(AgentInForce, PathBuf, bool)> {
    let state_dir = state_dir?;
    let reply = match Client::new(state_dir).get_if_running("/v1/status") {
        Ok(Some(reply)) => reply,
        Ok(None) => return None,
        Err(err) => {
            eprintln!(
                "cannot ask the agent at {} ({}); explaining against the files alone",
                state_dir.display(),
                crate::errors::chain(&err)
            );
            return None;
        }
    };
    let status: Status = match reply.ok().and_then(|r| r.json()) {
        Ok(status) => status,
        Err(err) => {
            eprintln!(
                "the agent's status could not be read ({}); explaining against the files alone",
                crate::errors::chain(&err)
            );
            return None;
        }
    };
    let default_action =
        <Action as clap::ValueEnum>::from_str(&status.policy.default_action, true).ok()?;
    let overridden = status.policy.default_action_from.as_deref() == Some("override");
    Some((
        AgentInForce {
            pid: status.pid,
            version: status.policy.version,
            default_action,
        },
        PathBuf::from(status.policy.dir),
        overridden,
    ))
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    explanation: &'a Explanation,
    source: &'a Source,
}

pub fn run(args: ExplainArgs, state_dir: Option<&Path>) -> Result<ExitCode> {
    let agent = agent_in_force(state_dir);
    // The agent's directory unless another is asked for.
    let dir = args
        .policies
        .clone()
        .or_else(|| agent.as_ref().map(|(_, dir, _)| dir.clone()))
        .unwrap_or_else(config::default_policies_dir);
    let catalog = Catalog::load(&dir).map_err(|e| anyhow!("{e}"))?;
    let mut policy = Policy::load(&dir, &catalog).map_err(|e| anyhow!("{e}"))?;
    let same_dir = agent
        .as_ref()
        .is_some_and(|(_, agent_dir, _)| same_path(agent_dir, &dir));
    // The agent's override of the default action applies to its policy.
    let mut default_action_from = "policy";
    if let Some((in_force, _, true)) = &agent
        && same_dir
    {
        policy.default_action = in_force.default_action;
        default_action_from = "agent";
    }
    let source = Source {
        policies: dir.display().to_string(),
        version: crate::policy::version(&dir),
        default_action: policy.default_action,
        default_action_from,
        agent_policies: agent
            .as_ref()
            .filter(|_| !same_dir)
            .map(|(_, dir, _)| dir.display().to_string()),
        agent: agent.filter(|_| same_dir).map(|(a, _, _)| a),
    };
    let explanation = explain(&policy, &catalog, &args.given)?;
    if args.json {
        let report = Report {
            explanation: &explanation,
            source: &source,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("policy:    {}", describe(&source));
    println!("provider:  {}", explanation.provider);
    println!(
        "connect:   {} (rule `{}`)",
        explanation.connect, explanation.connect_rule
    );
    println!(
        "request:   {} (rule `{}`)",
        explanation.decision, explanation.rule
    );
    if let Some(reason) = &explanation.reason {
        println!("reason:    {reason}");
    }
    if explanation.findings.is_empty() {
        println!("data:      no findings");
    }
    for finding in &explanation.findings {
        println!(
            "data:      {} ×{} in {} → {}",
            finding.class,
            finding.count,
            finding.places.join(", "),
            finding.action.unwrap_or("nothing configured")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// One line: which files, whether the running agent has them in force, and
/// where the default action came from.
fn describe(source: &Source) -> String {
    let files = format!("{} (version {})", source.policies, source.version);
    let default = match source.default_action_from {
        "agent" => format!(
            "default {} from the running agent's override (--default-action)",
            source.default_action
        ),
        _ => format!("default {} from the policy file", source.default_action),
    };
    match &source.agent {
        Some(agent) if agent.version == source.version => {
            format!(
                "{files}, in force in the running agent (pid {}); {default}",
                agent.pid
            )
        }
        Some(agent) => format!(
            "{files}, changed since the running agent (pid {}) loaded version {}: \
             `modelgate policy reload` puts them in force; {default}",
            agent.pid, agent.version
        ),
        None => match &source.agent_policies {
            Some(theirs) => format!(
                "{files}, the files (the running agent uses {theirs}, so not its override); \
                 {default}"
            ),
            None => format!("{files}, the files (no running agent asked); {default}"),
        },
    }
}
