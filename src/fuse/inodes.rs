//! Names and inode numbers on the mount: which database and which of its
//! files (`FileKind`) a name or an inode stands for. Inode numbers are
//! stable for the life of the mount: each database gets a slot of
//! `INOS_PER_DB` numbers, one per kind of file.

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

/// Database names by inode slot, so inode numbers stay stable for the life
/// of the mount.
#[derive(Default)]
pub(super) struct Inodes {
    names: Vec<String>,
    slots: HashMap<String, u64>,
}

impl Inodes {
    pub(super) fn ino(&mut self, db: &str, kind: FileKind) -> u64 {
        let slot = match self.slots.get(db) {
            Some(slot) => *slot,
            None => {
                let slot = self.names.len() as u64;
                self.names.push(db.to_string());
                self.slots.insert(db.to_string(), slot);
                slot
            }
        };
        FIRST_DB_INO + slot * INOS_PER_DB + kind.index()
    }

    pub(super) fn lookup(&self, ino: u64) -> Option<(String, FileKind)> {
        let rel = ino.checked_sub(FIRST_DB_INO)?;
        let name = self.names.get((rel / INOS_PER_DB) as usize)?;
        let kind = FileKind::ALL.get((rel % INOS_PER_DB) as usize)?;
        Some((name.clone(), *kind))
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
    fn inode_numbers_round_trip() {
        let mut inodes = Inodes::default();
        let a = inodes.ino("a", FileKind::Journal);
        let b = inodes.ino("b", FileKind::Pos);
        assert_eq!(inodes.ino("a", FileKind::Journal), a);
        assert_eq!(inodes.lookup(a), Some(("a".to_string(), FileKind::Journal)));
        assert_eq!(inodes.lookup(b), Some(("b".to_string(), FileKind::Pos)));
        assert_eq!(inodes.lookup(ROOT_INO), None);
        assert_eq!(inodes.lookup(FIRST_DB_INO + 7), None);
    }
}
