//! Reading and validating policy files: `policy.yaml`, then every
//! `policy.d/*.yaml` in name order. Rules are concatenated in that order
//! (first match wins across files); `default_action` may be set only in
//! `policy.yaml`; `data_classes` from all files are merged.

use std::{path::Path, sync::Arc};

use serde::Deserialize;

use super::{Action, FILE_NAME, Policy, Rule};
use crate::{
    catalog::Catalog,
    classify::{Category, Classifier},
    yaml::{self, FileError, FileErrors},
};

pub const DROP_IN_DIR: &str = "policy.d";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    default_action: Option<Action>,
    #[serde(default)]
    rules: Vec<Rule>,
    /// Custom data classes: a name and a regex, usable in `data:` controls.
    #[serde(default)]
    data_classes: Vec<DataClass>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataClass {
    name: String,
    pattern: String,
}

pub fn load(dir: &Path, catalog: &Catalog) -> Result<Policy, FileErrors> {
    let main = dir.join(FILE_NAME);
    let mut files = vec![(main.display().to_string(), yaml::read(&main)?)];
    let drop_ins = dir.join(DROP_IN_DIR);
    if drop_ins.is_dir() {
        let mut paths: Vec<_> = std::fs::read_dir(&drop_ins)
            .map_err(|err| FileError {
                file: drop_ins.display().to_string(),
                line: None,
                column: None,
                field: None,
                message: format!("cannot list: {err}"),
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = yaml::read(&path)?;
            files.push((path.display().to_string(), text));
        }
    }
    merge(files, catalog)
}

/// One rule and where it came from, for error positions.
struct Placed<'a> {
    file: &'a str,
    text: &'a str,
    index: usize,
    rule: &'a Rule,
}

pub fn merge(files: Vec<(String, String)>, catalog: &Catalog) -> Result<Policy, FileErrors> {
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for (i, (file, text)) in files.iter().enumerate() {
        match yaml::parse::<PolicyFile>(file, text) {
            Ok(policy) => {
                if i > 0 && policy.default_action.is_some() {
                    errors.push(FileError {
                        file: file.clone(),
                        line: text
                            .lines()
                            .position(|l| l.starts_with("default_action"))
                            .map(|l| l + 1),
                        column: None,
                        field: Some("default_action".into()),
                        message: format!("default_action may be set only in {FILE_NAME}"),
                    });
                }
                parsed.push((file.as_str(), text.as_str(), policy));
            }
            Err(err) => errors.push(err),
        }
    }
    if !errors.is_empty() {
        return Err(FileErrors(errors));
    }

    let custom: Vec<(String, String)> = parsed
        .iter()
        .flat_map(|(_, _, p)| {
            p.data_classes
                .iter()
                .map(|c| (c.name.clone(), c.pattern.clone()))
        })
        .collect();
    let classifier = match Classifier::new(&custom) {
        Ok(classifier) => Arc::new(classifier),
        Err(err) => {
            let (file, text) = parsed
                .iter()
                .find(|(_, _, p)| !p.data_classes.is_empty())
                .map(|(f, t, _)| (*f, *t))
                .unwrap_or((files[0].0.as_str(), ""));
            return Err(FileError {
                file: file.to_string(),
                line: text
                    .lines()
                    .position(|l| l.trim_start().starts_with("data_classes"))
                    .map(|l| l + 1),
                column: None,
                field: Some("data_classes".into()),
                message: err.to_string(),
            }
            .into());
        }
    };

    let placed: Vec<Placed<'_>> = parsed
        .iter()
        .flat_map(|(file, text, policy)| {
            policy.rules.iter().enumerate().map(|(index, rule)| Placed {
                file,
                text,
                index,
                rule,
            })
        })
        .collect();
    for (n, here) in placed.iter().enumerate() {
        check_rule(&placed[..n], here, catalog, &classifier, &mut errors);
    }
    if !errors.is_empty() {
        return Err(FileErrors(errors));
    }
    let default_action = parsed[0].2.default_action.unwrap_or(Action::Monitor);
    Ok(Policy {
        default_action,
        rules: parsed.into_iter().flat_map(|(_, _, p)| p.rules).collect(),
        classifier,
    })
}

fn check_rule(
    earlier: &[Placed<'_>],
    here: &Placed<'_>,
    catalog: &Catalog,
    classifier: &Classifier,
    errors: &mut Vec<FileError>,
) {
    let rule = here.rule;
    let same_name_before = earlier
        .iter()
        .filter(|p| p.rule.name == rule.name && p.file == here.file)
        .count();
    let mut error = |field: String, message: String| {
        errors.push(FileError {
            file: here.file.to_string(),
            line: yaml::line_of(here.text, "name", &rule.name, same_name_before),
            column: None,
            field: Some(format!("rules[{}]{field}", here.index)),
            message,
        })
    };
    if let Some(first) = earlier.iter().find(|p| p.rule.name == rule.name) {
        error(
            ".name".into(),
            format!(
                "rule name `{}` is used twice (first in {}); names must be unique",
                rule.name, first.file
            ),
        );
    }
    for provider in &rule.matches.provider {
        if catalog.provider(&provider.0).is_none() {
            let known: Vec<&str> = catalog
                .providers
                .iter()
                .map(|p| p.name.0.as_str())
                .collect();
            error(
                ".match.provider".into(),
                format!(
                    "unknown provider `{provider}`; the catalog defines: {}",
                    known.join(", ")
                ),
            );
        }
    }
    if let Some(shadow) = earlier
        .iter()
        .find(|p| p.rule.matches.covers(&rule.matches))
    {
        error(
            String::new(),
            format!(
                "rule `{}` can never match: the earlier rule `{}` matches everything it does",
                rule.name, shadow.rule.name
            ),
        );
    }
    if rule.action == Action::Passthrough && rule.needs_proxy() {
        error(
            ".action".into(),
            "passthrough does not decrypt: it cannot check models, paths or prompts, nor apply \
             controls; use redirect"
                .into(),
        );
    }
    for key in rule.controls.data.keys() {
        let known = matches!(key.as_str(), "secret" | "pii" | "custom")
            || classifier.class_index(key).is_some();
        if !known {
            let names: Vec<&str> = classifier
                .classes()
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            error(
                format!(".controls.data.{key}"),
                format!(
                    "unknown data class `{key}`; use secret, pii, custom or one of: {}",
                    names.join(", ")
                ),
            );
        }
    }
    // Bedrock's SDKs sign the body (SigV4); rewriting it breaks the
    // signature, so a rule for it alone can only block or alert.
    let apis: Vec<_> = rule
        .matches
        .provider
        .iter()
        .filter_map(|p| catalog.provider(&p.0))
        .map(|p| p.api)
        .collect();
    let signed_only = !apis.is_empty() && apis.iter().all(|a| *a == crate::catalog::Api::Bedrock);
    if signed_only {
        for (key, action) in &rule.controls.data {
            if *action == super::controls::DataAction::Redact {
                error(
                    format!(".controls.data.{key}"),
                    "Bedrock requests are signed (SigV4) over their body, and a redacted body \
                     no longer matches the signature; use block or alert (a rule that also \
                     covers other providers redacts theirs and refuses a signed request instead)"
                        .into(),
                );
            }
        }
    }
    if let Some(credential) = &rule.controls.credential {
        let sources = [
            credential.env.is_some(),
            credential.file.is_some(),
            credential.command.as_ref().is_some_and(|c| !c.is_empty()),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            error(
                ".controls.credential".into(),
                "give exactly one of env, file or command (a non-empty list)".into(),
            );
        }
        let bedrock = rule
            .matches
            .provider
            .iter()
            .filter_map(|p| catalog.provider(&p.0))
            .any(|p| p.api == crate::catalog::Api::Bedrock);
        if bedrock {
            error(
                ".controls.credential".into(),
                "Bedrock requests are signed (SigV4); injecting a key is not supported for them"
                    .into(),
            );
        }
    }
    if let Some(budget) = &rule.controls.budget
        && let Err(problem) = budget.limits().validate()
    {
        error(".controls.budget".into(), problem);
    } else if let Some(budget) = &rule.controls.budget
        && budget.limits() == Default::default()
    {
        error(
            ".controls.budget".into(),
            "a budget needs at least one of requests_per_minute, requests_per_day, \
             tokens_per_day, usd_per_day"
                .into(),
        );
    }
}

/// A data class's configured action: its own entry, else its category's.
pub fn data_action(
    rule: &Rule,
    classifier: &Classifier,
    class: usize,
) -> Option<super::controls::DataAction> {
    let info = &classifier.classes()[class];
    let category = match info.category {
        Category::Secret => "secret",
        Category::Pii => "pii",
        Category::Custom => "custom",
    };
    rule.controls
        .data
        .get(&info.name)
        .or_else(|| rule.controls.data.get(category))
        .copied()
}
