//! Names and inode numbers on the mount: which database and which of its
//! files (`FileKind`) a name or an inode stands for. Inode numbers are
//! stable for the life of the mount: each database gets a slot of
//! `INOS_PER_DB` numbers, one per kind of file. A database deleted and
//! created again under the same name is another `Db` (another
//! `Db::instance`) and gets a new slot, so the kernel never mistakes its
//! cached pages or attributes of the old database for the new one's.

use std::collections::HashMap;

pub(super) const ROOT_INO: u64 = 1;
pub(super) const PRIMARY_INO: u64 = 2;
pub(super) const LAG_INO: u64 = 3;
const FIRST_DB_INO: u64 = 16;
/// Inode numbers reserved per database: one per `FileKind`.
const INOS_PER_DB: u64 = 8;

/// Which of a database's files a name or inode stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Database,
    Journal,
    Wal,
    Shm,
    Pos,
}

impl FileKind {
    pub(super) const ALL: [FileKind; 5] = [
        FileKind::Database,
        FileKind::Journal,
        FileKind::Wal,
        FileKind::Shm,
        FileKind::Pos,
    ];

    pub(super) fn suffix(self) -> &'static str {
        match self {
            FileKind::Database => "",
            FileKind::Journal => "-journal",
            FileKind::Wal => "-wal",
            FileKind::Shm => "-shm",
            FileKind::Pos => "-pos",
        }
    }

    fn index(self) -> u64 {
        match self {
            FileKind::Database => 0,
            FileKind::Journal => 1,
            FileKind::Wal => 2,
            FileKind::Shm => 3,
            FileKind::Pos => 4,
        }
    }
}

/// Splits a name on the mount into its database name and file kind.
pub fn parse_name(name: &str) -> (&str, FileKind) {
    for kind in [
        FileKind::Journal,
        FileKind::Wal,
        FileKind::Shm,
        FileKind::Pos,
    ] {
        if let Some(db) = name.strip_suffix(kind.suffix()) {
            if !db.is_empty() {
                return (db, kind);
            }
        }
    }
    (name, FileKind::Database)
}

/// Whether `name` is a super-journal SQLite makes beside the main
/// database for a transaction across ATTACHed databases: `<main>-mj`
/// followed by nine hexadecimal digits (sqlite3's vdbeaux.c).
pub fn is_super_journal(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.len().checked_sub(12) {
        Some(at) if at > 0 => {
            let tail = &bytes[at..];
            tail.starts_with(b"-mj") && tail[3..].iter().all(|b| b.is_ascii_hexdigit())
        }
        _ => false,
    }
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
        let slot = match self.slots.get(db) {
            Some(&(slot, known)) if known == instance => slot,
            _ => {
                let slot = self.names.len() as u64;
                self.names.push((db.to_string(), instance));
                self.slots.insert(db.to_string(), (slot, instance));
                slot
            }
        };
        FIRST_DB_INO + slot * INOS_PER_DB + kind.index()
    }

    /// The database name, its instance and the file kind of `ino`.
    pub(super) fn lookup(&self, ino: u64) -> Option<(String, u64, FileKind)> {
        let rel = ino.checked_sub(FIRST_DB_INO)?;
        let (name, instance) = self.names.get((rel / INOS_PER_DB) as usize)?;
        let kind = FileKind::ALL.get((rel % INOS_PER_DB) as usize)?;
        Some((name.clone(), *instance, *kind))
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
        assert!(is_super_journal("main.db-mj0A1B2C9FF"));
        assert!(!is_super_journal("main.db-mj0A1B2C9F"));
        assert!(!is_super_journal("main.db-mjXA1B2C9FF"));
        assert!(!is_super_journal("-mj0A1B2C9FF"));
        assert!(!is_super_journal("main.db"));
        assert!(!is_super_journal("ééééééé.db"));
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
