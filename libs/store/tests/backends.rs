//! The SQL interface behaves the same on SQLite and PostgreSQL.

// Shared test helpers unwrap too: a failure should stop the test where it happens.
#![allow(clippy::unwrap_used)]

use switchyard_store::{Db, Migration, StoreError, Value, testing};

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "items",
    postgres: "CREATE TABLE items (id TEXT PRIMARY KEY, n BIGINT NOT NULL, data BYTEA, flag BOOLEAN NOT NULL DEFAULT FALSE);",
    sqlite: "CREATE TABLE items (id TEXT PRIMARY KEY, n BIGINT NOT NULL, data BLOB, flag BOOLEAN NOT NULL DEFAULT FALSE);",
}];

async fn exercise(db: Db) {
    assert_eq!(db.migrate("demo", MIGRATIONS).await.unwrap(), 1);
    assert_eq!(
        db.migrate("demo", MIGRATIONS).await.unwrap(),
        0,
        "migrations apply once"
    );

    db.execute(
        "INSERT INTO items (id, n, data, flag) VALUES ($1, $2, $3, $4)",
        &[
            "a".into(),
            1i64.into(),
            Value::Blob(vec![0, 1, 2]),
            true.into(),
        ],
    )
    .await
    .unwrap();
    let row = db
        .query_opt(
            "SELECT id, n, data, flag FROM items WHERE id = $1",
            &["a".into()],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<String>(0).unwrap(), "a");
    assert_eq!(row.get::<i64>(1).unwrap(), 1);
    assert_eq!(row.get::<Vec<u8>>(2).unwrap(), vec![0, 1, 2]);
    assert!(row.get::<bool>(3).unwrap());
    assert!(
        row.get::<String>(1).is_err(),
        "a type mismatch is an error, not a panic"
    );

    let duplicate = db
        .execute(
            "INSERT INTO items (id, n) VALUES ($1, $2)",
            &["a".into(), 2i64.into()],
        )
        .await
        .unwrap_err();
    assert!(duplicate.is_unique_violation(), "{duplicate}");

    // NULL binds to a column of any type.
    db.execute(
        "INSERT INTO items (id, n, data) VALUES ($1, $2, $3)",
        &["b".into(), 2i64.into(), Value::Null],
    )
    .await
    .unwrap();
    let row = db
        .query_opt("SELECT data FROM items WHERE id = $1", &["b".into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<Option<Vec<u8>>>(0).unwrap(), None);

    // Placeholders bind by number, whatever their order in the statement.
    let rows = db
        .query(
            "SELECT id FROM items WHERE n = $2 OR id = $1 ORDER BY id",
            &["a".into(), 2i64.into()],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);

    // A dropped transaction rolls back, and the connection is usable afterwards.
    {
        let mut tx = db.begin().await.unwrap();
        tx.lock("items").await.unwrap();
        tx.execute("DELETE FROM items", &[]).await.unwrap();
    }
    let count = db
        .query_opt("SELECT COUNT(*) FROM items", &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count.get::<i64>(0).unwrap(), 2);

    let mut tx = db.begin().await.unwrap();
    assert!(tx.try_lock("job").await.unwrap());
    tx.execute("UPDATE items SET n = n + 10", &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let sum = db
        .query_opt("SELECT CAST(SUM(n) AS BIGINT) FROM items", &[])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sum.get::<i64>(0).unwrap(), 23);

    // An edited migration is refused.
    let edited = [Migration {
        postgres: "CREATE TABLE items (id TEXT);",
        sqlite: "CREATE TABLE items (id TEXT);",
        ..MIGRATIONS[0]
    }];
    assert!(matches!(
        db.migrate("demo", &edited).await,
        Err(StoreError::Migration(_))
    ));
}

#[tokio::test]
async fn sqlite_backend() {
    let (db, _dir) = testing::sqlite_db().await.unwrap();
    exercise(db).await;
}

#[tokio::test]
async fn postgres_backend() {
    exercise(testing::postgres_db().await.unwrap()).await;
}

#[tokio::test]
async fn postgres_advisory_locks_exclude_other_transactions() {
    let db = testing::postgres_db().await.unwrap();
    let mut first = db.begin().await.unwrap();
    assert!(first.try_lock("rotation").await.unwrap());
    let mut second = db.begin().await.unwrap();
    assert!(!second.try_lock("rotation").await.unwrap());
    first.commit().await.unwrap();
    second.rollback().await.unwrap();
    let mut third = db.begin().await.unwrap();
    assert!(third.try_lock("rotation").await.unwrap());
}

#[tokio::test]
async fn bad_urls_are_refused_with_a_reason() {
    let err = Db::connect("mysql://x", "s", 1).await.unwrap_err();
    assert!(err.to_string().contains("postgres://"), "{err}");
}
