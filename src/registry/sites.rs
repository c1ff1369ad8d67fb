//! Interned allocation sites.
//!
//! A record names its allocation site by a 32-bit index (0: none), so the
//! record stays four words. Index → site is an append-only table, readable
//! without a lock; site → index, for interning, is a map behind its own
//! mutex, with a small per-thread cache in front of it.
//!
//! Invariants: an index, once given, names the same site for good; at most
//! 4 Mi distinct sites get one (any beyond are recorded as unknown). The
//! site table's mutex is taken alone or inside a shard's write, never
//! before a shard's mutex.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::site::Site;

const SITE_CHUNK: usize = 1024;
/// At most 4 Mi distinct sites; any beyond are recorded as unknown.
const SITE_CHUNKS: usize = 4096;

/// Index → site: append-only, readable without a lock.
static SITES: [OnceLock<Box<[OnceLock<Site>; SITE_CHUNK]>>; SITE_CHUNKS] =
    [const { OnceLock::new() }; SITE_CHUNKS];
/// Site → index, for interning.
static SITE_INDEX: Mutex<SiteIndex> = Mutex::new(None);
type SiteIndex = Option<HashMap<Site, u32, BuildHasherDefault<WordHasher>>>;

/// A multiplicative hash of the words a key writes (sites are one word).
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

thread_local! {
    /// A direct-mapped cache in front of the site index: a program
    /// allocates from few lines, many times.
    static SITE_CACHE: [Cell<(Option<Site>, u32)>; 64] =
        const { [const { Cell::new((None, 0)) }; 64] };
}

/// The site table's lock, held across `fork` (see `crate::fork`). No
/// thread is then inside a chunk's `get_or_init` either (it runs only under
/// this lock), so the child never waits on a half-made chunk.
pub(super) struct ForkLock {
    _index: MutexGuard<'static, SiteIndex>,
}

pub(super) fn lock_for_fork() -> ForkLock {
    ForkLock {
        _index: SITE_INDEX.lock().unwrap_or_else(|e| e.into_inner()),
    }
}

/// The index of `site` (0 for none).
pub(super) fn intern(site: Option<Site>) -> u32 {
    let Some(site) = site else {
        return 0;
    };
    let mut h = WordHasher::default();
    site.hash(&mut h);
    let slot = (h.finish() >> 58) as usize;
    if let Ok((cached, ix)) = SITE_CACHE.try_with(|c| c[slot].get()) {
        if cached == Some(site) {
            return ix;
        }
    }
    let mut index = SITE_INDEX.lock().unwrap_or_else(|e| e.into_inner());
    let map = index.get_or_insert_with(Default::default);
    let next = map.len() + 1;
    let ix = *map.entry(site).or_insert_with(|| {
        if next >= SITE_CHUNK * SITE_CHUNKS {
            return 0;
        }
        let chunk = SITES[next / SITE_CHUNK]
            .get_or_init(|| Box::new([const { OnceLock::new() }; SITE_CHUNK]));
        let _ = chunk[next % SITE_CHUNK].set(site);
        next as u32
    });
    drop(index);
    let _ = SITE_CACHE.try_with(|c| c[slot].set((Some(site), ix)));
    ix
}

pub(super) fn site_at(ix: u32) -> Option<Site> {
    let ix = ix as usize;
    SITES
        .get(ix / SITE_CHUNK)?
        .get()?
        .get(ix % SITE_CHUNK)?
        .get()
        .copied()
}
