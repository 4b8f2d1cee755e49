//! The DNS bench's unit tests: the rate search, the log reading.

use super::*;

#[test]
fn rounds_rates_between_steps() {
    assert_eq!(round_rate(7_500), 7_500);
    assert_eq!(round_rate(7_612), 7_500);
    assert_eq!(round_rate(15_000), 15_000);
    assert_eq!(round_rate(15_499), 15_000);
    assert_eq!(round_rate(120_000), 120_000);
    assert_eq!(round_rate(1_130), 1_250);
}

#[test]
fn reads_map_updates_and_problems_from_the_log() {
    let log = r#"{"level":"INFO","message":"modelgate ready"}
{"level":"INFO","added":1,"removed":0,"total":3,"message":"endpoint maps updated"}
{"level":"INFO","added":2,"removed":1,"total":4,"message":"endpoint maps updated"}
{"level":"WARN","lost_total":5,"lost_new":5,"message":"the kernel dropped events"}
{"level":"ERROR","message":"inserting into MG_ENDPOINTS (is it full?)"}
{"level":"ERROR","message":"again"}
not json
"#;
    let mut step = Step::default();
    read_log(log, &mut step);
    assert_eq!((step.map_updates, step.map_added), (2, 3));
    assert_eq!((step.errors, step.warnings), (2, 1));
    assert_eq!(
        step.first_error.as_deref(),
        Some("inserting into MG_ENDPOINTS (is it full?)")
    );
    let warning = step.first_warning.unwrap();
    assert!(
        warning.starts_with("the kernel dropped events "),
        "{warning}"
    );
    assert!(warning.contains("lost_new=5") && warning.contains("lost_total=5"));
}

#[test]
fn reads_log_timestamps() {
    assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(unix_seconds("2000-02-29T23:59:59Z"), Some(951_868_799.0));
    let t = unix_seconds("2026-11-26T03:50:13.027670Z").unwrap();
    assert!((t - 1_795_665_013.027_67).abs() < 1e-5, "{t}");
    assert_eq!(unix_seconds("2026-11-26 03:50:13Z"), None);
    assert_eq!(unix_seconds("2026-11-26T03:50:13"), None);
}

#[test]
fn measures_the_closing_pace() {
    // 1,500 new addresses, one every 2 ms: 500/s.
    let log: String = (0..1_500u64)
        .map(|i| {
            let ms = i * 2;
            format!(
                "{{\"timestamp\":\"2026-11-26T03:50:{:02}.{:03}000Z\",\"level\":\"INFO\",\
                 \"message\":\"endpoint maps updated\",\"added\":1,\"removed\":0,\
                 \"total\":{}}}\n",
                ms / 1000,
                ms % 1000,
                i + 1
            )
        })
        .collect();
    let mut step = Step::default();
    read_log(&log, &mut step);
    assert_eq!(step.map_added, 1_500);
    let rate = step.tail_rate.expect("a pace");
    assert!((rate - 500.0).abs() < 1.0, "{rate}");
    assert_eq!(step.tail_total, 1_500);
    // Fewer new addresses than TAIL: no pace.
    let mut short = Step::default();
    read_log(&log[..log.len() / 2], &mut short);
    assert_eq!(short.tail_rate, None);
}

/// A fake step: lossless up to `capacity`, answers up to `generator`.
fn fake(capacity: u64, generator: u64) -> impl FnMut(u64) -> Result<Step> {
    move |rate| {
        let answered = rate.min(generator) * 3;
        Ok(Step {
            rate,
            answered,
            seconds: 3.0,
            matches: Some(answered),
            lost: Some(rate.saturating_sub(capacity)),
            ..Step::default()
        })
    }
}

fn rates(found: &Search) -> Vec<u64> {
    found.steps.iter().map(|s| s.rate).collect()
}

const LADDER: [u64; 5] = [5_000, 10_000, 20_000, 40_000, 80_000];

#[test]
fn steps_up_refines_and_doubles() {
    let found = search(&LADDER, 1, fake(16_000, u64::MAX)).unwrap();
    assert_eq!(rates(&found), [5_000, 10_000, 20_000, 15_000, 30_000]);
    assert_eq!(found.best.map(|i| found.steps[i].rate), Some(15_000));
    assert_eq!(found.double, Some(4));
    assert!(!found.saturated);
    // Without refinement, 2× the last lossless step.
    let found = search(&LADDER, 0, fake(16_000, u64::MAX)).unwrap();
    assert_eq!(rates(&found), [5_000, 10_000, 20_000, 20_000]);
}

#[test]
fn steps_down_when_the_first_rate_loses() {
    let found = search(&LADDER, 1, fake(1_500, u64::MAX)).unwrap();
    assert_eq!(rates(&found), [5_000, 2_500, 1_250, 2_000, 2_500]);
    assert_eq!(found.best.map(|i| found.steps[i].rate), Some(1_250));
    let found = search(&LADDER, 1, fake(0, u64::MAX)).unwrap();
    assert_eq!(found.best, None);
    assert_eq!(found.double, None);
    assert_eq!(found.steps.last().map(|s| s.rate), Some(312));
}

#[test]
fn stops_where_the_load_generator_does() {
    let found = search(&LADDER, 1, fake(u64::MAX, 50_000)).unwrap();
    assert_eq!(rates(&found), [5_000, 10_000, 20_000, 40_000, 80_000]);
    assert!(found.saturated);
    assert_eq!(found.best, Some(4));
    assert_eq!(found.double, None);
    let found = search(&LADDER, 1, fake(u64::MAX, 30_000)).unwrap();
    assert_eq!(rates(&found), [5_000, 10_000, 20_000, 40_000]);
}

#[test]
fn no_counters_is_not_no_loss() {
    let step = Step {
        matches: Some(10),
        lost: None,
        ..Step::default()
    };
    assert!(step.lost());
    assert_eq!(step.delivered(), None);
    let step = Step {
        matches: Some(10),
        lost: Some(0),
        ..Step::default()
    };
    assert!(!step.lost());
    assert_eq!(step.delivered(), Some(10));
}
