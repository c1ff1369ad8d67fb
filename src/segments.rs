//! The loaded objects' segments: where the program's and every library's
//! statics live.
//!
//! A C library compiled into the program (the usual `-sys` crate) keeps its
//! globals in the main program's `.data` and `.bss`; a shared library in its
//! own. The loader knows them all: [`loaded`] asks it (`dl_iterate_phdr`)
//! for every `PT_LOAD` segment of every loaded object, [`writable`] keeps
//! the ones C can write. [`contains`] answers "is this range a static?"
//! from a cached table, refreshed only when the loader's count of loaded
//! and unloaded objects moves; [`describe`] names a static's section and
//! symbol from the object's ELF symbol table, for reports only.
//!
//! A ground-floor module: it uses only [`bookkeeping`](crate::bookkeeping)
//! and [`writewatch`](crate::writewatch)'s [`Unwatched`] cells.

use std::ffi::{c_void, CStr};
use std::sync::RwLock;

use crate::bookkeeping::bookkeeping;
use crate::writewatch::Unwatched;

/// One `PT_LOAD` segment of a loaded object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The segment's first byte, in this process.
    pub start: usize,
    /// Its size in memory (`p_memsz`).
    pub len: usize,
    /// Its size in the file (`p_filesz`): past it is `.bss`, zero-filled.
    pub file_len: usize,
    /// Whether the segment is mapped writable (`PF_W`): `.data`, `.bss`,
    /// the relocated read-only data (`.data.rel.ro`, `.got`).
    pub writable: bool,
    /// The object's path; for the main program, the executable's path.
    pub object: String,
    /// True for the main program.
    pub main: bool,
    /// The object's load bias (`dlpi_addr`): its symbols' values plus this
    /// are their addresses.
    pub bias: usize,
}

impl Segment {
    /// One past the segment's last byte.
    pub fn end(&self) -> usize {
        self.start.saturating_add(self.len)
    }
}

/// The loader's counts of objects loaded and unloaded so far: when neither
/// moved, the set of loaded objects is the same.
fn generation_of(info: &libc::dl_phdr_info) -> (u64, u64) {
    (info.dlpi_adds, info.dlpi_subs)
}

/// Every `PT_LOAD` segment of every loaded object, freshly asked of the
/// loader, together with the loader's generation.
fn read_loaded() -> ((u64, u64), Vec<Segment>) {
    struct Walk {
        generation: (u64, u64),
        found: Vec<Segment>,
        main: Option<String>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // The loader calls back into Rust: never unwind into it.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: `data` is the `Walk` passed to dl_iterate_phdr below,
            // and `info` the loader's description of one object, valid for
            // this call.
            let (walk, info) = unsafe { (&mut *(data as *mut Walk), &*info) };
            walk.generation = generation_of(info);
            let name = if info.dlpi_name.is_null() {
                String::new()
            } else {
                // SAFETY: the loader's object name is a NUL-terminated string.
                unsafe { CStr::from_ptr(info.dlpi_name) }
                    .to_string_lossy()
                    .into_owned()
            };
            // The first object is the main program; its name is empty.
            let main = walk.found.is_empty() && walk.main.is_some() && name.is_empty();
            let object = if main {
                walk.main.take().unwrap_or_default()
            } else {
                name
            };
            if object.is_empty() {
                return;
            }
            for i in 0..usize::from(info.dlpi_phnum) {
                // SAFETY: the loader gives `dlpi_phnum` program headers.
                let ph = unsafe { &*info.dlpi_phdr.add(i) };
                if ph.p_type == libc::PT_LOAD && ph.p_memsz > 0 {
                    walk.found.push(Segment {
                        start: (info.dlpi_addr + ph.p_vaddr) as usize,
                        len: ph.p_memsz as usize,
                        file_len: ph.p_filesz as usize,
                        writable: ph.p_flags & libc::PF_W != 0,
                        object: object.clone(),
                        main,
                        bias: info.dlpi_addr as usize,
                    });
                }
            }
        }));
        r.is_err() as libc::c_int
    }
    let _g = bookkeeping();
    let main = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "the main program".to_owned());
    let mut walk = Walk {
        generation: (0, 0),
        found: Vec::new(),
        main: Some(main),
    };
    // SAFETY: `visit` matches the callback type and only reads what the
    // loader hands it; `walk` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut walk as *mut Walk).cast()) };
    (walk.generation, walk.found)
}

/// Every `PT_LOAD` segment of every loaded object, freshly read (allocated
/// as bookkeeping).
pub(crate) fn loaded() -> Vec<Segment> {
    read_loaded().1
}

/// The writable segments of every loaded object: where C's statics live.
pub(crate) fn writable() -> Vec<Segment> {
    let mut all = loaded();
    let _g = bookkeeping();
    all.retain(|s| s.writable);
    all
}

// ---- the cached table --------------------------------------------------------

/// The segments' ranges, sorted by start, and the loader generation they
/// were read at.
struct Table {
    generation: (u64, u64),
    ranges: Vec<(usize, usize)>,
}

/// Off the watched pages (see `writewatch::Unwatched`): a read lock writes
/// the lock word, and `call!` asks here.
static TABLE: Unwatched<RwLock<Table>> = Unwatched::new(|| {
    RwLock::new(Table {
        generation: (u64::MAX, u64::MAX),
        ranges: Vec::new(),
    })
});

/// The loader's counts of objects loaded and unloaded: they move whenever
/// the set of segments may have, and are asked cheaply (the walk stops at
/// the first object, whose description carries them), so a caller can keep
/// [`writable`]'s answer until they do.
pub(crate) fn generation() -> (u64, u64) {
    unsafe extern "C" fn first(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `(u64, u64)` passed below and `info` the
        // loader's description of one object, valid for this call.
        unsafe { *(data as *mut (u64, u64)) = generation_of(&*info) };
        1
    }
    let mut generation = (0u64, 0u64);
    // SAFETY: `first` matches the callback type, writes only the pair it is
    // given and never unwinds; `generation` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(first), (&mut generation as *mut (u64, u64)).cast()) };
    generation
}

fn table_holds(table: &Table, addr: usize, len: usize) -> bool {
    let i = table.ranges.partition_point(|&(start, _)| start <= addr);
    i > 0 && {
        let (start, end) = table.ranges[i - 1];
        addr >= start && addr.saturating_add(len) <= end
    }
}

/// glibc's `_dl_find_object` (2.35 and later): which loaded object's
/// mapping holds an address, found without the loader's lock. Looked up
/// once; `None` on an older C library.
type FindObject = unsafe extern "C" fn(*mut c_void, *mut c_void) -> libc::c_int;

fn find_object() -> Option<FindObject> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // 0: not looked up yet; 1: absent; otherwise the function.
    static FIND: AtomicUsize = AtomicUsize::new(0);
    let mut f = FIND.load(Ordering::Relaxed);
    if f == 0 {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only
        // looks the symbol up.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
        f = if p.is_null() { 1 } else { p as usize };
        FIND.store(f, Ordering::Relaxed);
    }
    // SAFETY: a non-null `_dl_find_object` from the C library, whose
    // prototype is `int _dl_find_object(void *, struct dl_find_object *)`.
    (f > 1).then(|| unsafe { std::mem::transmute::<usize, FindObject>(f) })
}

/// Whether `addr` lies in the mapping of some loaded object: `None` when
/// the C library cannot say cheaply.
fn in_some_object(addr: usize) -> Option<bool> {
    let find = find_object()?;
    // `struct dl_find_object` is 80 bytes on x86_64 (flags, four
    // pointers, seven reserved words); room to spare.
    let mut result = [0u64; 32];
    // SAFETY: `find` is `_dl_find_object`, which only reads the loader's
    // tables and writes one `struct dl_find_object` into `result`.
    Some(unsafe { find(addr as *mut c_void, result.as_mut_ptr().cast()) } == 0)
}

/// True when `[addr, addr + len)` lies inside one segment of a loaded
/// object: a static (or code) of the program or of a library. Answered
/// from a cached table; a miss first asks `_dl_find_object` (no lock)
/// whether any object holds the address (most misses are heap or mapped
/// memory: done), then the loader whether objects came or went since,
/// and re-reads the table only then.
pub(crate) fn contains(addr: usize, len: usize) -> bool {
    {
        let table = TABLE.get().read().unwrap_or_else(|e| e.into_inner());
        if table_holds(&table, addr, len) {
            return true;
        }
        if in_some_object(addr) == Some(false) {
            return false;
        }
        if table.generation == generation() {
            return false;
        }
    }
    let (generation, segments) = read_loaded();
    let _g = bookkeeping();
    let mut ranges: Vec<(usize, usize)> = segments.iter().map(|s| (s.start, s.end())).collect();
    ranges.sort_unstable();
    let mut table = TABLE.get().write().unwrap_or_else(|e| e.into_inner());
    *table = Table { generation, ranges };
    table_holds(&table, addr, len)
}

// ---- names, for reports ------------------------------------------------------

/// Names the static at `addr`: the object, its section and, where the
/// object's symbol table has one, the symbol and the offset in it, e.g.
/// "the main program's .bss, in `kept` at offset 8". `None` when `addr` is
/// in no loaded object. Reads the object's file: for reports only.
pub(crate) fn describe(addr: usize) -> Option<String> {
    let segments = loaded();
    let _g = bookkeeping();
    let seg = segments
        .iter()
        .find(|s| addr >= s.start && addr < s.end())?;
    let owner = if seg.main {
        "the main program's".to_owned()
    } else {
        let file = seg.object.rsplit('/').next().unwrap_or(&seg.object);
        format!("{file}'s")
    };
    let elf = std::fs::read(&seg.object).ok();
    let vaddr = addr.wrapping_sub(seg.bias) as u64;
    let section = elf
        .as_deref()
        .and_then(|e| section_name(e, vaddr))
        .unwrap_or_else(|| {
            if addr - seg.start < seg.file_len {
                ".data".to_owned()
            } else {
                ".bss".to_owned()
            }
        });
    let symbol = elf.as_deref().and_then(|e| symbol_at(e, vaddr));
    Some(match symbol {
        Some((name, offset)) => format!("{owner} {section}, in `{name}` at offset {offset}"),
        None => format!("{owner} {section}"),
    })
}

/// A little-endian field of `bytes` at `at`, or `None` past the end.
fn field(bytes: &[u8], at: usize, size: usize) -> Option<u64> {
    let b = bytes.get(at..at.checked_add(size)?)?;
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate() {
        v |= u64::from(*byte) << (8 * i);
    }
    Some(v)
}

/// A 64-bit little-endian ELF file's section headers: (name offset, type,
/// flags, address, file offset, size, link, entry size).
struct SectionHeader {
    name: u32,
    kind: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

const SHT_SYMTAB: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const SHF_ALLOC: u64 = 2;
const STT_OBJECT: u8 = 1;
const STT_TLS: u8 = 6;

fn section_headers(elf: &[u8]) -> Option<(Vec<SectionHeader>, usize)> {
    // ELF64, little-endian.
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let shoff = field(elf, 0x28, 8)? as usize;
    let shentsize = field(elf, 0x3a, 2)? as usize;
    let shnum = field(elf, 0x3c, 2)? as usize;
    let shstrndx = field(elf, 0x3e, 2)? as usize;
    if shentsize < 64 || shnum == 0 {
        return None;
    }
    let mut headers = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        headers.push(SectionHeader {
            name: field(elf, at, 4)? as u32,
            kind: field(elf, at + 4, 4)? as u32,
            flags: field(elf, at + 8, 8)?,
            addr: field(elf, at + 16, 8)?,
            offset: field(elf, at + 24, 8)?,
            size: field(elf, at + 32, 8)?,
            link: field(elf, at + 40, 4)? as u32,
            entsize: field(elf, at + 56, 8)?,
        });
    }
    Some((headers, shstrndx))
}

/// The NUL-terminated string at `offset` of the string table `table`.
fn string_at(elf: &[u8], table: &SectionHeader, offset: u64) -> Option<String> {
    let start = table.offset.checked_add(offset)? as usize;
    let end = (table.offset.checked_add(table.size)? as usize).min(elf.len());
    let bytes = elf.get(start..end)?;
    let len = bytes.iter().position(|b| *b == 0)?;
    Some(String::from_utf8_lossy(&bytes[..len]).into_owned())
}

/// The name of the allocated section holding the link-time address `vaddr`.
fn section_name(elf: &[u8], vaddr: u64) -> Option<String> {
    let (headers, shstrndx) = section_headers(elf)?;
    let names = headers.get(shstrndx)?;
    let sec = headers.iter().find(|h| {
        h.flags & SHF_ALLOC != 0 && vaddr >= h.addr && vaddr < h.addr.saturating_add(h.size)
    })?;
    string_at(elf, names, u64::from(sec.name)).filter(|n| !n.is_empty())
}

/// The data symbol whose extent holds the link-time address `vaddr`, and
/// the offset of `vaddr` in it; the full symbol table first, the dynamic
/// one when the file was stripped.
fn symbol_at(elf: &[u8], vaddr: u64) -> Option<(String, u64)> {
    let (headers, _) = section_headers(elf)?;
    for kind in [SHT_SYMTAB, SHT_DYNSYM] {
        for table in headers.iter().filter(|h| h.kind == kind && h.entsize >= 24) {
            let strings = headers.get(table.link as usize)?;
            let count = table.size / table.entsize;
            for i in 0..count {
                let at = (table.offset + i * table.entsize) as usize;
                let info = field(elf, at + 4, 1)? as u8;
                let value = field(elf, at + 8, 8)?;
                let size = field(elf, at + 16, 8)?;
                let kind = info & 0xf;
                if kind != STT_OBJECT && kind != STT_TLS {
                    continue;
                }
                if vaddr >= value && vaddr < value.saturating_add(size.max(1)) {
                    let name = string_at(elf, strings, field(elf, at, 4)?)?;
                    let shown = format!("{:#}", backtrace::SymbolName::new(name.as_bytes()));
                    return Some((shown, vaddr - value));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    static WITNESS: [u64; 4] = [1, 2, 3, 4];
    static mut WRITABLE_WITNESS: [u64; 4] = [0; 4];

    #[test]
    fn the_main_program_has_writable_segments() {
        let all = writable();
        assert!(all.iter().any(|s| s.main), "{all:?}");
        assert!(all.iter().all(|s| s.writable && s.len > 0));
    }

    #[test]
    fn statics_are_contained_and_the_heap_and_stack_are_not() {
        let p = std::ptr::addr_of!(WITNESS) as usize;
        assert!(contains(p, 32));
        let heap = Box::new([0u64; 4]);
        assert!(!contains(&*heap as *const _ as usize, 32));
        let local = [0u64; 4];
        assert!(!contains(local.as_ptr() as usize, 32));
        assert!(!contains(0x1234, 8));
    }

    /// The loader's lock-free lookup, where the C library has it, tells
    /// the program's statics from the heap (a miss in the table is
    /// answered by it).
    #[test]
    fn the_loader_tells_a_static_from_the_heap() {
        let heap = Box::new([0u64; 4]);
        let at_heap = in_some_object(&*heap as *const _ as usize);
        let at_static = in_some_object(std::ptr::addr_of!(WITNESS) as usize);
        match (at_heap, at_static) {
            (Some(h), Some(s)) => assert!(!h && s),
            (None, None) => eprintln!("no _dl_find_object here"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_static_is_named_by_its_symbol() {
        let p = std::ptr::addr_of!(WRITABLE_WITNESS) as usize + 8;
        let text = describe(p).expect("a static of the test binary");
        assert!(text.starts_with("the main program's .bss"), "{text}");
        assert!(text.contains("WRITABLE_WITNESS` at offset 8"), "{text}");
        assert_eq!(describe(0x1234), None);
    }
}
