//! Which names a database may have: what the mount, SQLite's companion
//! files and the kernel's limit on a file name leave free. Checked wherever
//! a name comes in: a create on the mount, an import, a primary's frame, a
//! replica's position list, the data directory at start-up.

use super::Error;

/// Suffixes SQLite (and the mount) give a database's companion files; a
/// database name may not end with one.
const RESERVED_SUFFIXES: [&str; 4] = ["-journal", "-wal", "-shm", "-pos"];
/// Names the mount uses for itself.
const RESERVED_NAMES: [&str; 4] = [".", "..", ".primary", ".lag"];

/// The longest database name: 255 bytes (the kernel's limit for a name)
/// less the longest suffix of a companion, a super-journal's
/// `-mjXXXXXXXXX`, so that SQLite can name every file it makes beside it.
pub const MAX_DB_NAME_LEN: usize = 255 - "-mjXXXXXXXXX".len();

/// Checks that `name` can be a database name: not empty, at most
/// `MAX_DB_NAME_LEN` bytes, no `/`, NUL or control character, not `.`,
/// `..`, `.primary` or `.lag`, and not the name of a companion file (ending
/// with `-journal`, `-wal`, `-shm` or `-pos`, or a super-journal's
/// `-mj` and 9 hex digits).
pub fn validate_name(name: &str) -> Result<(), Error> {
    let invalid = |reason: &str| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if name.len() > MAX_DB_NAME_LEN {
        return Err(Error::InvalidName {
            name: name.to_string(),
            reason: format!(
                "the name is longer than {MAX_DB_NAME_LEN} bytes (SQLite's companion files add up \
                 to 12 bytes to it, and a file name holds at most 255)"
            ),
        });
    }
    if name.contains('/') || name.contains('\0') {
        return invalid("the name contains '/' or a NUL byte");
    }
    // A newline would break the replication request's line format, and
    // control characters make log lines and listings lie.
    if name.chars().any(char::is_control) {
        return invalid("the name contains a control character (such as a newline)");
    }
    if RESERVED_NAMES.contains(&name) {
        return invalid("the name is reserved by the mount");
    }
    if crate::sqlite::split_super_journal_name(name).is_some() {
        return invalid("the name is a super-journal's (`<database>-mj` and 9 hex digits)");
    }
    if let Some(suffix) = RESERVED_SUFFIXES.iter().find(|s| name.ends_with(*s)) {
        return Err(Error::InvalidName {
            name: name.to_string(),
            reason: format!("the suffix {suffix} is reserved for SQLite's companion files"),
        });
    }
    Ok(())
}
