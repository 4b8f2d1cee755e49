//! `cargo xtask bench classify`: what data classification costs.
//!
//! 1. The detectors alone: `modelgate-bench classify` (the agent crate's
//!    bench helper, built with its `bench` feature) times `scan_json` and
//!    `redact_json` over chat requests of about 1 KB, 32 KB and 1 MB on one
//!    thread; we pin it to one CPU and tabulate.
//! 2. What they add to a request: the proxy rig (`rig.rs`) and its
//!    single-client latency mode, with a 32 KB chat request of prose
//!    holding two e-mail addresses and no secret, sent directly, then
//!    through the proxy with no rules, then (after the policy file is
//!    swapped and the agent has reloaded it) with a rule whose data
//!    controls block secrets and redact personal data. The difference
//!    between the two proxied runs is the classification; the server checks
//!    that the bodies it got were redacted.

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use super::{
    client,
    http_client::Mode,
    rig::{self, AGENT_CPU, CLIENT_CPU, ClientOpts, Rig, Run, check_audit, check_upstream},
    upstream::REDACTED,
};
use crate::{build_cmd, util};

const TARGET_MB_PER_S: f64 = 200.0;
/// The request body of the latency runs.
const BODY_BYTES: usize = 32 * 1024;
const EMAIL_MARKER: &str = "[REDACTED:email]";

const NO_CONTROLS_YAML: &str = "\
# Written by `cargo xtask bench classify`: redirect, no data controls.
default_action: redirect
rules: []
";
const DATA_CONTROLS_YAML: &str = "\
# Written by `cargo xtask bench classify`: one rule with data controls.
default_action: redirect
rules:
  - name: protect-data
    action: redirect
    controls:
      data:
        secret: block
        pii: redact
";

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// Seconds the detector bench spends on each body size and operation.
    #[arg(long, default_value_t = 1.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Measured requests of each 32 KB latency run (after 100 warm-up ones).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

pub fn run(args: &ClassifyArgs) -> Result<()> {
    let bin = rig::prepare("classify", &rig::UPSTREAM.to_string())?;
    let helper = build_cmd::build_bench_helper()?;
    detectors(&helper, args.seconds)?;
    super::check_interrupted()?;
    latency(&bin, args.requests)
}

/// Runs `modelgate-bench classify` on one CPU and prints its figures.
fn detectors(helper: &Path, seconds: f64) -> Result<()> {
    let cpu = [AGENT_CPU, CLIENT_CPU]
        .into_iter()
        .find(|&cpu| client::can_use_cpu(cpu));
    let mut cmd = Command::new(helper);
    cmd.args(["classify", "--seconds", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    client::place(&mut cmd, None, cpu)?;
    println!(
        "bench: detector throughput: `{}`{}",
        util::display(&cmd),
        cpu.map(|c| format!(", pinned to CPU {c}"))
            .unwrap_or_else(|| ", not pinned".into())
    );
    let out = cmd.output();
    super::check_interrupted()?;
    let out = out.with_context(|| format!("running `{}`", util::display(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", util::display(&cmd), out.status);
    }
    let rows = parse_rows(&String::from_utf8_lossy(&out.stdout))?;
    for warning in check_rows(&rows) {
        eprintln!("bench: WARNING: modelgate-bench classify output: {warning}");
    }
    print_table(&rows, seconds, cpu);
    Ok(())
}

/// One line of `modelgate-bench classify`'s output.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    operation: String,
    bytes: u64,
    iterations: u64,
    mb_per_s: f64,
    us_per_body: f64,
}

fn parse_rows(text: &str) -> Result<Vec<Row>> {
    let rows = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let value: Value = serde_json::from_str(line).with_context(|| {
                format!("modelgate-bench classify printed {line:?}, not a JSON line")
            })?;
            let field = |key: &str| {
                value.get(key).with_context(|| {
                    format!("modelgate-bench classify printed {line:?}, without `{key}`")
                })
            };
            let number = |key: &str| {
                field(key)?.as_f64().with_context(|| {
                    format!("modelgate-bench classify printed {line:?}: `{key}` is not a number")
                })
            };
            let count = |key: &str| {
                field(key)?.as_u64().with_context(|| {
                    format!("modelgate-bench classify printed {line:?}: `{key}` is not a count")
                })
            };
            Ok(Row {
                operation: field("operation")?
                    .as_str()
                    .with_context(|| {
                        format!(
                            "modelgate-bench classify printed {line:?}: `operation` is not a string"
                        )
                    })?
                    .to_owned(),
                bytes: count("bytes")?,
                iterations: count("iterations")?,
                mb_per_s: number("mb_per_s")?,
                us_per_body: number("us_per_body")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if rows.is_empty() {
        bail!("modelgate-bench classify printed nothing on stdout: {text:?}");
    }
    Ok(rows)
}

const OPERATIONS: [&str; 2] = ["scan_json", "redact_json"];
const SIZES: [u64; 3] = [1024, 32 * 1024, 1024 * 1024];

/// What looks wrong in the rows: unknown operations, sizes other than
/// about 1 KB, 32 KB and 1 MB each with both operations, figures that do
/// not agree with each other.
fn check_rows(rows: &[Row]) -> Vec<String> {
    let mut warnings = Vec::new();
    for row in rows {
        if !OPERATIONS.contains(&row.operation.as_str()) {
            warnings.push(format!("unknown operation {:?}", row.operation));
        }
        // MB/s (10^6 bytes) is bytes per µs.
        let implied = row.bytes as f64 / row.us_per_body;
        if row.iterations == 0
            || !row.mb_per_s.is_finite()
            || row.mb_per_s <= 0.0
            || (implied - row.mb_per_s).abs() > row.mb_per_s * 0.01
        {
            warnings.push(format!(
                "{} of {} bytes: {} iterations, {} MB/s and {} µs per body do not agree",
                row.operation, row.bytes, row.iterations, row.mb_per_s, row.us_per_body
            ));
        }
    }
    for nominal in SIZES {
        for operation in OPERATIONS {
            let n = rows
                .iter()
                .filter(|r| r.operation == operation && nominal_size(r.bytes) == Some(nominal))
                .count();
            if n != 1 {
                warnings.push(format!(
                    "{n} {operation} rows for bodies of about {}, expected 1",
                    size_label(nominal)
                ));
            }
        }
    }
    for row in rows.iter().filter(|r| nominal_size(r.bytes).is_none()) {
        warnings.push(format!(
            "a body of {} bytes is not about 1 KB, 32 KB or 1 MB",
            row.bytes
        ));
    }
    warnings
}

/// The nominal size within 10% of `bytes`.
fn nominal_size(bytes: u64) -> Option<u64> {
    SIZES.into_iter().find(|&n| bytes.abs_diff(n) <= n / 10)
}

/// 1024 → "1 KB", 32768 → "32 KB", 1048576 → "1 MB" (binary units, rounded).
fn size_label(bytes: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    let bytes = bytes as f64;
    if bytes >= MB * 0.9 {
        format!("{:.0} MB", bytes / MB)
    } else {
        format!("{:.0} KB", bytes / 1024.0)
    }
}

fn print_table(rows: &[Row], seconds: f64, cpu: Option<usize>) {
    println!(
        "detector throughput (`modelgate-bench classify`, 1 thread{}, ~{seconds} s per size and \
         operation):",
        cpu.map(|c| format!(" on CPU {c}")).unwrap_or_default()
    );
    println!(
        "  {:<18} {:>12} {:>12}   {:>12} {:>12}",
        "body", "scan MB/s", "µs/body", "redact MB/s", "µs/body"
    );
    // Sizes in the order they came.
    let mut sizes: Vec<u64> = Vec::new();
    for row in rows {
        if !sizes.contains(&row.bytes) {
            sizes.push(row.bytes);
        }
    }
    let cell = |bytes: u64, operation: &str| {
        rows.iter()
            .find(|r| r.bytes == bytes && r.operation == operation)
            .map_or(("-".to_owned(), "-".to_owned()), |r| {
                (
                    format!("{:.1}", r.mb_per_s),
                    format!("{:.1}", r.us_per_body),
                )
            })
    };
    for bytes in sizes {
        let (scan, scan_us) = cell(bytes, "scan_json");
        let (redact, redact_us) = cell(bytes, "redact_json");
        println!(
            "  {:<18} {scan:>12} {scan_us:>12}   {redact:>12} {redact_us:>12}",
            format!("{} ({} B)", size_label(bytes), super::group(bytes)),
        );
    }
    let slowest = rows.iter().min_by(|a, b| a.mb_per_s.total_cmp(&b.mb_per_s));
    println!(
        "target: over {TARGET_MB_PER_S:.0} MB/s on one core{}",
        slowest
            .map(|r| format!(
                " (slowest here: {} of {}, {:.1} MB/s)",
                r.operation,
                size_label(r.bytes),
                r.mb_per_s
            ))
            .unwrap_or_default()
    );
}

/// The 32 KB request directly, through the proxy without and with data
/// controls; prints the latencies and what classification adds.
fn latency(bin: &Path, requests: u32) -> Result<()> {
    let body = prompt_body(BODY_BYTES);
    let body_file = util::xtask_dir().join("bench-classify-body.json");
    fs::create_dir_all(util::xtask_dir())
        .with_context(|| format!("creating {}", util::xtask_dir().display()))?;
    fs::write(&body_file, &body).with_context(|| format!("writing {}", body_file.display()))?;
    println!(
        "bench: {}-byte chat request of prose with {} e-mail addresses and no secret: {}",
        super::group(body.len() as u64),
        EMAILS.len(),
        body_file.display()
    );

    let mut rig = Rig::start(bin, "classify", NO_CONTROLS_YAML)?;
    let opts = ClientOpts {
        requests,
        seconds: 1,
        clients: 1,
        body: Some(&body_file),
        ..ClientOpts::default()
    };
    let label = format!("{} request", size_label(BODY_BYTES as u64));
    let direct = rig.run_labeled(&opts, Mode::Latency, false, format!("{label} direct"))?;
    let direct_body = rig.last_body();
    let plain = rig.run_labeled(
        &opts,
        Mode::Latency,
        true,
        format!("{label} proxied, no data controls"),
    )?;
    let plain_body = rig.last_body();
    super::check_interrupted()?;
    rig.set_policy(DATA_CONTROLS_YAML, 1)?;
    println!("bench: policy reloaded: rule `protect-data` (data: secret block, pii redact)");
    let controlled = rig.run_labeled(
        &opts,
        Mode::Latency,
        true,
        format!("{label} proxied, data controls"),
    )?;
    let controlled_body = rig.last_body();
    let (audit, log) = (rig.audit.clone(), rig.log.clone());
    let (status, log_text) = rig.finish()?;

    let ms = |on: &Run, off: &Run, key: &str| (on.get(key) - off.get(key)) / 1000.0;
    println!(
        "{label} ({} B, 1 client, non-streaming, {} measured requests each): direct p50 {:.0} µs \
         p99 {:.0} µs; proxied without data controls p50 {:.0} µs p99 {:.0} µs; with data \
         controls p50 {:.0} µs p99 {:.0} µs",
        super::group(body.len() as u64),
        super::group(u64::from(requests)),
        direct.get("p50_us"),
        direct.get("p99_us"),
        plain.get("p50_us"),
        plain.get("p99_us"),
        controlled.get("p50_us"),
        controlled.get("p99_us"),
    );
    println!(
        "the proxy without data controls adds p50 {:.2} ms, p99 {:.2} ms to a {label}",
        ms(&plain, &direct, "p50_us"),
        ms(&plain, &direct, "p99_us"),
    );
    println!(
        "classification adds p50 {:.2} ms, p99 {:.2} ms to a {label}",
        ms(&controlled, &plain, "p50_us"),
        ms(&controlled, &plain, "p99_us"),
    );
    check_redaction(&body, [&direct, &plain], [&direct_body, &plain_body]);
    check_redacted(&controlled, &controlled_body);
    let runs = [&direct, &plain, &controlled];
    check_upstream(&runs);
    check_audit(&runs, &audit);
    super::print_final_counters(status, &log_text, &log);
    Ok(())
}

/// The runs without data controls: nothing redacted, the body unchanged.
fn check_redaction(sent: &[u8], runs: [&Run; 2], last: [&[u8]; 2]) {
    for (run, last) in runs.into_iter().zip(last) {
        if run.upstream.redacted != 0 || last != sent {
            eprintln!(
                "bench: WARNING: {}: the server got {} redacted bodies, and the last body {} \
                 the one sent; expected none redacted and the body unchanged",
                run.label(),
                run.upstream.redacted,
                if last == sent { "was" } else { "was not" }
            );
        }
    }
}

/// The run with data controls: every body the server got was redacted, and
/// the last one has each address replaced and nothing else.
fn check_redacted(run: &Run, last: &[u8]) {
    let (redacted, total) = (run.upstream.redacted, run.upstream.total());
    let text = String::from_utf8_lossy(last);
    let markers = markers(&text);
    let emails = markers.get("email").copied().unwrap_or(0);
    let others: Vec<String> = markers
        .iter()
        .filter(|(class, _)| **class != "email")
        .map(|(class, n)| format!("{n} × {REDACTED}{class}]"))
        .collect();
    let left: Vec<&str> = EMAILS
        .iter()
        .copied()
        .filter(|e| contains(last, e.as_bytes()))
        .collect();
    let valid_json = serde_json::from_slice::<Value>(last).is_ok();
    println!(
        "redaction: the server got {} of {} bodies of the data-controls run redacted; the last \
         holds {emails} × {EMAIL_MARKER}{}, {} and is {}",
        super::group(redacted),
        super::group(total),
        if others.is_empty() {
            ", no other marker".to_owned()
        } else {
            format!(", and {}", others.join(", "))
        },
        match left.len() {
            0 => "none of the addresses sent in clear".to_owned(),
            n => format!("{n} of the {} addresses sent in clear", EMAILS.len()),
        },
        if valid_json {
            "valid JSON"
        } else {
            "NOT valid JSON"
        }
    );
    if redacted != total
        || total == 0
        || emails != EMAILS.len()
        || !others.is_empty()
        || !left.is_empty()
        || !valid_json
    {
        eprintln!(
            "bench: WARNING: REDACTION MISMATCH: expected every body redacted, with {} × \
             {EMAIL_MARKER}, no other marker, no address left and valid JSON",
            EMAILS.len()
        );
    }
}

/// `class → count` of the `[REDACTED:class]` markers in `text` (class
/// names are kebab-case).
fn markers(text: &str) -> BTreeMap<&str, usize> {
    let mut found = BTreeMap::new();
    for (at, _) in text.match_indices(REDACTED) {
        let rest = &text[at + REDACTED.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].starts_with(']') {
            *found.entry(&rest[..end]).or_insert(0) += 1;
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The addresses in the prompt: personal data to redact.
const EMAILS: [&str; 2] = ["maria.lopez@example.com", "platform-oncall@example.org"];

const INTRO: &str = "Please read the notes below from our planning meetings about the new \
    customer portal, summarize them in a few paragraphs, and list the open questions with the \
    people who should answer them.";

/// Sentences of the prompt that mention an address, one per entry of EMAILS.
const CONTACT_SENTENCES: [&str; 2] = [
    "If anything in these notes is unclear, write to maria.lopez@example.com before the review \
     so that the answers can go into the next draft.",
    "Problems found during the rollout should be reported to platform-oncall@example.org, and \
     the person on call will decide whether to pause it.",
];

/// Plain prose: no digits, no long tokens, no quotes, nothing any detector
/// should report.
const SENTENCES: &[&str] = &[
    "The team agreed that the first release should focus on the account pages and leave the \
     reporting features for later.",
    "Several customers told us that the current portal is slow and hard to navigate on a phone.",
    "We discussed whether to rebuild the navigation from scratch or to improve the existing \
     menus one step at a time.",
    "Most people preferred the gradual approach, because it lets us learn from real usage \
     before we commit to a large redesign.",
    "The design group will share rough sketches of the new layout by the end of the month.",
    "Engineering raised a concern about the old authentication service, which nobody on the \
     current team knows well.",
    "We need a short written plan for replacing it, including how long both systems would run \
     side by side.",
    "Support staff asked for a simple way to see what a customer sees, without asking for \
     their password.",
    "That request was well received, but the security review has to approve it before anyone \
     starts building it.",
    "The billing pages are out of scope for now, since the finance team is still choosing a \
     new provider.",
    "Someone suggested running a small pilot with a handful of friendly customers before the \
     wider launch.",
    "The pilot should last long enough to cover at least one full billing cycle.",
    "We still have not decided how to collect feedback during the pilot, and this needs an \
     owner.",
    "Accessibility came up again, and the group agreed that every new page must work well with \
     a screen reader.",
    "The documentation for the public interface is out of date and confuses partners who \
     build on top of it.",
    "Marketing would like the launch to line up with the spring campaign, but nobody wants to \
     promise a date yet.",
    "There was a long discussion about error messages, which are often vague and do not tell \
     people what to do next.",
    "The proposal is to write every message in plain language and to include a clear next \
     step.",
    "Performance testing will happen in the staging environment, with data that looks like \
     production but contains no real customer details.",
    "The operations team asked for dashboards that show response times and error rates for \
     each page.",
    "We agreed to keep the old portal available for a while, so that customers can switch back \
     if something breaks.",
    "Training for the support team should start a few weeks before the launch, not on the same \
     day.",
    "Legal wants to review the new privacy notice and the wording of the consent screens.",
    "The mobile layout will be tested on a range of older phones as well as the latest models.",
    "Nobody is sure yet who owns the search feature, and that question has come up in three \
     meetings now.",
    "A few people worry that the scope keeps growing, and they asked for a firm list of what \
     is in and what is out.",
    "The product lead promised to write that list and to circulate it before the next \
     planning session.",
    "Translations will be handled by the same agency as before, although their turnaround has \
     been slow.",
    "We should decide early which languages are needed for the pilot and which can wait.",
    "The session ended with a reminder that decisions belong in the shared notes, not in \
     private messages.",
];

/// An OpenAI-style chat request of about `size` bytes (never more) whose
/// user message is English prose with the EMAILS in it and no secret.
fn prompt_body(size: usize) -> Vec<u8> {
    let budget = size.saturating_sub(chat_request("").len());
    chat_request(&prose(budget))
}

fn chat_request(content: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant for a product team."},
            {"role": "user", "content": content},
        ],
        "temperature": 0.2,
    }))
    .expect("plain data")
}

/// Prose whose JSON string encoding (only `\n` is escaped: the sentences
/// hold no quote, backslash or control character) is at most `budget`
/// bytes: paragraphs of five or six sentences, with CONTACT_SENTENCES at
/// about a third and two thirds of the way. The same every call.
fn prose(budget: usize) -> String {
    let encoded = |s: &str| s.len() + s.matches('\n').count();
    let mut out = String::from(INTRO);
    let mut used = encoded(&out);
    let mut contacts = 0;
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut in_paragraph = usize::MAX;
    loop {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let sentence = match CONTACT_SENTENCES.get(contacts) {
            Some(contact) if used >= (contacts + 1) * budget / 3 => {
                contacts += 1;
                contact
            }
            _ => SENTENCES[rng as usize % SENTENCES.len()],
        };
        let new_paragraph = in_paragraph >= 5 + (rng >> 32) as usize % 2;
        let separator = if new_paragraph { "\n\n" } else { " " };
        if used + encoded(separator) + encoded(sentence) > budget {
            return out;
        }
        out.push_str(separator);
        out.push_str(sentence);
        used += encoded(separator) + encoded(sentence);
        in_paragraph = if new_paragraph { 1 } else { in_paragraph + 1 };
    }
}
