//! SQLite's allocations come from mimalloc once `use_mimalloc` has run. A test binary of its
//! own: the setting is process-wide and must come before SQLite's first use, which the other
//! tests' processes make in any order.

use rusqlite::{Connection, ffi};

#[test]
fn sqlite_allocates_from_mimalloc_and_still_works() {
    assert!(users_api::store::sqlite_memory::use_mimalloc());

    // SAFETY: a block from sqlite3_malloc, checked and freed with SQLite's own calls.
    unsafe {
        let block = ffi::sqlite3_malloc(100);
        assert!(!block.is_null());
        assert!(
            libmimalloc_sys::mi_is_in_heap_region(block),
            "allocated by mimalloc"
        );
        assert!(ffi::sqlite3_msize(block) >= 100);
        let grown = ffi::sqlite3_realloc(block, 10_000);
        assert!(libmimalloc_sys::mi_is_in_heap_region(grown));
        assert!(ffi::sqlite3_msize(grown) >= 10_000);
        ffi::sqlite3_free(grown);
    }

    // A database that allocates a great deal: a unique index, and the statement journal that
    // undoes a failed statement alone.
    let dir = tempfile::tempdir().unwrap();
    let db = Connection::open(dir.path().join("memory.db")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA temp_store = MEMORY;
         CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE);
         BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
         INSERT INTO t (v) SELECT printf('value %08d', i) FROM n;
         COMMIT;",
    )
    .unwrap();
    let (count, last): (i64, String) = db
        .query_row("SELECT count(*), max(v) FROM t", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap();
    assert_eq!((count, last.as_str()), (20_000, "value 00020000"));
    // A duplicate fails its statement alone, inside the transaction, by the statement journal.
    db.execute_batch("BEGIN; UPDATE t SET v = v || '!' WHERE id <= 10000;")
        .unwrap();
    let duplicate = db.execute("UPDATE t SET v = 'value 00020000' WHERE id <= 5000", []);
    assert!(duplicate.is_err());
    db.execute_batch("COMMIT;").unwrap();
    let changed: i64 = db
        .query_row("SELECT count(*) FROM t WHERE v LIKE '%!'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(changed, 10_000);
}
