//! Loading YAML files with errors that name the file, line and field.

use std::{fmt, path::Path};

use serde::de::DeserializeOwned;

/// A problem in a configuration file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the offending field, e.g. `rules[2].match.exe`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for FileError {}

/// Several problems found in one pass, so a user fixes them all at once.
#[derive(Debug, Clone, Default)]
pub struct FileErrors(pub Vec<FileError>);

impl fmt::Display for FileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FileErrors {}

impl From<FileError> for FileErrors {
    fn from(error: FileError) -> Self {
        FileErrors(vec![error])
    }
}

pub fn read(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|err| FileError {
        file: path.display().to_string(),
        line: None,
        column: None,
        field: None,
        message: format!("cannot read: {err}"),
    })
}

/// Deserializes `text`; serde_yaml_ng reports the field path and position of
/// the first problem, including ones raised by our own validating types.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, FileError> {
    serde_yaml_ng::from_str(text).map_err(|err| {
        let location = err.location();
        let raw = err.to_string();
        // The message reads "field.path: what went wrong at line L column C";
        // split it so the parts print in our own order.
        let without_position = match raw.rfind(" at line ") {
            Some(at) => raw[..at].to_string(),
            None => raw,
        };
        let (field, message) = split_field(&without_position);
        FileError {
            file: file.to_string(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            field,
            message,
        }
    })
}

fn split_field(message: &str) -> (Option<String>, String) {
    if let Some((head, rest)) = message.split_once(": ") {
        let looks_like_path = !head.is_empty()
            && !head.contains(' ')
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.[]".contains(c));
        if looks_like_path {
            return (Some(head.to_string()), rest.to_string());
        }
    }
    (None, message.to_string())
}

/// The 1-based line of the `nth` (0-based) list item whose `key` is `value`,
/// for errors found after parsing (duplicates, cross-file references).
pub fn line_of(text: &str, key: &str, value: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim_start().trim_start_matches("- ").trim_start();
            let Some(rest) = line.strip_prefix(key) else {
                return false;
            };
            let Some(rest) = rest.trim_start().strip_prefix(':') else {
                return false;
            };
            let rest = rest.split(" #").next().unwrap_or("").trim();
            rest.trim_matches(|c| c == '"' || c == '\'') == value
        })
        .nth(nth)
        .map(|(index, _)| index + 1)
}

/// `90s`, `10m`, `1h` in settings files.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let raw = String::deserialize(de)?;
        humantime::parse_duration(&raw).map_err(|err| {
            serde::de::Error::custom(format!(
                "`{raw}` is not a duration like 500ms, 90s, 10m or 1h: {err}"
            ))
        })
    }
}

/// A [`duration`] that must be longer than 0s: a timeout or a period.
pub mod positive_duration {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let duration = super::duration::deserialize(de)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "the duration must be longer than 0s",
            ));
        }
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        port: u16,
    }

    #[test]
    fn parse_errors_name_line_and_field() {
        let text = "items:\n  - name: a\n    port: 1\n  - name: b\n    port: 99999\n";
        let err = parse::<Doc>("f.yaml", text).unwrap_err();
        assert_eq!(err.line, Some(5), "line of the bad port: {err}");
        assert_eq!(err.field.as_deref(), Some("items[1].port"), "{err}");
        assert!(err.to_string().starts_with("f.yaml:5:"), "{err}");
    }

    #[test]
    fn unknown_fields_are_errors() {
        let text = "items:\n  - name: a\n    port: 1\n    colour: red\n";
        let err = parse::<Doc>("f.yaml", text).unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn line_of_finds_the_nth_item() {
        let text = "a:\n  - name: x\n  - name: \"y\"\n  - name: x # again\n";
        assert_eq!(line_of(text, "name", "x", 0), Some(2));
        assert_eq!(line_of(text, "name", "y", 0), Some(3));
        assert_eq!(line_of(text, "name", "x", 1), Some(4));
        assert_eq!(line_of(text, "name", "z", 0), None);
    }
}
