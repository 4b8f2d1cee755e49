//! Typed errors keep their causes as `source()`; where one is logged or
//! answered without passing through anyhow, this spells out the chain.

/// `err: cause: cause ...`, as anyhow's `{:#}` prints it.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("removing the pin {0}")]
    struct Removing(&'static str, #[source] std::io::Error);

    #[test]
    fn every_cause_is_spelt_out() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Removing("/sys/fs/bpf/x", io);
        assert_eq!(
            super::chain(&err),
            "removing the pin /sys/fs/bpf/x: no such file"
        );
    }
}
