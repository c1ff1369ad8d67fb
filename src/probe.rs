//! Safe probes of memory the checker has no record of: can these bytes be
//! read, is this plausibly a block of C's `malloc`, is this range mapped and
//! readable. They let the checker refuse a wild pointer (a free of
//! `0x1234`, a root over unmapped memory) with a report instead of handing
//! it on and crashing.
//!
//! Reads go through `process_vm_readv` on the process itself: the kernel
//! copies the bytes or answers `EFAULT`, so probing an unmapped or
//! unreadable address never faults. Whole ranges are checked against
//! `/proc/self/maps`, read afresh each time (ranges are checked only when a
//! root is registered: rare, and never on a hot path).
//!
//! Ground floor: it uses no other module but the bookkeeping guard.

use std::ffi::c_void;

use crate::bookkeeping::bookkeeping;

/// glibc's malloc aligns every block to 16 bytes on x86_64.
const MALLOC_ALIGN: usize = 16;
/// What a pointer into no readable memory is, in reports.
pub(crate) const UNREADABLE: &str = "not in readable memory (no heap block can start there)";
/// A malloc chunk's header: `prev_size`, then `size` with three flag bits.
const CHUNK_HEADER: usize = 16;
/// The smallest chunk glibc makes (header plus two links).
const MIN_CHUNK: usize = 32;
/// `size` flag: the chunk is its own `mmap` mapping.
const IS_MMAPPED: usize = 2;

/// Copies `buf.len()` bytes at `addr` into `buf`; false when any of them
/// cannot be read (unmapped, or mapped without read permission).
pub(crate) fn read(addr: usize, buf: &mut [u8]) -> bool {
    if buf.is_empty() {
        return true;
    }
    if addr.checked_add(buf.len()).is_none() {
        return false;
    }
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` is our own writable buffer of `iov_len` bytes; the
    // kernel reads `remote` on our behalf and fails with EFAULT instead of
    // faulting when it is not readable.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

/// The machine word at `addr`, if it can be read.
pub(crate) fn read_word(addr: usize) -> Option<usize> {
    let mut b = [0u8; std::mem::size_of::<usize>()];
    read(addr, &mut b).then(|| usize::from_ne_bytes(b))
}

/// Whether the byte at `addr` can be read.
pub(crate) fn readable(addr: usize) -> bool {
    read(addr, &mut [0u8])
}

/// Why `ptr` cannot be a block that glibc's `malloc` returned and has not
/// taken back, or `None` when it plausibly is one: aligned as malloc
/// aligns, with a readable chunk header whose size is sane and whose
/// neighbour (or, for a block of its own mapping, whose mapping) is there.
/// A plausible block may still be a wrong pointer; an implausible one is
/// certainly not a live malloc block, and passing it to `free` would corrupt
/// the heap or crash.
pub(crate) fn not_a_malloc_block(ptr: usize) -> Option<&'static str> {
    if !readable(ptr) {
        return Some(UNREADABLE);
    }
    if ptr % MALLOC_ALIGN != 0 || ptr < CHUNK_HEADER {
        return Some("not aligned as `malloc` aligns its blocks");
    }
    let chunk = ptr - CHUNK_HEADER;
    let (Some(prev_size), Some(word)) = (read_word(chunk), read_word(chunk + 8)) else {
        return Some("not a block of C's allocator (no chunk header before it)");
    };
    let size = word & !7;
    if word & IS_MMAPPED != 0 {
        // A block of its own mapping: the mapping starts `prev_size` bytes
        // before the chunk, and both its start and length are page-aligned.
        let page = page_size();
        let Some(block) = chunk.checked_sub(prev_size) else {
            return Some("not a block of C's allocator (its chunk header is not `malloc`'s)");
        };
        let total = prev_size.saturating_add(size);
        if block % page != 0 || total % page != 0 || total < CHUNK_HEADER + MIN_CHUNK {
            return Some("not a block of C's allocator (its chunk header is not `malloc`'s)");
        }
        if !readable(block) || !readable(block + total - 1) {
            return Some("not a block of C's allocator (its mapping is not there)");
        }
        return None;
    }
    if size < MIN_CHUNK || size % MALLOC_ALIGN != 0 {
        return Some("not a block of C's allocator (its chunk header is not `malloc`'s)");
    }
    // The next chunk's header follows; a block in use has its neighbour's
    // "previous in use" bit set.
    match chunk.checked_add(size + 8).and_then(read_word) {
        Some(next) if next & !7 >= MALLOC_ALIGN && next & 1 == 1 => None,
        Some(_) => {
            Some("not a block of C's allocator in use (its neighbour's header says otherwise)")
        }
        None => Some("not a block of C's allocator (the heap does not go on after it)"),
    }
}

thread_local! {
    /// This thread's stack, `(lowest, highest)` address, once asked (`(0, 0)`
    /// until then, or when it cannot be told).
    static STACK: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// This thread's stack as `(lowest, highest)` address, asked of the thread
/// library once per thread (for the main thread that reads
/// `/proc/self/maps`); `(0, 0)` when it cannot be told.
pub(crate) fn stack_bounds() -> (usize, usize) {
    STACK
        .try_with(|s| {
            if s.get() == (0, 0) {
                s.set(ask_stack_bounds());
            }
            s.get()
        })
        .unwrap_or((0, 0))
}

/// Whether `[addr, addr + len)` lies in the live part of this thread's
/// stack: above the caller's frame and below the stack's top. Those bytes
/// belong to the frames of the callers and are mapped; below the current
/// frame the stack may not be (it grows on demand), so nothing there is
/// read.
#[inline(never)]
pub(crate) fn on_live_stack(addr: usize, len: usize) -> bool {
    let here = 0u8;
    let sp = std::ptr::addr_of!(here) as usize;
    let (_, top) = stack_bounds();
    addr >= sp && addr.checked_add(len).is_some_and(|end| end <= top)
}

#[cold]
fn ask_stack_bounds() -> (usize, usize) {
    let _g = bookkeeping();
    // SAFETY: pthread_getattr_np fills `attr` for the calling thread;
    // pthread_attr_getstack reads it; the attribute is destroyed once.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let mut base: *mut c_void = std::ptr::null_mut();
        let mut size: usize = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut base, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            (base as usize, base as usize + size)
        } else {
            (0, 0)
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(1)
}

/// Why `[start, start + len)` cannot be scanned, or `None` when every byte
/// of it is mapped readable (from `/proc/self/maps`).
pub(crate) fn unreadable_range(start: usize, len: usize) -> Option<String> {
    let Some(end) = start.checked_add(len) else {
        return Some(format!(
            "{start:#x} + {len} bytes overflows the address space"
        ));
    };
    let _g = bookkeeping();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        // Without the table, probe both ends at least.
        return (!readable(start) || !readable(end - 1))
            .then(|| format!("{start:#x}..{end:#x} is not readable memory"));
    };
    let mut covered = start;
    for line in maps.lines() {
        let Some((lo, hi, perms)) = parse_line(line) else {
            continue;
        };
        if hi <= covered || lo > covered {
            continue;
        }
        if !perms.starts_with('r') {
            return Some(format!(
                "{covered:#x} is in a mapping without read permission ({lo:#x}..{hi:#x} {perms})"
            ));
        }
        covered = hi;
        if covered >= end {
            return None;
        }
    }
    Some(format!(
        "{covered:#x} is not mapped (the range {start:#x}..{end:#x} must be readable memory)"
    ))
}

/// This process's mappings from `/proc/self/maps`, `(lo, hi)`; empty when
/// the table cannot be read. (For the interposed allocator's leak scan.)
#[cfg_attr(not(feature = "interpose"), allow(dead_code))]
pub(crate) fn mappings() -> Vec<(usize, usize)> {
    let _g = bookkeeping();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    maps.lines()
        .filter_map(parse_line)
        .map(|(lo, hi, _)| (lo, hi))
        .collect()
}

/// `start-end perms ...` of one `/proc/self/maps` line.
fn parse_line(line: &str) -> Option<(usize, usize, &str)> {
    let mut parts = line.split_ascii_whitespace();
    let range = parts.next()?;
    let perms = parts.next()?;
    let (lo, hi) = range.split_once('-')?;
    Some((
        usize::from_str_radix(lo, 16).ok()?,
        usize::from_str_radix(hi, 16).ok()?,
        perms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_is_there_and_refuses_what_is_not() {
        let x = 0x1122_3344_5566_7788usize;
        assert_eq!(read_word(&x as *const usize as usize), Some(x));
        assert_eq!(read_word(0x1234), None);
        assert!(!readable(0));
    }

    extern "C" {
        // glibc's own allocator, whatever `malloc` is bound to (the
        // `interpose` feature defines one with a header of its own).
        fn __libc_malloc(size: usize) -> *mut c_void;
        fn __libc_free(p: *mut c_void);
    }

    #[test]
    fn a_malloc_block_is_plausible_and_wild_pointers_are_not() {
        // SAFETY: plain malloc/free of a small block.
        let p = unsafe { __libc_malloc(40) } as usize;
        assert_eq!(not_a_malloc_block(p), None);
        // SAFETY: a large block gets a mapping of its own.
        let big = unsafe { __libc_malloc(1 << 20) } as usize;
        assert_eq!(not_a_malloc_block(big), None);
        assert!(not_a_malloc_block(0x1234).is_some());
        assert!(not_a_malloc_block(p + 8).is_some());
        // SAFETY: both came from __libc_malloc above.
        unsafe {
            __libc_free(p as *mut c_void);
            __libc_free(big as *mut c_void);
        }
    }

    #[test]
    fn a_range_must_be_mapped_readable_and_not_overflow() {
        let table = [0u64; 16];
        assert_eq!(
            unreadable_range(table.as_ptr() as usize, std::mem::size_of_val(&table)),
            None
        );
        assert!(unreadable_range(0x1000, 4096).is_some());
        assert!(unreadable_range(table.as_ptr() as usize, usize::MAX).is_some());
        assert!(unreadable_range(table.as_ptr() as usize, 1 << 40).is_some());
    }
}
