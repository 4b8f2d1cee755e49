//! `policies/prices.yaml`: list prices per provider and model glob, for the
//! dollar budgets. USD per 1M tokens, input and output; cached-input,
//! batch and long-context rates are not modelled, so a cost is the list
//! price of a plain call (an overestimate with caching, an underestimate
//! past a long-context threshold).

use std::{collections::BTreeMap, path::Path};

use globset::{GlobBuilder, GlobMatcher};

use super::price_file::RawFile;

/// A problem in the price table: the same file/line/field error as every
/// other configuration file.
pub type PriceError = crate::yaml::FileError;

/// The entry a model matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// The glob as written.
    pub model: String,
    /// USD per 1M input tokens.
    pub input: f64,
    /// USD per 1M output tokens.
    pub output: f64,
}

#[derive(Debug, Clone)]
struct Entry {
    price: Price,
    matcher: GlobMatcher,
}

/// Prices per provider (the endpoint catalog's names), in file order.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    providers: BTreeMap<String, Vec<Entry>>,
}

/// The price table's name in the policies directory.
pub const FILE_NAME: &str = "prices.yaml";

impl Prices {
    /// Loads `<dir>/prices.yaml`. A directory without one gives an empty
    /// table (no model has a price, so `usd_per_day` counts nothing) rather
    /// than an agent that will not start; a file that is there must be valid.
    pub fn load_dir(dir: &Path) -> Result<Prices, PriceError> {
        let path = dir.join(FILE_NAME);
        match std::fs::symlink_metadata(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Prices::default()),
            _ => Prices::load(&path),
        }
    }

    pub fn load(path: &Path) -> Result<Prices, PriceError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Prices::parse(&file, &text),
            Err(err) => Err(PriceError {
                file,
                line: None,
                column: None,
                field: None,
                message: format!("cannot read: {err}"),
            }),
        }
    }

    pub fn parse(file: &str, text: &str) -> Result<Prices, PriceError> {
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|err| yaml_error(file, &err))?;
        let mut providers = BTreeMap::new();
        for (provider, raw_entries) in raw.providers {
            if providers.contains_key(&provider) {
                return Err(PriceError {
                    file: file.to_string(),
                    line: provider_line(text, &provider, 1).map(|(index, _)| index + 1),
                    column: None,
                    field: Some(format!("providers.{provider}")),
                    message: "listed twice; merge the two lists".to_string(),
                });
            }
            let mut entries: Vec<Entry> = Vec::with_capacity(raw_entries.len());
            for (index, raw) in raw_entries.into_iter().enumerate() {
                if let Some(earlier) = entries
                    .iter()
                    .find(|e| shadows(&e.price.model, &raw.model.0))
                {
                    let later = &raw.model.0;
                    let nth = entries.iter().filter(|e| e.price.model == *later).count();
                    let line_of = |glob: &str, nth| model_line(text, &provider, glob, nth);
                    let earlier_line = line_of(&earlier.price.model, 0)
                        .map_or(String::new(), |line| format!(" on line {line}"));
                    return Err(PriceError {
                        file: file.to_string(),
                        line: line_of(later, nth),
                        column: None,
                        field: Some(format!("providers.{provider}[{index}].model")),
                        message: format!(
                            "\"{later}\" can never match: \"{}\"{earlier_line} comes first and \
                             matches every model it does; put the more specific glob first",
                            earlier.price.model
                        ),
                    });
                }
                entries.push(Entry {
                    price: Price {
                        model: raw.model.0,
                        input: raw.input.0,
                        output: raw.output.0,
                    },
                    matcher: raw.model.1,
                });
            }
            providers.insert(provider, entries);
        }
        Ok(Prices { providers })
    }

    /// The first entry of `provider` whose glob matches `model` (globs are
    /// case-insensitive: clients spell model names as they like).
    pub fn price(&self, provider: &str, model: &str) -> Option<&Price> {
        let entries = self.providers.get(provider)?;
        let entry = entries.iter().find(|e| e.matcher.is_match(model))?;
        Some(&entry.price)
    }

    /// USD for a call, or None when the provider or model has no price.
    pub fn cost(
        &self,
        provider: &str,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Option<f64> {
        let price = self.price(provider, model)?;
        let input = input_tokens as f64 * price.input;
        let output = output_tokens as f64 * price.output;
        Some((input + output) / 1_000_000.0)
    }
}

const META: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// Whether `earlier` matches every model `later` matches, as far as we can
/// tell cheaply: the same glob; a plain name the earlier glob matches; or
/// two `prefix*` globs where the earlier prefix starts the later one (the
/// usual mistake: `gpt-4o*` before `gpt-4o-mini*`). Anything subtler is let
/// through: a false alarm would block a valid file.
fn shadows(earlier: &str, later: &str) -> bool {
    let (earlier, later) = (earlier.to_ascii_lowercase(), later.to_ascii_lowercase());
    if earlier == later {
        return true;
    }
    if !later.contains(META) {
        return GlobBuilder::new(&earlier)
            .build()
            .is_ok_and(|glob| glob.compile_matcher().is_match(&later));
    }
    let prefix = |glob: &str| {
        glob.strip_suffix('*')
            .filter(|p| !p.contains(META))
            .map(str::to_string)
    };
    match (prefix(&earlier), prefix(&later)) {
        (Some(e), Some(l)) => l.starts_with(&e),
        _ => false,
    }
}

/// The 1-based line of the `nth` `model: <glob>` under `provider:`, for
/// errors found after parsing. A plain text scan: good enough to point a
/// human at the line; the field path in the error is exact regardless.
fn model_line(text: &str, provider: &str, glob: &str, nth: usize) -> Option<usize> {
    let (start, key_line) = provider_line(text, provider, 0)?;
    let indent = indent_of(key_line);
    text.lines()
        .enumerate()
        .skip(start + 1)
        // The section ends at the next line indented no deeper (YAML lets a
        // list sit at its key's indentation).
        .take_while(|(_, line)| {
            let item = line.trim_start().starts_with('-') && indent_of(line) == indent;
            is_blank(line) || indent_of(line) > indent || item
        })
        .filter(|(_, line)| {
            let line = line.trim_start().trim_start_matches('-').trim_start();
            line.strip_prefix("model:")
                .is_some_and(|rest| unquote(rest) == glob)
        })
        .nth(nth)
        .map(|(index, _)| index + 1)
}

/// The 0-based index and text of the `nth` indented `provider:` key line.
fn provider_line<'t>(text: &'t str, provider: &str, nth: usize) -> Option<(usize, &'t str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let trimmed = line.trim_start();
            let key = trimmed.split(':').next().unwrap_or("");
            indent_of(line) > 0 && !trimmed.starts_with('-') && unquote(key) == provider
        })
        .nth(nth)
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// A scalar as written, without a trailing comment or quotes.
fn unquote(value: &str) -> &str {
    let value = value.split(" #").next().unwrap_or("");
    value.trim().trim_matches(|c| c == '"' || c == '\'')
}

/// serde_yaml_ng says "field.path: what went wrong at line L column C";
/// split it so the parts print in our order.
fn yaml_error(file: &str, err: &serde_yaml_ng::Error) -> PriceError {
    let location = err.location();
    let raw = err.to_string();
    let message = match raw.rfind(" at line ") {
        Some(at) => raw[..at].to_string(),
        None => raw,
    };
    let (field, message) = match message.split_once(": ") {
        Some((head, rest))
            if !head.is_empty()
                && head
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c)) =>
        {
            (Some(head.to_string()), rest.to_string())
        }
        _ => (None, message),
    };
    PriceError {
        file: file.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        field,
        message,
    }
}
