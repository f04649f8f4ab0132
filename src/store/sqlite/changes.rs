//! Whether the database has changed, known without a transaction: the header of its WAL
//! index, which every commit rewrites.
//!
//! Every connection to a database in WAL mode, in any process, shares one WAL index, the
//! `-shm` file beside the database, which SQLite maps into memory. It begins with a 48-byte
//! header, written twice: a commit writes the second copy, then the first, and a reader that
//! finds the two equal has read a whole one (SQLite's readers check the same). The header holds
//! a counter each commit increments, the WAL's last frame, its salts and a checksum over all of
//! it, so two equal headers mean no commit came between. The format is SQLite's, shared by
//! every version that opens the file (<https://sqlite.org/walformat.html>, "The WAL-Index
//! Header"). Reading it is one `pread` of the file: the page cache holds what the mappings
//! hold. Asking SQLite instead (`PRAGMA data_version`) is a statement on a connection, which is
//! what a cache of reads is there to save.

use std::{fs::File, io, os::unix::fs::FileExt, path::Path};

/// One copy of the header, in bytes.
const HEADER_BYTES: usize = 48;
/// `isInit`: non-zero once the header has been set up.
const IS_INIT: usize = 12;

/// The state of the database at one moment: equal versions mean no commit in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataVersion([u8; HEADER_BYTES]);

#[cfg(test)]
impl DataVersion {
    /// A version that stands for the `n`th state of a database.
    pub fn for_tests(n: u8) -> Self {
        DataVersion([n; HEADER_BYTES])
    }
}

/// The WAL index of one database, opened for reading.
pub(super) struct Changes {
    shm: File,
}

impl Changes {
    /// The WAL index of the database at `file`, which must be open in WAL mode (so that its
    /// `-shm` file exists and stays); `None` where there is none (an exclusive-locking VFS).
    pub fn open(file: &Path) -> io::Result<Option<Self>> {
        let mut name = file.as_os_str().to_owned();
        name.push("-shm");
        match File::open(Path::new(&name)) {
            Ok(shm) => Ok(Some(Changes { shm })),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The version now; `None` while a commit is writing the header (the copies differ), before
    /// it was ever set up, or if the file cannot be read.
    pub fn version(&self) -> Option<DataVersion> {
        let mut both = [0u8; 2 * HEADER_BYTES];
        let read = self.shm.read_at(&mut both, 0).ok()?;
        if read < both.len() {
            return None;
        }
        let (first, second) = both.split_at(HEADER_BYTES);
        (first == second && first[IS_INIT] != 0)
            .then(|| DataVersion(first.try_into().expect("48 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, Database};

    use super::*;

    /// Every commit changes the version, whichever connection makes it, and nothing else does.
    #[tokio::test]
    async fn every_commit_and_only_a_commit_changes_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("changes.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = Database::connect(&url).await.unwrap();
        db.execute_unprepared("PRAGMA journal_mode=WAL; CREATE TABLE t (x)")
            .await
            .unwrap();
        let changes = Changes::open(&file).unwrap().expect("a WAL index");
        let mut last = changes.version().expect("a version");
        for round in 0..20 {
            db.execute_unprepared("SELECT count(*) FROM t")
                .await
                .unwrap();
            assert_eq!(changes.version(), Some(last), "a read is no change");
            db.execute_unprepared(&format!("INSERT INTO t VALUES ({round})"))
                .await
                .unwrap();
            let now = changes.version().expect("a version");
            assert_ne!(now, last, "commit {round}");
            last = now;
        }
        // A commit through a connection of another pool (as another process would make it).
        let other = Database::connect(&url).await.unwrap();
        other
            .execute_unprepared("UPDATE t SET x = x + 1")
            .await
            .unwrap();
        assert_ne!(changes.version(), Some(last));
    }
}
