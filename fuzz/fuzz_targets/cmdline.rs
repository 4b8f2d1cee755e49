//! The command-line masker: argv is chosen by whoever started the process,
//! and the masked line leaves the host in every record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use modelgate::identity::cmdline::{mask_cmdline, split_raw};

/// Secrets planted among the fuzzed args: whatever surrounds them, they
/// must never be shown.
const OPENAI_KEY: &str = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXyZ0";
const OPTION_VALUE: &str = "Zq8vTt3LmW0pX7yRkB2n";

fuzz_target!(|data: &[u8]| {
    // Byte 0: the length cap (scaled) and where the secrets go; then a
    // raw NUL-separated cmdline, as /proc and exec events give it.
    let Some((&knob, raw)) = data.split_first() else {
        return;
    };
    let args = split_raw(raw);
    let max_len = usize::from(knob) * 8;
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let masked = mask_cmdline(&refs, max_len);
    assert!(
        masked.len() <= max_len,
        "{} bytes for a cap of {max_len}",
        masked.len()
    );

    // libFuzzer copies the secrets into its own args (it sees them in
    // comparisons); there they are ordinary text, shown as any other.
    if refs
        .iter()
        .any(|a| a.contains(OPENAI_KEY) || a.contains(OPTION_VALUE))
    {
        return;
    }
    let at = usize::from(knob) % (refs.len() + 1);
    let mut planted = refs.clone();
    let option = format!("--api-key={OPTION_VALUE}");
    planted.insert(at, &option);
    planted.insert(at, OPENAI_KEY);
    let masked = mask_cmdline(&planted, usize::MAX);
    for secret in [OPENAI_KEY, OPTION_VALUE] {
        assert!(
            !masked.contains(secret),
            "{secret} shown in {masked:?} (args {planted:?})"
        );
    }
});
