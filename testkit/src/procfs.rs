//! What `/proc` says about a process's descriptors and mappings, and `/dev/shm`: the counts
//! the tests compare with a baseline to prove that nothing leaked.

use std::collections::BTreeSet;
use std::path::Path;

/// A descriptor of a process and what it points to.
#[derive(Debug, Clone)]
pub struct Fd {
    pub fd: i32,
    pub target: String,
    /// Inode of the open file (`stat` through the `/proc` link), if it could be read.
    pub ino: Option<u64>,
}

/// The open descriptors of process `pid` ("self" for this one).
pub fn fds(pid: &str) -> Vec<Fd> {
    let dir = format!("/proc/{pid}/fd");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}")) {
        let entry = entry.expect("fd entry");
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile (e.g. the read_dir's own descriptor)
        };
        let ino = rustix::fs::stat(entry.path()).ok().map(|s| s.st_ino);
        out.push(Fd {
            fd,
            target: target.display().to_string(),
            ino,
        });
    }
    out
}

/// Whether a descriptor target is a shmlink block: `/memfd:shmlink-node-N (deleted)`.
pub fn is_block(target: &str) -> bool {
    target.starts_with("/memfd:shmlink-node-")
}

/// The lines of `/proc/<pid>/maps` that map a file whose name mentions shmlink or lies under
/// `/dev/shm`.
pub fn shared_mappings(pid: &str) -> Vec<String> {
    let path = format!("/proc/{pid}/maps");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .lines()
        .filter(|l| l.contains("shmlink") || l.contains("/dev/shm"))
        .map(str::to_owned)
        .collect()
}

/// The names in `/dev/shm` (empty if it does not exist).
pub fn dev_shm() -> BTreeSet<String> {
    let dir = Path::new("/dev/shm");
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Open file descriptors of this process, with what they point to.
pub fn open_fds() -> Vec<(i32, String)> {
    fds("self").into_iter().map(|f| (f.fd, f.target)).collect()
}

/// Mappings of shmlink blocks (`memfd:shmlink-node-*`) in this process.
pub fn block_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .filter(|l| l.contains("memfd:shmlink-node-"))
        .count()
}
