//! The pure part of a request decision — which rule, and what its controls
//! say about this request — shared by the proxy (which then acts on it)
//! and by `policy explain` / `policy test` (which only report it).

use serde::Serialize;

use super::{
    Action, CgroupFacts, Policy, ProcFacts, RequestFacts, Rule, controls::DataAction, data_action,
};
use crate::proxy::providers::RequestInfo;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataFinding {
    pub class: String,
    pub count: usize,
    /// What the deciding rule does about it (None: nothing configured).
    pub action: Option<&'static str>,
}

/// Why a request would not be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseKind {
    Blocked,
    Quarantined,
    ModelRefused,
    TooLarge,
    DataBlocked,
    DataQuarantined,
}

impl RefuseKind {
    pub fn outcome(self) -> &'static str {
        match self {
            RefuseKind::Blocked => "blocked",
            RefuseKind::Quarantined | RefuseKind::DataQuarantined => "quarantined",
            RefuseKind::ModelRefused => "model_refused",
            RefuseKind::TooLarge => "too_large",
            RefuseKind::DataBlocked => "data_blocked",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestDecision<'p> {
    pub rule: Option<&'p Rule>,
    pub rule_name: String,
    pub refuse: Option<(RefuseKind, String)>,
    pub findings: Vec<DataFinding>,
    /// Classes whose findings are to be redacted before forwarding.
    pub redact: bool,
}

fn action_name(action: DataAction) -> &'static str {
    match action {
        DataAction::Block => "block",
        DataAction::Redact => "redact",
        DataAction::Alert => "alert",
        DataAction::Quarantine => "quarantine",
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the facts of one request, each distinct"
)]
pub fn decide<'p>(
    policy: &'p Policy,
    default_action: Action,
    proc: &ProcFacts<'_>,
    cgroup: &CgroupFacts<'_>,
    provider: &str,
    request: &RequestFacts<'_>,
    info: &RequestInfo,
    body: &[u8],
) -> RequestDecision<'p> {
    let decided = policy.decide_request(Some(proc), Some(cgroup), provider, request);
    let (rule, rule_name, action) = match decided {
        Some((_, rule)) => (Some(rule), rule.name.clone(), rule.action),
        None => (None, "default".to_string(), default_action),
    };
    let mut decision = RequestDecision {
        rule,
        rule_name: rule_name.clone(),
        refuse: None,
        findings: Vec::new(),
        redact: false,
    };
    match action {
        Action::Block => {
            decision.refuse = Some((
                RefuseKind::Blocked,
                format!("modelgate: this request is blocked by policy rule `{rule_name}`"),
            ));
            return decision;
        }
        Action::Quarantine => {
            decision.refuse = Some((
                RefuseKind::Quarantined,
                format!(
                    "modelgate: policy rule `{rule_name}` quarantines this process's model access"
                ),
            ));
            return decision;
        }
        Action::Allow | Action::Monitor | Action::Redirect | Action::Passthrough => {}
    }
    let Some(rule) = rule else {
        return decision;
    };
    let controls = &rule.controls;
    if let Some(why) = controls.models.refusal(info.model.as_deref()) {
        decision.refuse = Some((
            RefuseKind::ModelRefused,
            format!("modelgate: {why} by policy rule `{rule_name}`"),
        ));
        return decision;
    }
    if let Some(max) = controls.max_prompt_bytes
        && info.prompt_bytes > max
    {
        decision.refuse = Some((
            RefuseKind::TooLarge,
            format!(
                "modelgate: the prompt is {} bytes; policy rule `{rule_name}` allows {max}",
                info.prompt_bytes
            ),
        ));
        return decision;
    }
    if controls.data.is_empty() {
        return decision;
    }
    let classifier = &policy.classifier;
    let mut quarantined = Vec::new();
    let mut blocked = Vec::new();
    for (class, count) in classifier.scan_json(body) {
        let name = classifier.classes()[class].name.clone();
        let action = data_action(rule, classifier, class);
        match action {
            Some(DataAction::Quarantine) => quarantined.push(name.clone()),
            Some(DataAction::Block) => blocked.push(name.clone()),
            Some(DataAction::Redact) => decision.redact = true,
            Some(DataAction::Alert) | None => {}
        }
        decision.findings.push(DataFinding {
            class: name,
            count,
            action: action.map(action_name),
        });
    }
    let refusal = |classes: &[String]| {
        format!(
            "modelgate: the prompt contains {} and policy rule `{rule_name}` does not let it leave this host",
            classes.join(", ")
        )
    };
    if !quarantined.is_empty() {
        decision.refuse = Some((RefuseKind::DataQuarantined, refusal(&quarantined)));
    } else if !blocked.is_empty() {
        decision.refuse = Some((RefuseKind::DataBlocked, refusal(&blocked)));
    }
    decision
}

/// The kernel's verdict at connect() for this identity and provider.
pub fn connect_action(
    policy: &Policy,
    default_action: Action,
    proc: &ProcFacts<'_>,
    cgroup: &CgroupFacts<'_>,
    provider: &str,
) -> (Action, String) {
    match policy.evaluate(Some(proc), Some(cgroup), provider) {
        Some((_, rule)) if rule.needs_proxy() => (Action::Redirect, rule.name.clone()),
        Some((_, rule)) => (rule.action, rule.name.clone()),
        None => (default_action, "default".to_string()),
    }
}
