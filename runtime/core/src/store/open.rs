//! Opening the store's database: the log segments it was created with,
//! and its lock (another process's fails at once; this process's own,
//! still being let go by a store just closed, is waited for).

use super::{Error, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// sled's database in `dir`, with its page cache at `cache_bytes` and, if
/// it is created now, log segments of `segment_bytes`; a store that
/// exists keeps the segments it was created with.
pub(super) fn open_db(dir: &Path, cache_bytes: u64, segment_bytes: usize) -> Result<sled::Db> {
    let segment_bytes = match existing_segment_size(dir) {
        Some(own) if own != segment_bytes => {
            tracing::info!(
                "store at {}: keeps the log segments of {} KiB it was created with ({} KiB apply to a new store)",
                dir.display(),
                own >> 10,
                segment_bytes >> 10
            );
            own
        }
        _ => segment_bytes,
    };
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .segment_size(segment_bytes)
        .flush_every_ms(Some(200));
    open_locked(dir, &config)
}

/// The log segment size the store in `dir` was created with, if there is
/// one: sled refuses to open it with another.
pub(super) fn existing_segment_size(dir: &Path) -> Option<usize> {
    // Lines of `key: value`, then a checksum (not text).
    let conf = std::fs::read(dir.join("conf")).ok()?;
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: ")?.trim().parse().ok())
}

/// The process holding a lock on `file`, from `/proc/locks` (Linux); `None`
/// where the system does not say.
#[cfg(not(unix))]
fn lock_holder(_: &Path) -> Option<u32> {
    None
}

/// The process holding a lock on `file`, from `/proc/locks` (Linux); `None`
/// where the system does not say.
#[cfg(unix)]
fn lock_holder(file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| f.matches(':').count() == 2)?;
        let ino: u64 = fields[at].rsplit(':').next()?.parse().ok()?;
        (ino == inode).then(|| fields.get(at.checked_sub(1)?)?.parse().ok())?
    })
}

/// How long an open waits for this process to let go of the store's lock:
/// a store closed and opened again at once (a restart of the engine, a
/// test) can find sled's last write of the closed one still holding the
/// file for a moment.
const OWN_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Open sled's database in `dir`. Its lock held by another process fails
/// at once ([`Error::Locked`], naming it); held by this one, the open
/// waits up to [`OWN_LOCK_WAIT`] for it to be let go.
fn open_locked(dir: &Path, config: &sled::Config) -> Result<sled::Db> {
    let deadline = Instant::now() + OWN_LOCK_WAIT;
    loop {
        let source = match config.open() {
            Ok(db) => return Ok(db),
            Err(source) => source,
        };
        let locked = matches!(&source, sled::Error::Io(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                // sled says so in words: "could not acquire lock on ...".
                || e.to_string().contains("could not acquire lock"));
        if !locked {
            return Err(Error::Open {
                path: dir.display().to_string(),
                source,
            });
        }
        let holder = lock_holder(&dir.join("db"));
        let ours = holder.is_none_or(|pid| pid == std::process::id());
        if !ours || Instant::now() >= deadline {
            return Err(Error::Locked {
                path: dir.display().to_string(),
                holder,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
