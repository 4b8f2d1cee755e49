//! Values written into log fields.

/// Items for a log field, comma separated: `127.0.0.1, ::1`, not a Rust
/// debug form.
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
