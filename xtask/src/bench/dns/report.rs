//! What `bench dns` prints: each step as it ends, then the table, the
//! headline (the no-loss rate and the loss at twice it) and what the
//! figures mean over a longer stretch.

use std::path::Path;

use super::{CATCH_UP_LIMIT, Search, Step, TAIL};
use crate::bench::{group, rig::CLIENT_CPU};

/// A DNS event's ring-buffer record: the 560-byte event and the ring's
/// 8-byte record header. The ring is 4 MiB.
const RING_BYTES: u64 = 4 << 20;
const EVENT_RECORD: u64 = 560 + 8;

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "?".into(), group)
}

pub(super) fn print_step(step: &Step, log: &Path) {
    let g = group;
    let per_answer = step
        .delivered()
        .filter(|&d| d > 0)
        .map(|d| {
            format!(
                " ({:.1} µs per delivered answer)",
                step.agent_cpu * 1e6 / d as f64
            )
        })
        .unwrap_or_default();
    println!(
        "  {}/s: client sent {}, answered {} ({}/s){}; kernel dns_matches {}, dns_learned {}, \
         events_lost {}; delivered to the agent {}; agent CPU {:.2} s{per_answer}, {}",
        g(step.rate),
        g(step.sent),
        g(step.answered),
        g(step.answered_rate() as u64),
        match (step.client_errors, step.reached()) {
            (0, true) => String::new(),
            (0, false) => ", short of the rate (the client and server's CPU is saturated)".into(),
            (n, _) => format!(", {} client errors", g(n)),
        },
        opt(step.matches),
        opt(step.learned),
        opt(step.lost),
        opt(step.delivered()),
        step.agent_cpu,
        match step.catch_up {
            Some(s) => format!("idle {s:.1} s after the client"),
            None => format!(
                "still busy {} s after the client (stopped anyway)",
                CATCH_UP_LIMIT.as_secs()
            ),
        },
    );
    if let Some(rate) = step.tail_rate {
        println!(
            "    the agent absorbed its last {} new addresses at {}/s (holding {} by then)",
            g(TAIL),
            g(rate as u64),
            g(step.tail_total)
        );
    }
    if step.errors + step.warnings > 0 {
        println!(
            "    agent log ({}): {} errors, {} warnings{}{}",
            log.display(),
            g(step.errors),
            g(step.warnings),
            step.first_error
                .as_deref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default(),
            step.first_warning
                .as_deref()
                .map(|w| format!("; first warning: {w}"))
                .unwrap_or_default(),
        );
    }
    if let (Some(matches), true) = (step.matches, step.answered > 0)
        && matches < step.answered
    {
        eprintln!(
            "bench: WARNING: at {}/s the client got {} answers but the kernel matched only {}: \
             answers reached the client unseen by the learning program",
            step.rate, step.answered, matches
        );
    }
}

pub(super) fn print_table(steps: &[Step]) {
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by_key(|s| s.rate);
    println!(
        "{:>10} {:>11} {:>11} {:>11} {:>7} {:>11} {:>8} {:>9} {:>10} {:>9} {:>9}",
        "offered/s",
        "answered/s",
        "dns_matches",
        "events_lost",
        "lost %",
        "delivered",
        "CPU s",
        "µs/answer",
        "idle after",
        "map adds",
        "end pace/s"
    );
    for step in sorted {
        let lost_pct = match (step.lost, step.matches) {
            (Some(lost), Some(matches)) if matches > 0 => {
                format!("{:.1}%", lost as f64 * 100.0 / matches as f64)
            }
            _ => "?".into(),
        };
        let per = match step.delivered() {
            Some(d) if d > 0 => format!("{:.1}", step.agent_cpu * 1e6 / d as f64),
            _ => "?".into(),
        };
        println!(
            "{:>10} {:>11} {:>11} {:>11} {:>7} {:>11} {:>8.2} {:>9} {:>10} {:>9} {:>9}",
            group(step.rate),
            group(step.answered_rate() as u64),
            opt(step.matches),
            opt(step.lost),
            lost_pct,
            opt(step.delivered()),
            step.agent_cpu,
            per,
            step.catch_up.map_or_else(
                || format!(">{} s", CATCH_UP_LIMIT.as_secs()),
                |s| format!("{s:.1} s")
            ),
            group(step.map_added),
            step.tail_rate
                .map_or_else(|| "?".into(), |r| group(r as u64)),
        );
    }
    println!(
        "(delivered = dns_matches − events_lost: the answers that reached the agent, a lower \
         bound, as events_lost counts every kind of event and exec events from the whole host \
         share the ring; CPU s: the agent's, from the client's start until it went idle; map \
         adds: addresses the agent wrote to the endpoint map, one per new address it absorbed; \
         end pace: how fast it absorbed its last {} new addresses, from its log's timestamps)",
        group(TAIL)
    );
}

pub(super) fn print_headline(found: &Search) {
    let steps = &found.steps;
    let Some(best) = found.best.map(|i| &steps[i]) else {
        println!(
            "DNS learning, no loss: not reached — every rate down to {} answers/s lost events",
            group(steps.iter().map(|s| s.rate).min().unwrap_or(0))
        );
        return;
    };
    if found.saturated {
        println!(
            "DNS learning, no loss: ≥ {} answers/s — all this client and server could deliver \
             ({} offered; they share CPU {CLIENT_CPU}); the agent lost nothing there, so 2× was \
             not run",
            group(best.answered_rate() as u64),
            group(best.rate),
        );
        return;
    }
    println!(
        "DNS learning, no loss: {} answers/s (highest rate with events_lost = 0; the client \
         received {}/s, the kernel matched {})",
        group(best.rate),
        group(best.answered_rate() as u64),
        opt(best.matches)
    );
    let Some(step) = found.double.map(|i| &steps[i]) else {
        return;
    };
    let share = match (step.lost, step.matches) {
        (Some(lost), Some(matches)) if matches > 0 => {
            format!(" ({:.1}% of them)", lost as f64 * 100.0 / matches as f64)
        }
        _ => String::new(),
    };
    println!(
        "at 2× ({} answers/s offered, {}/s received{}): events_lost = {} of {} answers \
         matched{share}",
        group(step.rate),
        group(step.answered_rate() as u64),
        if step.reached() {
            ""
        } else {
            ", short of the rate: the client and server's CPU is saturated"
        },
        opt(step.lost),
        opt(step.matches),
    );
}

/// What the step figures mean over a longer stretch: the ring only buys
/// time, the agent's own pace is what lasts.
pub(super) fn print_sustained(steps: &[Step], seconds: f64) {
    let ring = RING_BYTES / EVENT_RECORD;
    println!(
        "the ring holds {} DNS events ({} MiB / {} B): a {seconds} s step loses nothing while \
         rate × {seconds} s − what the agent absorbs meanwhile ≤ {}, so the no-loss rate above \
         is a {seconds} s burst figure",
        group(ring),
        RING_BYTES >> 20,
        EVENT_RECORD,
        group(ring)
    );
    // The slowest closing pace seen with a backlog: what a long run gets.
    let slowest = steps
        .iter()
        .filter(|s| s.catch_up.is_none_or(|c| c > 1.0))
        .filter_map(|s| Some((s.tail_rate?, s.tail_total)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((rate, total)) = slowest {
        println!(
            "sustained: with a backlog the agent absorbed new addresses at {}/s when holding {} \
             (its closing pace); past that, rates above it fill the ring and then lose events",
            group(rate as u64),
            group(total)
        );
    }
}
