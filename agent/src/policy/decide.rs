//! The pure part of a request decision — which rule, and what its controls
//! say about this request — shared by the proxy (which then acts on it)
//! and by `policy explain` / `policy test` (which only report it).

use http::HeaderMap;
use serde::Serialize;

use super::{
    Action, CgroupFacts, Policy, ProcFacts, RequestFacts, Rule,
    controls::{DataAction, Unparseable},
    data_action,
};
use crate::{
    inspect::{self, Form},
    providers::RequestInfo,
};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataFinding {
    pub class: String,
    pub count: usize,
    /// What the deciding rule does about it (None: nothing configured).
    pub action: Option<&'static str>,
    /// Where in the request it was found (`body`, `query`, `header:x-note`,
    /// …; see `inspect::Place::label`).
    #[serde(rename = "where")]
    pub places: Vec<String>,
}

/// What a request carries besides its path: the body as the upstream will
/// read it, the query string and the headers the proxy forwards.
pub struct Content<'a> {
    pub body: &'a inspect::Body,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
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
    /// A content control cannot read the body as the upstream will.
    Unreadable,
    /// The request names two models where the upstream serves one.
    ModelConflict,
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
    content: &Content<'_>,
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
    // Whatever the rules: a request that means two things is not forwarded,
    // since policy, audit and price would follow one and the upstream the
    // other.
    if let Some(why) = &info.model_conflict {
        decision.refuse = Some((
            RefuseKind::ModelConflict,
            format!("modelgate: {why}; send one model, in the path"),
        ));
        return decision;
    }
    let Some(rule) = rule else {
        return decision;
    };
    let controls = &rule.controls;
    if controls.reads_content()
        && controls.unparseable == Unparseable::Block
        && let Some(why) = content.body.unreadable()
    {
        decision.refuse = Some((
            RefuseKind::Unreadable,
            format!(
                "modelgate: policy rule `{rule_name}` inspects what requests carry, and this \
                 one cannot be read the way the upstream would read it: {why}; it was not sent \
                 (`unparseable: allow` on the rule forwards such requests)"
            ),
        ));
        return decision;
    }
    if let Some(why) = controls
        .models
        .refusal_any(info.model.as_deref(), info.also_model.as_deref())
    {
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
    // Replacing in place works inside the strings of a JSON or text body;
    // a finding to redact anywhere else (a header, the query, a part, or
    // split across strings) makes the request one that cannot leave.
    // A body a client signature covers cannot be rewritten at all: the
    // upstream would refuse it, or take what the client never signed.
    let signed = inspect::body_signature(content.headers, content.query);
    let rewritable = signed.is_none() && matches!(content.body.form, Form::Json(_) | Form::Text);
    let mut unredactable = Vec::new();
    for found in inspect::scan(classifier, content.body, content.query, content.headers) {
        let name = classifier.classes()[found.class].name.clone();
        let action = data_action(rule, classifier, found.class);
        let places: Vec<String> = found.places.iter().map(inspect::Place::label).collect();
        match action {
            Some(DataAction::Quarantine) => quarantined.push(name.clone()),
            Some(DataAction::Block) => blocked.push(name.clone()),
            Some(DataAction::Redact) => {
                decision.redact = true;
                if let Some(place) = found
                    .places
                    .iter()
                    .find(|p| !(rewritable && p.redactable()))
                {
                    unredactable.push(format!("{name} (in {})", place.label()));
                }
            }
            Some(DataAction::Alert) | None => {}
        }
        decision.findings.push(DataFinding {
            class: name,
            count: found.count,
            action: action.map(action_name),
            places,
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
    } else if !unredactable.is_empty() {
        let message = match signed {
            Some(scheme) => format!(
                "modelgate: the request carries {} that policy rule `{rule_name}` redacts, but \
                 its body is signed ({scheme}) and a redacted body would not match the \
                 signature, so it was not sent (block or alert on these classes for signed \
                 providers)",
                unredactable.join(", ")
            ),
            None => format!(
                "modelgate: the request carries {} where policy rule `{rule_name}` cannot \
                 redact it, so it was not sent",
                unredactable.join(", ")
            ),
        };
        decision.refuse = Some((RefuseKind::DataBlocked, message));
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
