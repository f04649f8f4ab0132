//! SQLite connections opened on threads that must not keep a runtime thread's core.
//!
//! sqlx runs each SQLite connection on a thread of its own, started by whichever task opened
//! the connection: with the runtime threads pinned (`crate::runtime`), the pool's connections
//! opened under load, or reopened at their lifetime's end, would otherwise each be held for
//! life to the core of the runtime thread that asked for them, two threads contending for one
//! core while the other idles. SQLite calls its auto-extensions on the opening thread as a
//! connection opens, which is the first thing such a thread does.

use std::ffi::{c_char, c_int};

use rusqlite::ffi;

/// Releases every thread that opens a SQLite connection from now on from an inherited pin
/// (see [`crate::runtime::release_inherited_pin`]); `false` if SQLite refused the hook.
pub fn release_pins_on_open() -> bool {
    // SAFETY: registering an auto-extension is safe at any time; SQLite keeps the pointer, to
    // a plain function valid for the process's life.
    unsafe { ffi::sqlite3_auto_extension(Some(on_open)) == ffi::SQLITE_OK }
}

unsafe extern "C" fn on_open(
    _db: *mut ffi::sqlite3,
    _error: *mut *mut c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    crate::runtime::release_inherited_pin();
    ffi::SQLITE_OK
}
