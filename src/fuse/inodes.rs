//! Names and inode numbers on the mount: which database and which of its
//! files (`FileKind`) a name or an inode stands for. Inode numbers are
//! stable for the life of the mount: each database gets a slot of
//! `INOS_PER_DB` numbers, one per kind of file. A database deleted and
//! created again under the same name is another `Db` (another
//! `Db::instance`) and gets a new slot, so the kernel never mistakes its
//! cached pages or attributes of the old database for the new one's.

use std::borrow::Cow;
use std::collections::HashMap;

pub(super) const ROOT_INO: u64 = 1;
pub(super) const PRIMARY_INO: u64 = 2;
pub(super) const LAG_INO: u64 = 3;
const FIRST_DB_INO: u64 = 16;
/// Inode numbers reserved per database: one per `FileKind` but
/// `SuperJournal`.
const INOS_PER_DB: u64 = 8;
/// Super-journals' inode numbers: this, plus the database's slot shifted
/// past the 36 bits of the name's nine hexadecimal digits, plus those.
const SUPER_JOURNAL_INOS: u64 = 1 << 62;
const SUPER_JOURNAL_BITS: u32 = 36;

/// Which of a database's files a name or inode stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Database,
    Journal,
    Wal,
    Shm,
    Pos,
    /// A super-journal `<db>-mj<9 hex digits>` SQLite makes beside the
    /// main database of a transaction across ATTACHed databases: a scratch
    /// file, kept but not replicated. Holds the digits' value.
    SuperJournal(u64),
}

impl FileKind {
    pub(super) const ALL: [FileKind; 5] = [
        FileKind::Database,
        FileKind::Journal,
        FileKind::Wal,
        FileKind::Shm,
        FileKind::Pos,
    ];

    pub(super) fn suffix(self) -> Cow<'static, str> {
        match self {
            FileKind::Database => "".into(),
            FileKind::Journal => "-journal".into(),
            FileKind::Wal => "-wal".into(),
            FileKind::Shm => "-shm".into(),
            FileKind::Pos => "-pos".into(),
            FileKind::SuperJournal(digits) => format!("-mj{digits:09X}").into(),
        }
    }

    fn index(self) -> u64 {
        match self {
            FileKind::Database => 0,
            FileKind::Journal => 1,
            FileKind::Wal => 2,
            FileKind::Shm => 3,
            FileKind::Pos => 4,
            FileKind::SuperJournal(digits) => digits,
        }
    }
}

/// Splits a name on the mount into its database name and file kind.
pub fn parse_name(name: &str) -> (&str, FileKind) {
    if let Some((db, digits)) = crate::sqlite::split_super_journal_name(name) {
        return (db, FileKind::SuperJournal(digits));
    }
    for kind in [
        FileKind::Journal,
        FileKind::Wal,
        FileKind::Shm,
        FileKind::Pos,
    ] {
        if let Some(db) = name.strip_suffix(kind.suffix().as_ref()) {
            if !db.is_empty() {
                return (db, kind);
            }
        }
    }
    (name, FileKind::Database)
}

/// Databases (name and `Db::instance`) by inode slot, so inode numbers
/// stay stable for the life of the mount.
#[derive(Default)]
pub(super) struct Inodes {
    names: Vec<(String, u64)>,
    /// The slot of each name's newest instance, and that instance.
    slots: HashMap<String, (u64, u64)>,
}

impl Inodes {
    /// The inode number of the file of `kind` of database `db` whose
    /// `Db::instance` is `instance`.
    pub(super) fn ino(&mut self, db: &str, instance: u64, kind: FileKind) -> u64 {
        if let Some(ino) = self.known(db, instance, kind) {
            return ino;
        }
        let slot = self.names.len() as u64;
        self.names.push((db.to_string(), instance));
        self.slots.insert(db.to_string(), (slot, instance));
        ino_in(slot, kind)
    }

    /// `ino`'s answer when the database already has its slot.
    pub(super) fn known(&self, db: &str, instance: u64, kind: FileKind) -> Option<u64> {
        match self.slots.get(db) {
            Some(&(slot, known)) if known == instance => Some(ino_in(slot, kind)),
            _ => None,
        }
    }

    /// The database name, its instance and the file kind of `ino`.
    pub(super) fn lookup(&self, ino: u64) -> Option<(String, u64, FileKind)> {
        if let Some(rel) = ino.checked_sub(SUPER_JOURNAL_INOS) {
            let (name, instance) = self.names.get((rel >> SUPER_JOURNAL_BITS) as usize)?;
            let digits = rel & ((1 << SUPER_JOURNAL_BITS) - 1);
            return Some((name.clone(), *instance, FileKind::SuperJournal(digits)));
        }
        let rel = ino.checked_sub(FIRST_DB_INO)?;
        let (name, instance) = self.names.get((rel / INOS_PER_DB) as usize)?;
        let kind = FileKind::ALL.get((rel % INOS_PER_DB) as usize)?;
        Some((name.clone(), *instance, *kind))
    }
}

/// The inode number of the file of `kind` of the database in `slot`.
fn ino_in(slot: u64, kind: FileKind) -> u64 {
    match kind {
        FileKind::SuperJournal(_) => {
            SUPER_JOURNAL_INOS + (slot << SUPER_JOURNAL_BITS) + kind.index()
        }
        _ => FIRST_DB_INO + slot * INOS_PER_DB + kind.index(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_database_and_kind() {
        assert_eq!(parse_name("my.db"), ("my.db", FileKind::Database));
        assert_eq!(parse_name("my.db-journal"), ("my.db", FileKind::Journal));
        assert_eq!(parse_name("my.db-wal"), ("my.db", FileKind::Wal));
        assert_eq!(parse_name("my.db-shm"), ("my.db", FileKind::Shm));
        assert_eq!(parse_name("my.db-pos"), ("my.db", FileKind::Pos));
        assert_eq!(parse_name("-pos"), ("-pos", FileKind::Database));
    }

    #[test]
    fn super_journals_are_recognised() {
        let sj = FileKind::SuperJournal(0x0A1B2C9FF);
        assert_eq!(parse_name("main.db-mj0A1B2C9FF"), ("main.db", sj));
        assert_eq!(sj.suffix(), "-mj0A1B2C9FF");
        for name in [
            "main.db-mj0A1B2C9F",
            "main.db-mjXA1B2C9FF",
            "main.db-mj0a1b2c9ff",
            "-mj0A1B2C9FF",
            "ééééééé.db",
        ] {
            assert_eq!(parse_name(name), (name, FileKind::Database), "{name}");
        }
        let mut inodes = Inodes::default();
        let ino = inodes.ino("main.db", 1, sj);
        assert_eq!(inodes.lookup(ino), Some(("main.db".to_string(), 1, sj)));
        assert_ne!(inodes.ino("main.db", 1, FileKind::SuperJournal(1)), ino);
    }

    #[test]
    fn inode_numbers_round_trip() {
        let mut inodes = Inodes::default();
        let a = inodes.ino("a", 1, FileKind::Journal);
        let b = inodes.ino("b", 2, FileKind::Pos);
        assert_eq!(inodes.ino("a", 1, FileKind::Journal), a);
        assert_eq!(
            inodes.lookup(a),
            Some(("a".to_string(), 1, FileKind::Journal))
        );
        assert_eq!(inodes.lookup(b), Some(("b".to_string(), 2, FileKind::Pos)));
        // "a" deleted and created again: a new instance, new numbers.
        let a2 = inodes.ino("a", 3, FileKind::Journal);
        assert_ne!(a2, a);
        assert_eq!(inodes.lookup(a).map(|(_, i, _)| i), Some(1));
        assert_eq!(inodes.lookup(ROOT_INO), None);
        assert_eq!(inodes.lookup(FIRST_DB_INO + 7), None);
    }
}
