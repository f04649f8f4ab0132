//! Deep pages cost what the first one does: every sort's keyset query is answered by walking an
//! index in order, never by sorting the table; and an idempotent create finds its key through
//! its index. Checked with the database's own query planner.

use chrono::Utc;
use sea_orm::{ConnectionTrait, DbBackend, QuerySelect, QueryTrait, Statement, TransactionTrait};
use users_api::{
    domain::{Cursor, ListQuery, Sort, SortField, SortKey, UserFilter},
    store::{self, Store},
};

use crate::helpers::{TestDb, db_settings};

fn cursor_for(query: &ListQuery) -> Cursor {
    let key = match query.sort.field {
        SortField::Id => SortKey::Id,
        SortField::Name => SortKey::Name("m".into()),
        SortField::CreatedAt => SortKey::CreatedAt(Utc::now()),
    };
    Cursor::new(key, 500_000, query)
}

/// A fresh database with the schema, and a connection of the test's own to it (kept alive
/// by the `TestDb`).
async fn migrated() -> (TestDb, sea_orm::DatabaseConnection, DbBackend) {
    let test_db = TestDb::new();
    let (store, ()) = Store::open(&db_settings(&test_db.url), async |_| Ok(()))
        .await
        .unwrap();
    store.close().await.unwrap();
    let db = sea_orm::Database::connect(&test_db.url).await.unwrap();
    let backend = db.get_database_backend();
    (test_db, db, backend)
}

#[tokio::test]
async fn every_sort_walks_an_index_at_any_depth() {
    let (_test_db, db, backend) = migrated().await;

    for sort in ["id", "-id", "name", "-name", "created_at", "-created_at"] {
        for filter in [
            UserFilter::default(),
            UserFilter {
                role: Some("Dev".into()),
                ..UserFilter::default()
            },
        ] {
            let query = ListQuery {
                filter,
                sort: Sort::parse(sort).unwrap(),
            };
            for cursor in [None, Some(cursor_for(&query))] {
                let statement = store::users::page_query(&query, cursor.as_ref())
                    .limit(51)
                    .build(backend);
                let plan = explain(&db, backend, statement).await;
                let deep = if cursor.is_some() {
                    "deep page"
                } else {
                    "first page"
                };
                match backend {
                    DbBackend::Sqlite => {
                        assert!(
                            !plan.contains("TEMP B-TREE"),
                            "sort={sort} {deep} sorts rows:\n{plan}"
                        );
                        // A deep page seeks to its start; only a first page may scan from the top.
                        if cursor.is_some() {
                            assert!(
                                plan.contains("SEARCH"),
                                "sort={sort} {deep} scans from the start:\n{plan}"
                            );
                        }
                    }
                    _ => assert!(
                        !plan.contains("Sort"),
                        "sort={sort} {deep} sorts rows:\n{plan}"
                    ),
                }
            }
        }
    }
    db.close().await.unwrap();
}

/// An idempotent create finds the record its key holds with one search of the unique
/// (principal, key) index, never a scan of a table that keeps a day of creates.
#[tokio::test]
async fn held_idempotency_keys_are_looked_up_in_their_index() {
    let (_test_db, db, backend) = migrated().await;
    let statement = store::idempotency::record_query("api-key:1", "key-1").build(backend);
    let plan = explain(&db, backend, statement).await;
    match backend {
        DbBackend::Sqlite => {
            assert!(
                plan.contains(
                    "SEARCH idempotency_keys USING INDEX idx_idempotency_keys_principal_key"
                ),
                "{plan}"
            );
            assert!(!plan.contains("SCAN"), "{plan}");
        }
        _ => {
            assert!(
                plan.contains("idx_idempotency_keys_principal_key"),
                "{plan}"
            );
            assert!(!plan.contains("Seq Scan"), "{plan}");
        }
    }
    db.close().await.unwrap();
}

async fn explain(
    db: &sea_orm::DatabaseConnection,
    backend: DbBackend,
    statement: Statement,
) -> String {
    let values = statement.values.clone().map(|v| v.0).unwrap_or_default();
    match backend {
        DbBackend::Sqlite => {
            // EXPLAIN plans against the schema the connection last loaded without checking it
            // is current, and a pooled connection may have loaded it halfway through the
            // migrations (missing the later indexes). A real read in the same transaction
            // brings the connection's schema up to date first.
            let txn = db.begin().await.unwrap();
            txn.query_one_raw(Statement::from_string(
                backend,
                "SELECT count(*) FROM users",
            ))
            .await
            .unwrap();
            let explain = Statement::from_sql_and_values(
                backend,
                format!("EXPLAIN QUERY PLAN {}", statement.sql),
                values,
            );
            let rows = txn.query_all_raw(explain).await.unwrap();
            txn.rollback().await.unwrap();
            rows.iter()
                .map(|row| row.try_get_by_index::<String>(3).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => {
            // On a nearly empty table PostgreSQL would rightly prefer a sequential scan; with
            // sorting priced out, a plan without a Sort node exists only if an index gives the order.
            let txn = db.begin().await.unwrap();
            txn.execute_unprepared("SET LOCAL enable_sort = off")
                .await
                .unwrap();
            txn.execute_unprepared("SET LOCAL enable_seqscan = off")
                .await
                .unwrap();
            let explain = Statement::from_sql_and_values(
                backend,
                format!("EXPLAIN {}", statement.sql),
                values,
            );
            let rows = txn.query_all_raw(explain).await.unwrap();
            let plan = rows
                .iter()
                .map(|row| row.try_get_by_index::<String>(0).unwrap())
                .collect::<Vec<_>>()
                .join("\n");
            txn.rollback().await.unwrap();
            plan
        }
    }
}
