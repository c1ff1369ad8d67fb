//! The conservative pointer scan behind rules P1, P4 and P5: which aligned
//! word of a range, if any, points into live *unpinned* managed memory.
//!
//! Go's typed check knows where a value's pointers are; Rust has no such
//! bitmap at run time, so ffi-check reads every pointer-aligned word. Two
//! things keep that cheap: a type that cannot hold an aligned pointer (or
//! that is declared [`PointerFree`]) is never scanned at all, and each word
//! is first compared with the lowest and highest managed address ever
//! tracked, a test the compiler vectorises, so pointer-free data streams past
//! at memory speed and only words that could be managed pointers cost a
//! registry lookup (and, in a long range, only those whose page holds some
//! unpinned managed memory).

use crate::pointer_map::PointerWords;
use crate::registry;

pub use crate::pointer_map::PointerFree;

/// True when a value with this alignment and size could hold an aligned
/// pointer, i.e. when lending it must scan it (a layout fact, kept with the
/// heap blocks it also describes).
pub(crate) use crate::heap::may_hold_pointers;

/// The first aligned word in `[start, start + len)` that points into live
/// unpinned managed memory: its offset, and the start of the region it
/// points into.
///
/// # Safety
/// The range is readable memory that is not freed while the scan runs.
pub(crate) unsafe fn find_unpinned(start: usize, len: usize) -> Option<(usize, usize)> {
    let (mlo, mhi) = registry::managed_bounds();
    // With the tracking allocator, every heap block is managed memory too.
    let (hlo, hhi) = crate::heap::heap_bounds();
    let (lo, hi) = (mlo.min(hlo), mhi.max(hhi));
    if lo >= hi {
        return None;
    }
    // SAFETY: the caller vouches for the range.
    let (skip, words) = unsafe { aligned_words(start, len) }?;
    // A short range (a struct lent call after call) asks the registry word
    // by word, through the thread's recent answers; a long one goes through
    // a reader that first asks the word's page whether any unpinned managed
    // region reaches it (most pages of a pointer table's targets hold only
    // pinned ones), and keeps its last page and answer from word to word.
    let mut reader = (words.len() > 32).then(registry::ScanReader::new);
    // Asked only once a word hits unpinned memory: most scans find none.
    let mut strict = None;
    find_in_bounds(words, lo, hi, |i, w| {
        unpinned_target(w, reader.as_mut(), &mut strict).map(|target| (skip + i * WORD, target))
    })
}

/// The start of the unpinned managed memory word `w` points into, if it
/// does and that memory is held to rule P1 here; `strict` caches
/// [`strict`](crate::mode::strict) once asked.
#[inline]
fn unpinned_target(
    w: usize,
    reader: Option<&mut registry::ScanReader>,
    strict: &mut Option<bool>,
) -> Option<usize> {
    let found = match reader {
        Some(reader) => reader.unpinned_managed_start(w),
        None => registry::unpinned_managed_start(w, true),
    };
    match found {
        // Memory declared `Managed` is held to Go's rule; a plain heap
        // block the registry knows (pinned or retained once) only when
        // the rules are strict.
        Some(target)
            if declared_managed(target) || *strict.get_or_insert_with(crate::mode::strict) =>
        {
            Some(target)
        }
        Some(_) => None,
        // A heap block of the tracking allocator that the registry does
        // not know (it knows every pinned one) is unpinned: it counts
        // when the rules are strict.
        None if crate::heap::unpinned_block_at(w)
            && *strict.get_or_insert_with(crate::mode::strict) =>
        {
            Some(w)
        }
        None => None,
    }
}

/// As [`find_unpinned`], reading only the words `map` names: of one value
/// at `start` (`stride == 0`), or of each element of a slice of `len` bytes
/// whose elements are `stride` bytes apart. An empty map reads nothing.
///
/// # Safety
/// As for [`find_unpinned`]; the map is the lent type's own.
pub(crate) unsafe fn find_unpinned_mapped(
    start: usize,
    len: usize,
    map: &PointerWords,
    stride: usize,
) -> Option<(usize, usize)> {
    if map.is_empty() || len == 0 {
        return None;
    }
    let Some(offsets) = map.offsets() else {
        // Many pointer words: the span that covers them, scanned whole (a
        // slice of such values: all of it).
        let (from, to) = match map.span() {
            Some((from, to)) if stride == 0 && from < len => (from, to.min(len)),
            _ => (0, len),
        };
        // SAFETY: a sub-range of the range the caller vouches for.
        return unsafe { find_unpinned(start + from, to - from) }
            .map(|(offset, target)| (from + offset, target));
    };
    let (mlo, mhi) = registry::managed_bounds();
    let (hlo, hhi) = crate::heap::heap_bounds();
    let (lo, hi) = (mlo.min(hlo), mhi.max(hhi));
    if lo >= hi {
        return None;
    }
    let (step, count) = if stride == 0 {
        (0, 1)
    } else {
        (stride, len / stride)
    };
    let mut reader = (count * offsets.len() > 32).then(registry::ScanReader::new);
    let mut strict = None;
    for k in 0..count {
        let base = k * step;
        for &at in offsets {
            let at = base + at as usize;
            if at + WORD > len {
                continue;
            }
            // SAFETY: the word lies inside the range the caller vouches
            // for; a packed field's word may be unaligned, hence the
            // unaligned read.
            let w = unsafe { std::ptr::read_unaligned((start + at) as *const usize) };
            if w.wrapping_sub(lo) >= hi - lo {
                continue;
            }
            if let Some(target) = unpinned_target(w, reader.as_mut(), &mut strict) {
                return Some((at, target));
            }
        }
    }
    None
}

/// Whether the managed region at `start` was declared so (`Managed`,
/// `Pinned`), rather than a plain heap block the registry learnt of.
pub(crate) fn declared_managed(start: usize) -> bool {
    registry::lookup(start).is_some_and(|r| r.family == crate::family::FAMILY_RUST)
}

const WORD: usize = std::mem::size_of::<usize>();

/// The aligned words of `[start, start + len)`, and how far the first of
/// them is from `start`. `None` when the range holds no whole aligned word.
///
/// # Safety
/// The range is readable memory that stays readable while the words are
/// used. Padding bytes and words another thread is writing are read as
/// integers: the scans only compare them, as any conservative scanner does.
pub(crate) unsafe fn aligned_words<'a>(start: usize, len: usize) -> Option<(usize, &'a [usize])> {
    let first = start.checked_add(WORD - 1)? & !(WORD - 1);
    let end = start.checked_add(len)?;
    if first >= end {
        return None;
    }
    let n = (end - first) / WORD;
    // SAFETY: `first` is aligned and the n words lie inside the readable
    // range the caller vouches for.
    Some((first - start, unsafe {
        std::slice::from_raw_parts(first as *const usize, n)
    }))
}

/// Calls `f(index, word)` for each word in `[lo, hi)`, in order, until `f`
/// returns an answer. Blocks of 64 words are tested against the bounds with
/// no early exit, so the test vectorises and pointer-free data streams past
/// at memory speed; only a block with a candidate is looked at closely.
#[inline(always)]
pub(crate) fn find_in_bounds<T>(
    words: &[usize],
    lo: usize,
    hi: usize,
    mut f: impl FnMut(usize, usize) -> Option<T>,
) -> Option<T> {
    if lo >= hi {
        return None;
    }
    let span = hi - lo;
    for (b, block) in words.chunks(64).enumerate() {
        let any = block
            .iter()
            .fold(false, |acc, w| acc | (w.wrapping_sub(lo) < span));
        if !any {
            continue;
        }
        for (i, w) in block.iter().enumerate() {
            if w.wrapping_sub(lo) < span {
                if let Some(t) = f(b * 64 + i, *w) {
                    return Some(t);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    //! The long scan's page filter against what the registry says, on
    //! synthetic regions (the registry never reads the memory it tracks;
    //! only the scanned words are real).

    use super::*;
    use crate::registry::{NewRegion, RegionKind, Release};

    fn add(start: usize, size: usize, kind: RegionKind) -> u64 {
        registry::insert(NewRegion {
            start,
            size,
            kind,
            // Declared managed memory, as `Managed::new` registers it.
            family: if kind == RegionKind::Managed {
                crate::family::FAMILY_RUST
            } else {
                0
            },
            flags: 0,
            site: None,
            type_name: None,
        })
    }

    fn pin(start: usize, by: i32) {
        registry::update(start, |r| r.pins = (r.pins as i32 + by) as u16).expect("registered");
    }

    /// `find_unpinned` over `words` (a long range: the reader's path).
    fn scan(words: &[usize]) -> Option<(usize, usize)> {
        assert!(words.len() > 32);
        // SAFETY: the slice is readable and outlives the scan.
        unsafe { find_unpinned(words.as_ptr() as usize, std::mem::size_of_val(words)) }
    }

    #[test]
    fn long_scan_finds_unpinned_among_pinned_in_every_state_change() {
        let base = 0x6d00_0000_0000usize;
        // 200 pinned 16-byte values side by side, over the first pages.
        let pinned: Vec<usize> = (0..200).map(|i| base + i * 32).collect();
        for &p in &pinned {
            add(p, 16, RegionKind::Managed);
            pin(p, 1);
        }
        let mut words: Vec<usize> = pinned.iter().map(|p| p + 8).collect();
        assert_eq!(scan(&words), None, "only pinned targets");

        // A managed buffer over three pages, starting in the last pinned
        // page: a pointer into its third page is found through its cover.
        let buf = base + 200 * 32;
        add(buf, 3 * 4096, RegionKind::Managed);
        words[150] = buf + 2 * 4096 + 40;
        assert_eq!(scan(&words), Some((150 * WORD, buf)));

        // Pinned, then unpinned, then freed.
        pin(buf, 1);
        assert_eq!(scan(&words), None, "buffer pinned");
        pin(buf, -1);
        assert_eq!(scan(&words), Some((150 * WORD, buf)), "buffer unpinned");
        registry::mark_freed(buf, None, None, Release::Released);
        assert_eq!(scan(&words), None, "buffer freed");

        // A C region among the pinned ones is not managed memory.
        let c = base + (1 << 20);
        add(c, 64, RegionKind::C);
        words[3] = c + 8;
        assert_eq!(scan(&words), None, "C memory");

        // One of the pinned values unpinned: the first word into it.
        pin(pinned[7], -1);
        words[100] = pinned[7];
        assert_eq!(scan(&words), Some((7 * WORD, pinned[7])));
        // A stale record replaced by a pinned one of the same start.
        add(pinned[7], 16, RegionKind::Managed);
        pin(pinned[7], 1);
        assert_eq!(scan(&words), None, "replaced and pinned");

        registry::remove(buf);
        registry::remove(c);
        for &p in &pinned {
            registry::remove(p);
        }
    }
}
