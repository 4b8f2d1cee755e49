//! `modelgate policy explain`: what the policy would do with a request,
//! without sending anything.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    catalog::Catalog,
    config,
    identity::cgroup_path::{self, ContainerRuntime},
    inspect,
    policy::{
        Action, CgroupFacts, Policy, ProcFacts, RequestFacts,
        decide::{self, DataFinding},
    },
    proxy::providers,
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
        (Some((kind, _)), _) => kind.outcome(),
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

pub fn run(args: ExplainArgs) -> Result<ExitCode> {
    let dir = args.policies.unwrap_or_else(config::default_policies_dir);
    let catalog = Catalog::load(&dir).map_err(|e| anyhow!("{e}"))?;
    let policy = Policy::load(&dir, &catalog).map_err(|e| anyhow!("{e}"))?;
    let explanation = explain(&policy, &catalog, &args.given)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
        return Ok(ExitCode::SUCCESS);
    }
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
