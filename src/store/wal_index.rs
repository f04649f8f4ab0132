//! Whether a SQLite database has changed, known without a transaction: the header of its WAL
//! index, which every commit rewrites.
//!
//! Every connection to a database in WAL mode, in any process, shares one WAL index (the `-shm`
//! file, mapped into memory; with `--sqlite-locking exclusive`, memory of this process). It
//! begins with a 48-byte header, kept twice; a commit writes the second copy, then the first,
//! and a reader that finds the two equal has read a whole one (SQLite's readers do the same).
//! The header holds a counter each commit increments, the last frame, the WAL's salts and a
//! checksum over it all, so two equal headers mean no commit came between (the format is
//! SQLite's, shared by every version that opens the file: <https://sqlite.org/walformat.html>).
//! Reading it is two dozen loads from memory; starting a read transaction to ask instead takes
//! a lock (on the `-shm` file, with `fcntl(2)`) and SQLite's mutex, the costs a cache of reads
//! is there to save.

use std::{
    ffi::c_void,
    ptr,
    sync::atomic::{AtomicU32, Ordering, fence},
};

use rusqlite::{Connection, ffi};

/// The size SQLite maps the WAL index in (`WALINDEX_PGSZ`); the header is at the start of the
/// first region.
const REGION_BYTES: i32 = 32 * 1024;
/// One copy of the header, in 32-bit words.
const HEADER_WORDS: usize = 12;

/// The WAL index of one database, mapped through a connection kept open for it.
pub struct WalIndex {
    /// Never used after mapping: it holds the mapping (SQLite unmaps it when the last
    /// connection of this process closes).
    _connection: Connection,
    header: *const AtomicU32,
}

// SAFETY: `header` points into memory that stays mapped while `_connection` is open, and is
// only ever read, with atomic loads (other connections and processes write it). The connection
// is not used again after `map`, so no thread ever calls into it.
unsafe impl Send for WalIndex {}
unsafe impl Sync for WalIndex {}

/// A whole header, as read at one moment: equal stamps mean no commit in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStamp([u32; HEADER_WORDS]);

impl WalIndex {
    /// Maps the WAL index of the database `connection` has open (in WAL mode).
    pub fn map(connection: Connection) -> rusqlite::Result<Self> {
        let failed = |what: &str, code: i32| {
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(code),
                Some(format!("mapping the WAL index: {what}")),
            )
        };
        // A read first, so that the WAL index exists and its header has been set up.
        connection.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        let mut file: *mut ffi::sqlite3_file = ptr::null_mut();
        let mut region: *mut c_void = ptr::null_mut();
        // SAFETY: the handle is this open connection's; FILE_POINTER writes the main database's
        // `sqlite3_file` into `file`. Its methods are the VFS's, and `xShmMap` with `bExtend`
        // 0 maps the existing region 0 (the one SQLite's own readers use) into `region`.
        unsafe {
            let code = ffi::sqlite3_file_control(
                connection.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            );
            if code != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
                return Err(failed("no database file", code));
            }
            let methods = &*(*file).pMethods;
            let Some(shm_map) = methods.xShmMap.filter(|_| methods.iVersion >= 2) else {
                return Err(failed("the VFS has no shared memory", ffi::SQLITE_MISUSE));
            };
            let code = shm_map(file, 0, REGION_BYTES, 0, &mut region);
            if code != ffi::SQLITE_OK || region.is_null() {
                return Err(failed("not mapped", code));
            }
        }
        Ok(WalIndex {
            _connection: connection,
            header: region.cast(),
        })
    }

    /// The header now; `None` while a commit is writing it (the copies differ) or before it
    /// was ever set up.
    pub fn stamp(&self) -> Option<CommitStamp> {
        // SAFETY: the region is at least REGION_BYTES long and 4-byte aligned (page-aligned),
        // and stays mapped for as long as `self` lives (see the struct).
        let word = |i: usize| unsafe { (*self.header.add(i)).load(Ordering::Relaxed) };
        let first: [u32; HEADER_WORDS] = std::array::from_fn(word);
        // The copies are read in the opposite order to the one commits write them in.
        fence(Ordering::Acquire);
        let second: [u32; HEADER_WORDS] = std::array::from_fn(|i| word(HEADER_WORDS + i));
        // Byte 12 of a header is `isInit`.
        let initialised = first[3].to_ne_bytes()[0] != 0;
        (first == second && initialised).then_some(CommitStamp(first))
    }
}
