//! The store's schema, versioned by `PRAGMA user_version`: each migration
//! runs once, in order, in one transaction with the version bump.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &["CREATE TABLE usage (
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
    CREATE INDEX usage_ts ON usage (ts_ms);"];

pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        anyhow::bail!(
            "the store is at schema version {version}, newer than this modelgate knows ({}); \
             upgrade modelgate or move the file away",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}
