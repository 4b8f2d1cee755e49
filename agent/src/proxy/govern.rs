//! Request-time policy: the rule that decides this request, and what its
//! controls do — models, prompt size, data rules, credentials, budgets.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::{Shared, conn::Conn, credentials};
use crate::{
    alerts::{Alert, Severity, fingerprint},
    audit::Outcome,
    budget::BudgetKey,
    catalog::Api,
    inspect::{self, Form},
    policy::{
        PolicyState, RequestFacts, StorePrompts,
        controls::{DataAction, Unparseable},
        data_action,
        decide::{self, Content, DataFinding, RefuseKind},
    },
    providers::{Family, Refusal, RequestInfo},
};

const DEFAULT_QUARANTINE: Duration = Duration::from_secs(600);

/// What the proxy does with one request.
pub enum Verdict {
    Forward(Forward),
    Refuse(Refuse),
}

pub struct Forward {
    pub rule: String,
    /// A replaced (redacted) body, when the original must not leave. It is
    /// the decoded body rewritten: it leaves without a Content-Encoding.
    pub body: Option<Bytes>,
    /// What data rules found, and where.
    pub findings: Vec<DataFinding>,
    pub store_prompts: Option<StorePrompts>,
    /// (rule, key) to charge tokens and dollars to once the answer is in.
    pub budget: Option<(String, String)>,
    /// `class: count` of what was redacted, for the audit record.
    pub redacted: Vec<(String, usize)>,
    /// A managed credential replaced the app's: drop a `key=` query too.
    pub strip_query_key: bool,
    /// The rule's data controls, for a body scanned as it streams.
    pub data: Option<DataRules>,
}

/// What a rule's data controls do with each class: a streamed body is
/// scanned piece by piece after the decision.
pub struct DataRules {
    pub rule: String,
    pub state: Arc<PolicyState>,
    /// Per class of `state.policy.classifier`.
    pub actions: Vec<Option<DataAction>>,
    pub quarantine_for: Duration,
    /// `unparseable: block`: content the scan cannot read stops the body.
    pub unreadable_blocks: bool,
}

pub struct Refuse {
    pub rule: String,
    pub findings: Vec<DataFinding>,
    pub status: StatusCode,
    pub refusal: Refusal,
    pub outcome: Outcome,
    pub message: String,
    pub retry_after: Option<u64>,
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
pub async fn decide(
    shared: &Shared,
    conn: &Conn,
    family: Family,
    host: &str,
    path: &str,
    query: Option<&str>,
    info: &RequestInfo,
    body: &inspect::Body,
    headers: &mut HeaderMap,
) -> Verdict {
    let state = shared.policy.read().expect("policy lock poisoned").clone();
    let (proc, cgroup) = crate::bypass::facts(&conn.info.identity);
    let request = RequestFacts {
        host: Some(host),
        model: info.model.as_deref(),
        path,
        stream: info.stream,
    };
    let decision = decide::decide(
        &state.policy,
        state.default_action(),
        &proc,
        &cgroup,
        &conn.info.provider,
        &request,
        info,
        &Content {
            body,
            query,
            headers,
        },
    );
    let rule_name = decision.rule_name.clone();
    report_findings(shared, conn, &rule_name, &decision.findings);
    if let Some((kind, message)) = decision.refuse {
        let (status, refusal) = match kind {
            RefuseKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, Refusal::TooLarge),
            RefuseKind::ModelConflict => (StatusCode::BAD_REQUEST, Refusal::BadRequest),
            _ => (StatusCode::FORBIDDEN, Refusal::Policy),
        };
        let mut message = message;
        if matches!(kind, RefuseKind::Quarantined | RefuseKind::DataQuarantined) {
            let until = decision
                .rule
                .and_then(|r| r.controls.quarantine_for)
                .unwrap_or(DEFAULT_QUARANTINE);
            quarantine(shared, conn, &rule_name, until);
            message.push_str(&format!(
                "; model access from this process is blocked for {}",
                humantime::format_duration(until)
            ));
        }
        return Verdict::Refuse(Refuse {
            rule: rule_name,
            findings: decision.findings,
            status,
            refusal,
            outcome: kind.into(),
            message,
            retry_after: None,
        });
    }
    let Some(rule) = decision.rule else {
        return Verdict::Forward(Forward {
            rule: rule_name,
            body: None,
            findings: decision.findings,
            store_prompts: None,
            budget: None,
            redacted: Vec::new(),
            strip_query_key: false,
            data: None,
        });
    };
    let controls = &rule.controls;
    let mut forward = Forward {
        rule: rule_name.clone(),
        body: None,
        findings: decision.findings.clone(),
        store_prompts: controls.store_prompts,
        budget: None,
        redacted: Vec::new(),
        strip_query_key: controls.credential.is_some(),
        data: None,
    };
    if !controls.data.is_empty() {
        let classifier = &state.policy.classifier;
        forward.data = Some(DataRules {
            rule: rule_name.clone(),
            actions: (0..classifier.classes().len())
                .map(|class| data_action(rule, classifier, class))
                .collect(),
            quarantine_for: controls.quarantine_for.unwrap_or(DEFAULT_QUARANTINE),
            unreadable_blocks: controls.unparseable == Unparseable::Block,
            state: state.clone(),
        });
    }
    if decision.redact {
        let classifier = &state.policy.classifier;
        let redact =
            |class: usize| data_action(rule, classifier, class) == Some(DataAction::Redact);
        let replaced = match &body.form {
            Form::Json(_) => classifier.redact_json(&body.bytes, redact),
            Form::Text => std::str::from_utf8(&body.bytes)
                .ok()
                .and_then(|text| classifier.redact_text(text, redact))
                .map(|(text, counts)| (text.into_bytes(), counts)),
            _ => None,
        };
        match replaced {
            Some((replaced, counts)) => {
                forward.body = Some(Bytes::from(replaced));
                forward.redacted = counts
                    .into_iter()
                    .map(|(class, n)| (classifier.classes()[class].name.clone(), n))
                    .collect();
            }
            // Found but not replaceable: it must not leave as it is.
            None => {
                return Verdict::Refuse(Refuse {
                    rule: rule_name.clone(),
                    findings: decision.findings,
                    status: StatusCode::FORBIDDEN,
                    refusal: Refusal::Policy,
                    outcome: Outcome::DataBlocked,
                    message: format!(
                        "modelgate: the prompt holds data policy rule `{rule_name}` redacts, and \
                         this request body cannot be redacted safely; it was not sent"
                    ),
                    retry_after: None,
                });
            }
        }
    }

    if controls.managed_keys || controls.credential.is_some() {
        if let Some(key) = credentials::app_key(headers, query) {
            let who = conn.info.identity.who();
            let mut alert = Alert::new(
                "unmanaged-key",
                Severity::High,
                format!(
                    "{who} sent its own provider key ({}) where policy rule `{rule_name}` says keys are managed by the gateway",
                    fingerprint(&key)
                ),
            );
            alert.rule = Some(rule_name.clone());
            alert.provider = Some(conn.info.provider.clone());
            alert.host = Some(host.to_string());
            alert.identity = Some(conn.info.identity.clone());
            alert
                .details
                .insert("key_fingerprint".into(), json!(fingerprint(&key)));
            shared.alerts.send(alert.with_id());
        }
        if let Some(spec) = &controls.credential {
            let azure = conn.info.api == Some(Api::AzureOpenai);
            let injected = match shared.credentials.resolve(spec).await {
                Ok(secret) => credentials::inject(family, azure, headers, &secret),
                Err(err) => Err(err),
            };
            if let Err(err) = injected {
                return Verdict::Refuse(Refuse {
                    rule: rule_name.clone(),
                    findings: forward.findings,
                    status: StatusCode::BAD_GATEWAY,
                    refusal: Refusal::Upstream,
                    outcome: Outcome::CredentialError,
                    message: format!(
                        "modelgate: the credential of rule `{rule_name}` is unavailable: {}",
                        crate::errors::chain(&err)
                    ),
                    retry_after: None,
                });
            }
        }
    }

    if let Some(budget) = &controls.budget {
        let key = budget_key(budget.per, conn, &rule_name);
        let checked = shared.budgets.lock().expect("budget lock poisoned").check(
            &rule_name,
            &key,
            &budget.limits(),
            SystemTime::now(),
        );
        if let Err(exceeded) = checked {
            return Verdict::Refuse(Refuse {
                rule: rule_name.clone(),
                findings: forward.findings,
                status: StatusCode::TOO_MANY_REQUESTS,
                refusal: Refusal::Budget,
                outcome: Outcome::BudgetExceeded,
                message: format!("modelgate: {} (policy rule `{rule_name}`)", exceeded.reason),
                retry_after: Some(exceeded.retry_after_secs),
            });
        }
        forward.budget = Some((rule_name.clone(), key));
    }
    Verdict::Forward(forward)
}

/// Findings the rule acts on (or asks to hear about) are security's
/// business: one alert per request, naming the classes.
pub(super) fn report_findings(shared: &Shared, conn: &Conn, rule: &str, findings: &[DataFinding]) {
    let flagged: Vec<&DataFinding> = findings
        .iter()
        .filter(|f| matches!(f.action, Some("alert" | "redact" | "block" | "quarantine")))
        .collect();
    if flagged.is_empty() {
        return;
    }
    // Redacted data did not leave; blocked or quarantined data tried to.
    let severe = flagged
        .iter()
        .any(|f| matches!(f.action, Some("block" | "quarantine")));
    let classes: Vec<String> = flagged.iter().map(|f| f.class.clone()).collect();
    let mut alert = Alert::new(
        "data-finding",
        if severe {
            Severity::High
        } else {
            Severity::Warning
        },
        format!(
            "a prompt contained {} (policy rule `{rule}`)",
            classes.join(", ")
        ),
    );
    alert.rule = Some(rule.to_string());
    alert.provider = Some(conn.info.provider.clone());
    alert.identity = Some(conn.info.identity.clone());
    alert.details.insert("classes".into(), Value::from(classes));
    let places: serde_json::Map<String, Value> = flagged
        .iter()
        .map(|f| (f.class.clone(), Value::from(f.places.clone())))
        .collect();
    alert.details.insert("where".into(), Value::Object(places));
    let actions: serde_json::Map<String, Value> = flagged
        .iter()
        .map(|f| (f.class.clone(), Value::from(f.action.unwrap_or_default())))
        .collect();
    alert
        .details
        .insert("actions".into(), Value::Object(actions));
    shared.alerts.send(alert.with_id());
}

fn budget_key(per: BudgetKey, conn: &Conn, rule: &str) -> String {
    let id = &conn.info.identity;
    let or_unknown = |v: Option<&str>| v.unwrap_or("unknown").to_string();
    match per {
        BudgetKey::Exe => or_unknown(id.exe.as_deref()),
        BudgetKey::Unit => or_unknown(id.cgroup_info.unit.as_deref()),
        BudgetKey::Container => or_unknown(id.cgroup_info.container_id.as_deref()),
        BudgetKey::User => id.user.clone().unwrap_or_else(|| id.uid.to_string()),
        BudgetKey::Rule => rule.to_string(),
    }
}

pub(super) fn quarantine(shared: &Shared, conn: &Conn, rule: &str, duration: Duration) {
    let mut alert = Alert::new(
        "quarantine",
        Severity::Critical,
        format!(
            "model access of {} (pid {}) is blocked in the kernel for {} by rule `{rule}`",
            conn.info.identity.who(),
            conn.info.identity.tgid,
            humantime::format_duration(duration)
        ),
    );
    alert.rule = Some(rule.to_string());
    alert.provider = Some(conn.info.provider.clone());
    alert.identity = Some(conn.info.identity.clone());
    shared.alerts.send(alert.with_id());
    let _ = shared.control.try_send(super::Control::Quarantine {
        tgid: conn.info.identity.tgid,
        until: std::time::Instant::now() + duration,
        rule: rule.to_string(),
    });
}
