use std::{
    fs,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::*;

/// 2026-11-26T00:00:00Z.
const MIDNIGHT: u64 = 1_795_651_200;

fn at(secs_after_midnight: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(MIDNIGHT + secs_after_midnight)
}

fn hms(h: u64, m: u64, s: u64) -> SystemTime {
    at(h * 3600 + m * 60 + s)
}

fn per_day(n: u64) -> Limits {
    Limits {
        requests_per_day: Some(n),
        ..Limits::default()
    }
}

fn budgets() -> (tempfile::TempDir, Budgets) {
    let dir = tempfile::tempdir().expect("tempdir");
    let budgets = Budgets::new(dir.path());
    (dir, budgets)
}

fn state<'a>(states: &'a [BudgetState], rule: &str, key: &str) -> &'a BudgetState {
    states
        .iter()
        .find(|s| s.rule == rule && s.key == key)
        .expect("state of rule and key")
}

#[test]
fn n_per_day_admits_n_and_refuses_the_next_without_counting_it() {
    let (_dir, mut b) = budgets();
    let limits = per_day(3);
    for _ in 0..3 {
        b.check("dev", "/usr/bin/python3", &limits, hms(10, 0, 0))
            .expect("admitted");
    }
    let refused = b
        .check("dev", "/usr/bin/python3", &limits, hms(10, 0, 0))
        .expect_err("the fourth is refused");
    assert_eq!(refused.limit, "requests_per_day");
    assert_eq!((refused.used, refused.max), (3.0, 3.0));
    assert_eq!(refused.retry_after_secs, 14 * 3600, "until midnight UTC");
    for part in [
        "requests_per_day",
        "\"dev\"",
        "/usr/bin/python3",
        "2026-11-27T00:00:00Z",
    ] {
        assert!(refused.reason.contains(part), "{part} in: {refused}");
    }
    assert!(
        b.check("dev", "/usr/bin/python3", &limits, hms(11, 0, 0))
            .is_err()
    );
    let states = b.snapshot();
    assert_eq!(
        state(&states, "dev", "/usr/bin/python3").requests_day,
        3,
        "refusals not counted"
    );
}

#[test]
fn keys_and_rules_have_separate_budgets() {
    let (_dir, mut b) = budgets();
    let limits = per_day(1);
    b.check("dev", "alice", &limits, at(0)).expect("alice");
    assert!(b.check("dev", "alice", &limits, at(1)).is_err());
    b.check("dev", "bob", &limits, at(2))
        .expect("bob has his own");
    b.check("ci", "alice", &limits, at(3))
        .expect("another rule, another budget");
}

#[test]
fn minute_window_rolls_at_the_minute_boundary() {
    let (_dir, mut b) = budgets();
    let limits = Limits {
        requests_per_minute: Some(2),
        ..Limits::default()
    };
    b.check("r", "k", &limits, hms(12, 0, 10)).expect("1st");
    b.check("r", "k", &limits, hms(12, 0, 30)).expect("2nd");
    let refused = b.check("r", "k", &limits, hms(12, 0, 59)).expect_err("3rd");
    assert_eq!(refused.limit, "requests_per_minute");
    assert_eq!(refused.retry_after_secs, 1);
    assert!(refused.reason.contains("12:01:00Z"), "{refused}");
    b.check("r", "k", &limits, hms(12, 1, 0))
        .expect("a new minute");
}

#[test]
fn day_window_rolls_at_utc_midnight() {
    let (_dir, mut b) = budgets();
    let limits = per_day(1);
    b.check("r", "k", &limits, hms(0, 0, 0))
        .expect("first of the day");
    let refused = b
        .check("r", "k", &limits, hms(23, 59, 59))
        .expect_err("same day");
    assert_eq!(refused.retry_after_secs, 1);
    b.check("r", "k", &limits, hms(24, 0, 0)).expect("next day");
}

#[test]
fn day_limit_is_reported_before_the_minute_limit() {
    let (_dir, mut b) = budgets();
    let limits = Limits {
        requests_per_minute: Some(1),
        requests_per_day: Some(1),
        ..Limits::default()
    };
    b.check("r", "k", &limits, hms(9, 0, 0)).expect("first");
    let refused = b
        .check("r", "k", &limits, hms(9, 0, 1))
        .expect_err("both reached");
    assert_eq!(
        refused.limit, "requests_per_day",
        "the reset that helps a client"
    );
}

#[test]
fn tokens_and_dollars_refuse_once_the_total_reaches_the_limit() {
    let (_dir, mut b) = budgets();
    let limits = Limits {
        tokens_per_day: Some(1000),
        usd_per_day: Some(0.5),
        ..Limits::default()
    };
    b.check("r", "k", &limits, at(0)).expect("nothing used yet");
    b.record_usage("r", "k", 999, 0.1, at(1));
    b.check("r", "k", &limits, at(2)).expect("999 < 1000");
    b.record_usage("r", "k", 1, 0.1, at(3));
    let refused = b.check("r", "k", &limits, at(4)).expect_err("1000 tokens");
    assert_eq!(
        (refused.limit, refused.used, refused.max),
        ("tokens_per_day", 1000.0, 1000.0)
    );

    let limits = Limits {
        usd_per_day: Some(0.5),
        ..Limits::default()
    };
    b.check("r", "k2", &limits, at(5)).expect("nothing spent");
    b.record_usage("r", "k2", 10, 0.75, at(6));
    let refused = b
        .check("r", "k2", &limits, at(7))
        .expect_err("$0.75 of $0.50");
    assert_eq!(refused.limit, "usd_per_day");
    assert!(refused.reason.contains("$0.7500 of $0.5000"), "{refused}");
}

#[test]
fn bad_numbers_fail_closed_and_never_poison_totals() {
    let (_dir, mut b) = budgets();
    for usd in [f64::NAN, -1.0] {
        let limits = Limits {
            usd_per_day: Some(usd),
            ..Limits::default()
        };
        assert!(
            b.check("r", "k", &limits, at(0)).is_err(),
            "usd_per_day {usd} refuses"
        );
        assert!(limits.validate().is_err());
    }
    b.record_usage("r", "k", u64::MAX, f64::NAN, at(0));
    b.record_usage("r", "k", u64::MAX, f64::INFINITY, at(0));
    b.record_usage("r", "k", 1, -5.0, at(0));
    let s = b.snapshot();
    assert_eq!((s[0].tokens_day, s[0].usd_day), (u64::MAX, 0.0));
    // A clock before the epoch, or absurdly far ahead, is not a panic.
    let before = UNIX_EPOCH - Duration::from_secs(10);
    let _ = b.check("r", "k", &per_day(0), before);
    let far = UNIX_EPOCH
        .checked_add(Duration::from_secs(u64::MAX / 4))
        .expect("far");
    let refused = b.check("r", "far", &per_day(0), far).expect_err("limit 0");
    assert!(refused.retry_after_secs >= 1);
    let _ = b.snapshot_at(far);
}

#[test]
fn clock_stepping_back_keeps_the_window_and_a_bogus_future_one_is_replaced() {
    let (_dir, mut b) = budgets();
    let limits = per_day(1);
    b.check("r", "k", &limits, hms(24, 0, 5))
        .expect("just after midnight");
    assert!(
        b.check("r", "k", &limits, hms(23, 59, 50)).is_err(),
        "no fresh day"
    );
    let (_dir2, mut b2) = budgets();
    b2.check("r", "k", &limits, hms(24 * 30, 0, 0))
        .expect("a clock 30 days ahead");
    b2.check("r", "k", &limits, hms(1, 0, 0))
        .expect("the clock fixed: a new window");
}

#[test]
fn save_and_load_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = Limits {
        requests_per_day: Some(2),
        tokens_per_day: Some(100),
        ..Limits::default()
    };
    let mut b = Budgets::new(dir.path());
    b.check("dev", "alice", &limits, hms(8, 0, 0)).expect("1st");
    b.record_usage("dev", "alice", 40, 0.125, hms(8, 0, 1));
    b.check("dev", "bob", &limits, hms(8, 0, 2)).expect("bob");
    b.save().expect("save");
    assert!(dir.path().join(FILE_NAME).exists());

    let (mut restarted, warning) = Budgets::load(dir.path());
    assert_eq!(warning, None);
    assert_eq!(restarted.snapshot(), b.snapshot());
    let alice = state(&restarted.snapshot(), "dev", "alice").clone();
    assert_eq!(
        (alice.requests_day, alice.tokens_day, alice.usd_day),
        (1, 40, 0.125)
    );
    assert_eq!(alice.day, "2026-11-26");
    restarted
        .check("dev", "alice", &limits, hms(9, 0, 0))
        .expect("2nd");
    assert!(
        restarted
            .check("dev", "alice", &limits, hms(9, 0, 1))
            .is_err(),
        "no fresh budget"
    );
}

#[test]
fn save_writes_only_when_something_changed() {
    let (dir, mut b) = budgets();
    let file = dir.path().join(FILE_NAME);
    b.save().expect("nothing to save");
    assert!(!file.exists());
    b.check("r", "k", &per_day(5), at(0)).expect("admitted");
    b.save().expect("save");
    fs::remove_file(&file).expect("remove");
    b.save().expect("clean: no write");
    assert!(!file.exists());
    b.mark_unsaved();
    let job = b.take_save().expect("a job after mark_unsaved");
    assert!(b.take_save().is_none(), "taken");
    job.write().expect("write outside the lock");
    assert!(file.exists());
    assert!(
        !dir.path().join("budgets.json.tmp").exists(),
        "no temp file left"
    );
}

#[test]
fn a_failed_save_is_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blocker = dir.path().join("not-a-dir");
    fs::write(&blocker, "file where the state dir should be").expect("write");
    let mut b = Budgets::new(&blocker);
    b.check("r", "k", &per_day(5), at(0)).expect("admitted");
    assert!(b.save().is_err());
    assert!(b.take_save().is_some(), "still unsaved after the failure");
}

#[test]
fn corrupt_file_loads_empty_with_a_warning_and_is_kept_aside() {
    for text in ["{not json", "{\"version\": 99, \"entries\": []}", "[]"] {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(FILE_NAME), text).expect("write");
        let (b, warning) = Budgets::load(dir.path());
        assert!(b.snapshot().is_empty(), "{text}");
        let warning = warning.expect("a warning");
        assert!(
            warning.contains(FILE_NAME) && warning.contains("start empty"),
            "{warning}"
        );
        assert!(
            dir.path().join("budgets.json.corrupt").exists(),
            "{warning}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, warning) = Budgets::load(dir.path());
    assert!(
        b.snapshot().is_empty() && warning.is_none(),
        "no file: no warning"
    );
}

#[test]
fn hand_edited_entries_load_safely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entry = |key: &str, day: u64, usd: f64| {
        format!(
            r#"{{"rule":"r","key":"{key}","day":{day},"requests_day":7,"tokens_day":0,
                "usd_day":{usd},"minute":{},"requests_minute":0}}"#,
            u64::MAX
        )
    };
    let text = format!(
        r#"{{"version":1,"entries":[{},{},{}]}}"#,
        entry("k", MIDNIGHT / 86_400, -3.0),
        entry("k", 0, 0.0),
        entry("huge", u64::MAX, 1.0)
    );
    fs::write(dir.path().join(FILE_NAME), text).expect("write");
    let (mut b, warning) = Budgets::load(dir.path());
    assert!(warning.expect("duplicate").contains("1 duplicate"));
    let k = state(&b.snapshot(), "r", "k").clone();
    assert_eq!(
        (k.requests_day, k.usd_day),
        (7, 0.0),
        "first kept, negative dollars cleared"
    );
    let _ = b.snapshot();
    b.check("r", "huge", &per_day(10), at(0))
        .expect("a far-future window is replaced");
}

#[test]
fn prune_drops_ended_windows_only() {
    let (_dir, mut b) = budgets();
    let limits = per_day(10);
    b.check(
        "r",
        "yesterday",
        &limits,
        hms(0, 0, 0) - Duration::from_secs(60),
    )
    .expect("ok");
    b.check("r", "today", &limits, hms(1, 0, 0)).expect("ok");
    b.check(
        "gone",
        "x",
        &limits,
        hms(0, 0, 0) - Duration::from_secs(86_400),
    )
    .expect("ok");
    b.save().expect("save");
    b.prune(hms(12, 0, 0));
    let keys: Vec<_> = b.snapshot().into_iter().map(|s| (s.rule, s.key)).collect();
    assert_eq!(keys, [("r".to_string(), "today".to_string())]);
    assert!(b.take_save().is_some(), "pruning is a change to save");
    b.prune(hms(12, 0, 0));
    assert!(b.take_save().is_none(), "nothing more to prune");
}

#[test]
fn snapshot_at_shows_what_counts_now() {
    let (_dir, mut b) = budgets();
    b.check("r", "k", &per_day(10), hms(23, 0, 0)).expect("ok");
    b.record_usage("r", "k", 5, 0.01, hms(23, 0, 1));
    let stored = b.snapshot();
    assert_eq!((stored[0].requests_day, stored[0].requests_minute), (1, 1));
    assert_eq!(stored[0].minute, "2026-11-26T23:00:00Z");
    let now = b.snapshot_at(hms(24, 0, 1));
    assert_eq!(
        (now[0].day.as_str(), now[0].requests_day, now[0].tokens_day),
        ("2026-11-27", 0, 0)
    );
}

#[test]
fn limits_and_keys_parse_from_policy_yaml() {
    let limits: Limits =
        serde_yaml_ng::from_str("requests_per_day: 100\nusd_per_day: 2.5\n").expect("limits");
    assert_eq!(limits.requests_per_day, Some(100));
    assert!(limits != Limits::default() && limits.validate().is_ok());
    assert!(serde_yaml_ng::from_str::<Limits>("requests_per_hour: 5\n").is_err());
    let key: BudgetKey = serde_yaml_ng::from_str("container").expect("key");
    assert_eq!(key, BudgetKey::Container);
    assert_eq!(BudgetKey::default(), BudgetKey::Rule);
}

#[test]
fn dates_format_without_panicking() {
    use super::window::{date, rfc3339};
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(MIDNIGHT + 3661), "2026-11-26T01:01:01Z");
    assert_eq!(date(11_016), "2000-02-29");
    assert!(!rfc3339(u64::MAX).is_empty());
    assert!(!date(u64::MAX).is_empty());
}
