use super::*;

fn row(exe: &str, model: &str, input: u64, output: u64, latency: f64, ts_ms: i64) -> Row {
    Row {
        ts_ms,
        kind: "request",
        coverage: "governed",
        provider: "openai".into(),
        model: Some(model.into()),
        rule: "r".into(),
        pid: 7,
        exe: Some(exe.into()),
        input_tokens: Some(input),
        output_tokens: Some(output),
        latency_ms: Some(latency),
        ..Row::default()
    }
}

fn store() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = open_rw(&path(dir.path())).unwrap();
    (dir, conn)
}

#[test]
fn groups_count_tokens_and_sort_by_tokens() {
    let (_dir, mut conn) = store();
    let mut rows = vec![
        row("/usr/bin/a", "gpt-4o", 10, 5, 10.0, 1000),
        row("/usr/bin/b", "gpt-4o", 100, 50, 20.0, 1000),
        row("/usr/bin/b", "claude", 1, 1, 30.0, 2000),
    ];
    rows[0].error = true;
    rows.push(Row {
        kind: "connection",
        coverage: "direct",
        exe: Some("/usr/bin/a".into()),
        ts_ms: 3000,
        ..Row::default()
    });
    insert(&mut conn, &rows).unwrap();

    let by_exe = summarize(&conn, 0, By::Exe).unwrap();
    assert_eq!(by_exe.len(), 2);
    assert_eq!(by_exe[0].key, "/usr/bin/b");
    assert_eq!(
        (
            by_exe[0].requests,
            by_exe[0].input_tokens,
            by_exe[0].output_tokens
        ),
        (2, 101, 51)
    );
    // The histogram's buckets are 5% wide: within 2.5% of the truth.
    let near = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() / want < 0.03;
    assert!(near(by_exe[0].p50_ms, 20.0), "{:?}", by_exe[0]);
    assert!(near(by_exe[0].p95_ms, 30.0), "{:?}", by_exe[0]);
    let a = &by_exe[1];
    assert_eq!((a.requests, a.errors, a.governed, a.direct), (1, 1, 1, 1));
    assert_eq!((a.first_seen_ms, a.last_seen_ms), (1000, 3000));
    assert_eq!(a.coverage_pct(), 50.0);

    let by_model = summarize(&conn, 0, By::Model).unwrap();
    let keys: Vec<_> = by_model.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["gpt-4o", "claude", "-"]);
    let since = summarize(&conn, 1500, By::Model).unwrap();
    let keys: Vec<_> = since.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["claude", "-"]);
}

#[test]
fn migrations_run_once_and_refuse_a_newer_store() {
    let (dir, conn) = store();
    drop(conn);
    // Opening again is a no-op migration.
    let conn = open_rw(&path(dir.path())).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = open_rw(&path(dir.path())).unwrap_err();
    let text = crate::errors::chain(&err);
    assert!(
        matches!(
            err,
            StoreError::Migrate(_, schema::MigrateError::Newer { found: 99, .. })
        ),
        "{text}"
    );
    assert!(text.contains("newer than this modelgate knows"), "{text}");
}

#[test]
fn retention_removes_old_rows_only() {
    let (_dir, mut conn) = store();
    let now = now_ms();
    insert(
        &mut conn,
        &[
            row("/old", "m", 1, 1, 1.0, now - 40 * 24 * 3600 * 1000),
            row("/new", "m", 1, 1, 1.0, now),
        ],
    )
    .unwrap();
    assert_eq!(prune(&conn, DEFAULT_RETENTION).unwrap(), 1);
    let left = summarize(&conn, 0, By::Exe).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, "/new");
}

#[test]
fn rollups_and_rows_agree_across_an_hour_boundary() {
    let (_dir, mut conn) = store();
    let hour = rollup::HOUR_MS;
    let base = 100 * hour;
    // Two batches into the same hour merge; a third lands in the next one.
    insert(&mut conn, &[row("/a", "m", 1, 2, 10.0, base + 10)]).unwrap();
    insert(&mut conn, &[row("/a", "m", 3, 4, 30.0, base + 20)]).unwrap();
    insert(&mut conn, &[row("/a", "m", 5, 6, 50.0, base + hour + 5)]).unwrap();
    let hourly: i64 = conn
        .query_row("SELECT count(*) FROM usage_hourly", [], |r| r.get(0))
        .unwrap();
    assert_eq!(hourly, 2);
    // From the hour's start: rollups only. From inside it: rows, then rollups.
    for (since, want) in [
        (base, (3, 9, 12)),
        (base + 15, (2, 8, 10)),
        (base + hour, (1, 5, 6)),
    ] {
        let s = &summarize(&conn, since, By::Exe).unwrap()[0];
        assert_eq!(
            (s.requests, s.input_tokens, s.output_tokens),
            want,
            "since {since}"
        );
    }
    let all = &summarize(&conn, 0, By::Exe).unwrap()[0];
    assert_eq!(
        (all.first_seen_ms, all.last_seen_ms),
        (base + 10, base + hour + 5)
    );
}

#[test]
fn cache_read_and_reasoning_tokens_are_kept_per_request() {
    let (_dir, mut conn) = store();
    let mut reported = row("/usr/bin/python3", "o3", 100, 40, 5.0, now_ms());
    reported.cache_read_tokens = Some(64);
    reported.reasoning_tokens = Some(32);
    let silent = row("/usr/bin/curl", "gpt-4o", 1, 1, 5.0, now_ms());
    insert(&mut conn, &[reported, silent]).unwrap();
    let kept: Vec<(String, Option<i64>, Option<i64>)> = conn
        .prepare("SELECT exe, cache_read_tokens, reasoning_tokens FROM usage ORDER BY exe")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        kept,
        [
            ("/usr/bin/curl".to_string(), None, None),
            ("/usr/bin/python3".to_string(), Some(64), Some(32)),
        ],
        "reported counts kept; unreported ones NULL, not 0"
    );
}
