//! Interned allocation sites, with the type allocated there and, once the
//! region is freed, the site that freed it: a region's [`Provenance`].
//!
//! A record names its provenance by a 32-bit index (0: none), so the record
//! stays four words and neither the type name nor the free site costs a
//! heap allocation per region (a program allocates one type at a site, and
//! frees from few sites). Index → provenance is an append-only table,
//! readable without a lock; provenance → index, for interning, is a map
//! behind its own mutex, with a small per-thread cache in front of it.
//!
//! Invariants: an index, once given, names the same provenance for good; at
//! most 4 Mi distinct provenances get one (any beyond are recorded as
//! unknown, and the callers keep the facts elsewhere). The site table's
//! mutex is taken alone or inside a shard's write, never before a shard's
//! mutex.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::site::Site;

const SITE_CHUNK: usize = 1024;
/// At most 4 Mi distinct sites; any beyond are recorded as unknown.
const SITE_CHUNKS: usize = 4096;

/// Where a region comes from: its allocation site, the type allocated
/// there, and the site that freed it (once freed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Provenance {
    pub site: Option<Site>,
    pub type_name: Option<&'static str>,
    pub free_site: Option<Site>,
}

impl Provenance {
    fn is_none(&self) -> bool {
        self.site.is_none() && self.type_name.is_none() && self.free_site.is_none()
    }
}

/// The interning key of a provenance: the type name by its address (one
/// `type_name::<T>()` is one string), so hashing and comparing are a few
/// words.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key(usize, usize, usize, usize);

impl Key {
    #[inline]
    fn of(p: &Provenance) -> Key {
        let (ptr, len) = p
            .type_name
            .map_or((0, 0), |t| (t.as_ptr() as usize, t.len()));
        Key(
            p.site.map_or(0, Site::word),
            ptr,
            len,
            p.free_site.map_or(0, Site::word),
        )
    }

    /// The key's slot in the per-thread cache: one multiply.
    #[inline]
    fn slot(&self) -> usize {
        let mixed = self.0 ^ self.1.rotate_left(21) ^ self.3.rotate_left(42);
        ((mixed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize
    }
}

/// Index → provenance: append-only, readable without a lock.
static SITES: [OnceLock<Box<[OnceLock<Provenance>; SITE_CHUNK]>>; SITE_CHUNKS] =
    [const { OnceLock::new() }; SITE_CHUNKS];
/// Provenance → index, for interning.
static SITE_INDEX: Mutex<SiteIndex> = Mutex::new(None);
type SiteIndex = Option<HashMap<Key, u32, BuildHasherDefault<WordHasher>>>;

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
    static SITE_CACHE: [Cell<(Option<Key>, u32)>; 64] =
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

/// The index of a provenance (0 for none, or when the table is full).
pub(super) fn intern(p: Provenance) -> u32 {
    if p.is_none() {
        return 0;
    }
    let key = Key::of(&p);
    let slot = key.slot();
    if let Ok((cached, ix)) = SITE_CACHE.try_with(|c| c[slot].get()) {
        if cached == Some(key) {
            return ix;
        }
    }
    let mut index = SITE_INDEX.lock().unwrap_or_else(|e| e.into_inner());
    let map = index.get_or_insert_with(Default::default);
    let next = map.len() + 1;
    let ix = *map.entry(key).or_insert_with(|| {
        if next >= SITE_CHUNK * SITE_CHUNKS {
            return 0;
        }
        let chunk = SITES[next / SITE_CHUNK]
            .get_or_init(|| Box::new([const { OnceLock::new() }; SITE_CHUNK]));
        let _ = chunk[next % SITE_CHUNK].set(p);
        next as u32
    });
    drop(index);
    let _ = SITE_CACHE.try_with(|c| c[slot].set((Some(key), ix)));
    ix
}

/// The provenance at an index (all `None` for 0).
pub(super) fn provenance_at(ix: u32) -> Provenance {
    let ix = ix as usize;
    SITES
        .get(ix / SITE_CHUNK)
        .and_then(OnceLock::get)
        .and_then(|chunk| chunk.get(ix % SITE_CHUNK))
        .and_then(OnceLock::get)
        .copied()
        .unwrap_or_default()
}

thread_local! {
    /// What a free interned lately: the provenance index of a region, the
    /// site that freed it, and the index of the two together. A program
    /// frees what it allocated at a site from few sites, many times.
    static FREED: [Cell<(u32, usize, u32)>; 8] = const { [const { Cell::new((0, 0, 0)) }; 8] };
}

/// The index of the provenance at `ix` with `free_site` as its free site
/// (0 when the table is full): what marking a region freed records. The
/// thread's recent answers first (an index names its provenance for good,
/// so an answer kept stays right).
pub(super) fn intern_freed(ix: u32, free_site: Option<Site>) -> u32 {
    let site = free_site.map_or(0, Site::word);
    let slot = ((u64::from(ix) ^ (site as u64).rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 61) as usize;
    if let Ok((kept_ix, kept_site, freed)) = FREED.try_with(|f| f[slot].get()) {
        if kept_ix == ix && kept_site == site && freed != 0 {
            return freed;
        }
    }
    let freed = intern(Provenance {
        free_site,
        ..provenance_at(ix)
    });
    if freed != 0 {
        let _ = FREED.try_with(|f| f[slot].set((ix, site, freed)));
    }
    freed
}
