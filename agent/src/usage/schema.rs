//! The store's schema, versioned by `PRAGMA user_version`: each migration
//! runs once, in order, in one transaction with the version bump.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE usage (
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        coverage TEXT NOT NULL,
        error INTEGER NOT NULL,
        provider TEXT NOT NULL,
        model TEXT,
        rule TEXT NOT NULL,
        pid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        user TEXT,
        exe TEXT,
        unit TEXT,
        container TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost_usd REAL,
        latency_ms REAL
    );
    CREATE INDEX usage_ts ON usage (ts_ms);",
    // Hourly rollups: `modelgate usage` reads whole hours here and only the
    // partial first hour from `usage`. Text keys are '' rather than NULL,
    // which a primary key would treat as all distinct.
    "CREATE TABLE usage_hourly (
        hour_ms INTEGER NOT NULL,
        coverage TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        pid INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        user TEXT NOT NULL,
        exe TEXT NOT NULL,
        unit TEXT NOT NULL,
        container TEXT NOT NULL,
        events INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_usd REAL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        latency BLOB,
        PRIMARY KEY (hour_ms, coverage, provider, model, pid, uid, user, exe, unit, container)
    ) WITHOUT ROWID;
    INSERT INTO usage_hourly
        SELECT ts_ms / 3600000 * 3600000, coverage, provider, coalesce(model, ''), pid, uid,
            coalesce(user, ''), coalesce(exe, ''), coalesce(unit, ''), coalesce(container, ''),
            count(*), SUM(kind = 'request'), SUM(kind = 'request' AND error),
            SUM(coalesce(input_tokens, 0)), SUM(coalesce(output_tokens, 0)), SUM(cost_usd),
            MIN(ts_ms), MAX(ts_ms), NULL
        FROM usage GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10;",
    // What providers report beside input and output, per request (NULL:
    // not reported).
    "ALTER TABLE usage ADD COLUMN cache_read_tokens INTEGER;
    ALTER TABLE usage ADD COLUMN reasoning_tokens INTEGER;",
];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the store is at schema version {found}, newer than this modelgate knows ({known}); \
         upgrade modelgate or move the file away"
    )]
    Newer { found: usize, known: usize },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(MigrateError::Newer {
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
