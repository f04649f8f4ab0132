//! SQLite's own allocations from mimalloc, as the rest of the process's are.
//!
//! SQLite calls the C library's `malloc` unless told otherwise, and it allocates a good deal
//! per statement: the writer's statement journal (kept in memory, in 1 KiB chunks, about 32 for
//! a PATCH), each value sqlx copies out of a row, the temporary table a `RETURNING` clause
//! fills. Under glibc's allocator that was about 22k instructions of a PATCH (callgrind, one
//! client), with `malloc_consolidate` showing in profiles of POST load.

use std::ffi::{c_int, c_void};

use libmimalloc_sys as mi;
use rusqlite::ffi;

/// Hands SQLite's allocations to mimalloc. It must run before SQLite is first used in the
/// process (SQLite refuses to change allocators once initialised); `false` if it was too late,
/// and SQLite keeps its default, which works, only slower.
pub fn use_mimalloc() -> bool {
    // SQLite copies the methods before `sqlite3_config` returns.
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(malloc),
        xFree: Some(free),
        xRealloc: Some(realloc),
        xSize: Some(size),
        xRoundup: Some(roundup),
        xInit: Some(init),
        xShutdown: Some(shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: SQLITE_CONFIG_MALLOC takes one argument, a pointer to `sqlite3_mem_methods`,
    // read during the call. The functions it names follow SQLite's contract: memory aligned
    // to 8 bytes at least (mimalloc aligns to 16), `xSize` at least the size asked for.
    unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &raw const methods) == ffi::SQLITE_OK }
}

// SQLite never asks for a size below 1 (it handles 0 and negative sizes itself), so the casts
// to `usize` are exact.

unsafe extern "C" fn malloc(bytes: c_int) -> *mut c_void {
    // SAFETY: any size is valid for mi_malloc; null on failure, as SQLite expects.
    unsafe { mi::mi_malloc(bytes as usize) }
}

unsafe extern "C" fn free(block: *mut c_void) {
    // SAFETY: SQLite frees only what `malloc` or `realloc` above returned.
    unsafe { mi::mi_free(block) }
}

unsafe extern "C" fn realloc(block: *mut c_void, bytes: c_int) -> *mut c_void {
    // SAFETY: as for `free`; on failure the block is left as it was and null returned.
    unsafe { mi::mi_realloc(block, bytes as usize) }
}

unsafe extern "C" fn size(block: *mut c_void) -> c_int {
    // SAFETY: a block from `malloc` or `realloc` above (or null, which gives 0). SQLite's
    // allocations stay below 2 GiB, and so does their usable size.
    unsafe { mi::mi_usable_size(block) as c_int }
}

/// As SQLite's own allocator rounds: to a multiple of 8.
unsafe extern "C" fn roundup(bytes: c_int) -> c_int {
    (bytes + 7) & !7
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn shutdown(_: *mut c_void) {}
