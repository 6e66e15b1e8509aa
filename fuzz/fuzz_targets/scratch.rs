//! A scratch directory per fuzz process, emptied before each input, for
//! the targets whose reader works on files.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// An empty directory for this input.
pub fn fresh() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        // scripts/fuzz.sh names one it removes afterwards.
        if let Some(dir) = std::env::var_os("LITEFS_FUZZ_SCRATCH") {
            return PathBuf::from(dir).join(format!("p{}", std::process::id()));
        }
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        root.join(format!("litefs-fuzz-{}", std::process::id()))
    });
    let dir = base.join("input");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
    dir
}
