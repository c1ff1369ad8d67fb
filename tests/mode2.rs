//! Mode 2 (`FFI_CHECK=2`): C keeping what it was lent, found by scanning
//! tracked C memory, registered roots and watched libraries after each call
//! (P2, P3, P5), and guard bytes around the C memory a `CBox` owns (C4).
//!
//! The mode and the scan's memory of what it found are process-wide, so
//! every test here runs in mode 2 under one lock, and leaves no pointer to
//! its managed memory behind in C memory.
#![cfg(any(debug_assertions, feature = "always"))]

mod common;

use std::ffi::c_void;
use std::os::raw::c_long;
use std::sync::{Mutex, MutexGuard};

use common::fixtures::{self, shared};
use common::{assert_c_site, assert_report, assert_report_line, assert_rust_site, kinds, only};
use ffi_check::{
    assert_clean, c_free, call, capture, scan_c_memory, set_mode, watch_library, CBox, Managed,
    Mode, Pinned, Pinner, ViolationKind,
};

static MODE2: Mutex<()> = Mutex::new(());

/// Runs the caller's test alone, in mode 2.
fn mode2() -> MutexGuard<'static, ()> {
    let guard = MODE2.lock().unwrap_or_else(|e| e.into_inner());
    set_mode(Mode::Full);
    guard
}

/// A C table of `n` pointers, freed on drop.
struct Table(*mut *mut c_void);

impl Table {
    fn new(n: usize) -> Table {
        // SAFETY: fx_table_new has no preconditions.
        let t = unsafe { fixtures::fx_table_new(n) };
        assert!(!t.is_null());
        Table(t)
    }
    /// The tracked C region: one hidden length slot before the table.
    fn region(&self) -> usize {
        self.0 as usize - std::mem::size_of::<usize>()
    }
    fn clear(&self, i: usize) {
        // SAFETY: i is inside the table.
        unsafe {
            call!(fixtures::fx_table_put(
                self.0,
                i,
                std::ptr::null::<c_void>()
            ))
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // SAFETY: the table came from fx_table_new and is freed once.
        unsafe { fixtures::fx_table_free(self.0) }
    }
}

// ---- P2: C keeps a lent pointer ---------------------------------------------

#[test]
fn c_keeping_a_lent_pointer_in_a_tracked_table_is_retained() {
    let _mode = mode2();
    let table = Table::new(4);
    let (lent, lent_line) = (Managed::new(7u64), line!());

    let (_, violations) = capture(|| {
        // SAFETY: slot 2 is inside the table; the pointer is cleared below,
        // before `lent` drops.
        unsafe { call!(fixtures::fx_table_put(table.0, 2, &lent)) }
    });
    let call_line = line!() - 2;

    let v = only(&violations);
    assert_report_line(
        v,
        ViolationKind::Retained,
        "P2",
        "ffi-check: C keeps a pointer to unpinned managed memory after the call (`fx_table_put`)",
    );
    assert_eq!(v.callee(), Some("fx_table_put"));
    assert_rust_site(v.call_site(), file!(), call_line);
    let regions = v.regions();
    assert_eq!(regions[0].role(), "retained region");
    assert_eq!(regions[0].addr(), lent.addr());
    assert_rust_site(regions[0].alloc_site(), file!(), lent_line);
    assert_eq!(regions[1].role(), "held in");
    assert_eq!(regions[1].addr(), table.region());
    assert_c_site(regions[1].alloc_site());
    let report = v.to_string();
    assert!(
        report.contains(&format!(
            "held by: the C memory at {:#x}, at offset 24",
            table.region()
        )),
        "{report}"
    );

    // Reported once: later calls do not repeat it while it stays.
    let ((), again) = capture(|| {
        // SAFETY: slot 0 is inside the table.
        unsafe { call!(fixtures::fx_table_put_number(table.0, 0, 1)) }
    });
    assert!(again.is_empty(), "{again:#?}");
    table.clear(2);
}

#[test]
fn c_keeping_a_pinned_pointer_in_a_table_is_ok() {
    let _mode = mode2();
    let table = Table::new(2);
    let kept = Pinned::new(1u32);
    let held = Managed::new(2u32);
    assert_clean(|| {
        let mut pinner = Pinner::new();
        pinner.pin(&held);
        // SAFETY: both pointers are pinned and cleared before they unpin.
        unsafe {
            call!(fixtures::fx_table_put(table.0, 0, &kept));
            call!(fixtures::fx_table_put(table.0, 1, &held));
        }
        table.clear(0);
        table.clear(1);
    });
}

#[test]
fn c_storing_c_pointers_and_numbers_is_ok() {
    let _mode = mode2();
    let table = Table::new(4);
    // Unpinned managed memory exists and is lent, so the scan has targets.
    let lent = Managed::from_vec(vec![1u8, 2, 3]);
    let c_value = CBox::new(9u64);
    assert_clean(|| {
        // SAFETY: every slot is inside the table; the fixture allocates and
        // frees slot 1's block itself.
        unsafe {
            call!(fixtures::fx_table_put_number(table.0, 0, 42));
            call!(fixtures::fx_table_put_own(table.0, 1, 32));
            call!(fixtures::fx_table_put(table.0, 2, &c_value));
            call!(fixtures::fx_table_put_number(table.0, 3, usize::MAX));
            call!(fixtures::fx_checksum(&lent, lent.len()));
            call!(fixtures::fx_table_free_slot(table.0, 1));
        }
        table.clear(2);
    });
}

#[test]
fn c_keeping_a_lent_pointer_in_a_registered_root_is_retained() {
    let _mode = mode2();
    // SAFETY: registers the fixture's static table.
    unsafe { fixtures::fx_root_register() };
    // SAFETY: only returns an address.
    let root = unsafe { fixtures::fx_root_table_addr() } as usize;
    let lent = Managed::new(3u64);

    let (_, violations) = capture(|| {
        // SAFETY: slot 1 of the static table; cleared below.
        unsafe { call!(fixtures::fx_root_put(1, &lent)) }
    });
    // SAFETY: clears the slot and unregisters the root.
    unsafe {
        fixtures::fx_root_put(1, std::ptr::null());
        fixtures::fx_root_unregister();
    }

    let v = only(&violations);
    assert_report(
        v,
        ViolationKind::Retained,
        "C keeps a pointer to unpinned managed memory after the call (`fx_root_put`)",
    );
    assert_eq!(v.regions()[0].addr(), lent.addr());
    assert_eq!(v.regions().len(), 1, "a root is not a tracked region");
    let report = v.to_string();
    let holder = format!("held by: root {root:#x} (32 bytes, registered at ");
    assert!(report.contains(&holder), "{report}");
    assert!(report.contains("fixtures.c:"), "{report}");
    assert!(report.contains("at offset 8"), "{report}");
}

/// A root removed is no longer named: the table is still a static of the
/// program, which the scan reads anyway.
#[test]
fn a_root_removed_is_no_longer_scanned_as_a_root() {
    let _mode = mode2();
    // SAFETY: registers, then unregisters, the fixture's static table.
    unsafe {
        fixtures::fx_root_register();
        fixtures::fx_root_unregister();
    }
    let lent = Managed::new(4u64);
    let ((), v) = capture(|| {
        // SAFETY: slot 0 of the static table; cleared below.
        unsafe { call!(fixtures::fx_root_put(0, &lent)) }
    });
    // SAFETY: clears the slot.
    unsafe { fixtures::fx_root_put(0, std::ptr::null()) };
    let report = only(&v).to_string();
    assert!(!report.contains("held by: root"), "{report}");
    assert!(
        report.contains("held by: the main program's .bss, in `fx_root_table` at offset 0"),
        "{report}"
    );
}

#[test]
fn a_watched_shared_library_keeping_a_lent_pointer_is_retained() {
    let _mode = mode2();
    let lib = shared::load();
    let lent = Managed::new(5u64);
    let (keep, forget) = (lib.keep, lib.forget);

    // Not watched: its globals are read anyway, as every loaded object's.
    let ((), unwatched) = capture(|| {
        // SAFETY: the library keeps the pointer; emptied below.
        unsafe { call!(keep(1, &lent)) }
    });
    // SAFETY: empties the library's table.
    unsafe { forget() };
    let report = only(&unwatched).to_string();
    assert!(
        report.contains(".bss, in `shfx_table` at offset 8"),
        "{report}"
    );

    assert_eq!(watch_library(shared::NAME), 1);
    let ((), violations) = capture(|| {
        // SAFETY: as above.
        unsafe { call!(keep(1, &lent)) }
    });
    // SAFETY: reads the slot, then empties the table.
    let kept = unsafe { (lib.kept)(1) };
    // SAFETY: as above.
    unsafe { call!(forget()) };
    assert_eq!(kept, lent.as_ptr().cast::<c_void>());

    let v = only(&violations);
    assert_report(
        v,
        ViolationKind::Retained,
        "C keeps a pointer to unpinned managed memory after the call (`keep`)",
    );
    assert_eq!(v.regions()[0].addr(), lent.addr());
    let report = v.to_string();
    assert!(
        report.contains("writable data (.data/.bss) of `")
            && report.contains(&format!("{}.so`", shared::NAME)),
        "{report}"
    );
    // The static is named from the library's symbol table: slot 1 of the
    // table, 8 bytes in.
    assert!(
        report.contains(".bss, in `shfx_table` at offset 8"),
        "{report}"
    );
}

// ---- P5: Rust stores a pointer into C memory ---------------------------------

#[test]
fn rust_writing_an_unpinned_pointer_into_a_cbox_is_stored_unpinned() {
    let _mode = mode2();
    let (value, value_line) = (Managed::new(6u32), line!());
    let mut slots = CBox::new([std::ptr::null::<u32>(); 4]);
    slots[1] = value.as_ptr(); // a raw store through DerefMut, not `set`
    let buf = CBox::from_slice(&[1u8, 2]);

    let (_, violations) = capture(|| {
        // SAFETY: two readable bytes.
        unsafe { call!(fixtures::fx_checksum(&buf, 2)) }
    });
    let call_line = line!() - 2;
    slots[1] = std::ptr::null();

    let v = only(&violations);
    assert_report_line(
        v,
        ViolationKind::StoredUnpinned,
        "P5",
        "ffi-check: unpinned managed pointer stored into C memory",
    );
    assert_rust_site(v.call_site(), file!(), call_line);
    let regions = v.regions();
    assert_eq!(regions[0].role(), "C region written");
    assert_eq!(regions[0].addr(), slots.addr());
    assert_eq!(regions[1].role(), "points to");
    assert_eq!(regions[1].addr(), value.addr());
    assert_rust_site(regions[1].alloc_site(), file!(), value_line);
    let report = v.to_string();
    assert!(
        report.contains("before the call to `fx_checksum`"),
        "{report}"
    );
    assert!(report.contains("at offset 8"), "{report}");
}

#[test]
fn rust_writing_a_pinned_pointer_into_a_cbox_is_ok() {
    let _mode = mode2();
    let value = Pinned::new(7u32);
    assert_clean(|| {
        let mut slots = CBox::new([std::ptr::null::<u32>(); 2]);
        slots[0] = value.as_ptr();
        scan_c_memory();
        let buf = CBox::from_slice(&[1u8]);
        // SAFETY: one readable byte.
        unsafe { call!(fixtures::fx_checksum(&buf, 1)) };
    });
}

// ---- P3: freed or unpinned while C memory holds it ---------------------------

#[test]
fn unpinning_what_a_c_table_holds_is_freed_while_retained() {
    let _mode = mode2();
    let table = Table::new(2);
    // A size no other test of this file allocates: the tests run side by
    // side, and another test's C memory may still hold a pointer to where
    // one of its own blocks was, which a block of a common size could now
    // occupy (that C memory would then rightly be reported as a holder).
    let held = Managed::new([8u64; 29]);
    let mut pinner = Pinner::new();
    pinner.pin(&held);
    // SAFETY: pinned while C holds it (until the unpin below).
    assert_clean(|| unsafe { call!(fixtures::fx_table_put(table.0, 1, &held)) });

    let ((), violations) = capture(|| pinner.unpin());
    let v = only(&violations);
    assert_report_line(
        v,
        ViolationKind::FreedWhileRetained,
        "P3",
        "ffi-check: managed memory unpinned while C still holds a pointer to it",
    );
    assert_eq!(v.regions()[0].role(), "retained region");
    assert_eq!(v.regions()[0].addr(), held.addr());
    assert_eq!(v.regions()[1].role(), "held in");
    assert_eq!(v.regions()[1].addr(), table.region());
    let report = v.to_string();
    assert!(report.contains("at offset 16"), "{report}");

    // Not reported again as P2 by the next call's scan.
    let ((), again) = capture(|| table.clear(0));
    assert!(again.is_empty(), "{again:#?}");
    table.clear(1);
}

#[test]
fn dropping_pinned_memory_a_c_table_holds_is_freed_while_retained() {
    let _mode = mode2();
    let table = Table::new(2);
    let held = Pinned::new(9u64);
    let addr = held.addr();
    // SAFETY: pinned while C holds it.
    assert_clean(|| unsafe { call!(fixtures::fx_table_put(table.0, 0, &held)) });

    let ((), violations) = capture(|| drop(held));
    // C's pointer stays valid: the memory was kept.
    // SAFETY: the dropped memory was kept, not freed.
    assert_eq!(unsafe { *(addr as *const u64) }, 9);
    table.clear(0);

    let v = only(&violations);
    assert_report_line(
        v,
        ViolationKind::FreedWhileRetained,
        "P3",
        "ffi-check: managed memory freed while C still holds a pointer to it",
    );
    assert_eq!(v.regions()[0].addr(), addr);
    assert_eq!(v.regions()[1].addr(), table.region());
    assert!(v.to_string().contains("kept (leaked)"), "{v}");
}

#[test]
fn dropping_after_c_lets_go_is_ok() {
    let _mode = mode2();
    let table = Table::new(1);
    assert_clean(|| {
        let held = Pinned::new(10u64);
        // SAFETY: pinned while C holds it; cleared before the drop.
        unsafe { call!(fixtures::fx_table_put(table.0, 0, &held)) };
        table.clear(0);
        drop(held);
    });
}

#[test]
fn dropping_memory_c_retained_names_the_retain_site() {
    let _mode = mode2();
    let _slot = common::slot();
    let kept = Pinned::new(11u64);
    // SAFETY: pinned; C keeps it in the fixture's slot.
    assert_clean(|| unsafe { call!(fixtures::fx_keep(&kept)) });
    let ((), violations) = capture(|| drop(kept));
    common::forget();
    let v = only(&violations);
    assert_report(
        v,
        ViolationKind::FreedWhileRetained,
        "managed memory freed while C still holds a pointer to it",
    );
    assert_c_site(v.regions()[0].retain_site());
}

#[test]
fn a_retain_released_before_the_drop_is_ok() {
    let _mode = mode2();
    let _slot = common::slot();
    assert_clean(|| {
        let kept = Pinned::new(12u64);
        // SAFETY: pinned; released (fx_forget) before the drop.
        unsafe { call!(fixtures::fx_keep(&kept)) };
        common::forget();
        drop(kept);
    });
}

// ---- C4: guarded loans ----------------------------------------------------------

#[test]
fn c_writing_past_a_cbox_is_a_guard_overrun() {
    let _mode = mode2();
    let (mut buf, buf_line) = (CBox::from_elem(0u8, 16), line!());

    let (_, violations) = capture(|| {
        // SAFETY: the mistake under test: 17 bytes into 16 (the guard
        // bytes after the block take the extra one).
        unsafe { call!(fixtures::fx_fill(&mut buf, 17, 1)) }
    });
    let call_line = line!() - 2;

    let v = only(&violations);
    assert_report_line(
        v,
        ViolationKind::GuardOverrun,
        "C4",
        "ffi-check: C wrote past the end of a guarded C allocation (`fx_fill`)",
    );
    assert_eq!(v.callee(), Some("fx_fill"));
    assert_rust_site(v.call_site(), file!(), call_line);
    assert_eq!(v.regions()[0].role(), "overrun region");
    assert_eq!(v.regions()[0].addr(), buf.addr());
    assert_eq!(v.regions()[0].size(), 16);
    assert_rust_site(v.regions()[0].alloc_site(), file!(), buf_line);
    let report = v.to_string();
    assert!(
        report.contains("1 guard byte(s) changed, the nearest at byte 16 of a 16-byte block"),
        "{report}"
    );
    assert!(buf.iter().all(|b| *b == 1), "the block itself was written");

    // The guard was restored: the free finds nothing more.
    let ((), at_free) = capture(|| drop(buf));
    assert!(at_free.is_empty(), "{at_free:#?}");
}

#[test]
fn c_writing_before_a_cbox_is_a_guard_overrun() {
    let _mode = mode2();
    let mut buf = CBox::from_elem(0u8, 8);
    let (_, violations) = capture(|| {
        // SAFETY: the mistake under test: one byte before the block.
        unsafe { call!(fixtures::fx_poke(&mut buf, -1 as c_long, 7)) }
    });
    let v = only(&violations);
    assert_report(
        v,
        ViolationKind::GuardOverrun,
        "C wrote before the start of a guarded C allocation (`fx_poke`)",
    );
    assert!(v.to_string().contains("1 byte(s) before its start"), "{v}");
}

#[test]
fn an_overrun_outside_a_call_is_found_at_the_free() {
    let _mode = mode2();
    let mut buf = CBox::from_elem(0u8, 4);
    // SAFETY: the mistake under test, by a direct (unchecked) call.
    unsafe { fixtures::fx_poke(buf.as_mut_ptr(), 6, 1) };
    let ((), violations) = capture(|| buf.free());
    let v = only(&violations);
    assert_report(
        v,
        ViolationKind::GuardOverrun,
        "C wrote past the end of a guarded C allocation",
    );
    let report = v.to_string();
    assert!(report.contains("at byte 6 of a 4-byte block"), "{report}");
    assert!(
        report.contains("found when the block was freed"),
        "{report}"
    );
}

#[test]
fn writing_exactly_the_block_is_ok() {
    let _mode = mode2();
    assert_clean(|| {
        let mut buf = CBox::from_elem(0u8, 16);
        // SAFETY: 16 bytes into 16.
        unsafe { call!(fixtures::fx_fill(&mut buf, 16, 3)) };
        let s = CBox::from_str("fits");
        // SAFETY: a NUL-terminated string.
        assert_eq!(unsafe { call!(fixtures::fx_strlen(&s)) }, 4);
    });
}

#[test]
fn guarded_blocks_are_freed_by_their_real_base() {
    let _mode = mode2();
    // Handed to C for good: C's own `free` must accept it (glibc aborts on
    // a pointer malloc did not return). The checker does not see that free:
    // its record of the block stays, as for any block C frees behind its
    // back.
    let owned = CBox::new(1u64).into_raw();
    // SAFETY: into_raw gave C a malloc'd block it now owns.
    unsafe { libc::free(owned.cast()) };

    assert_clean(|| {
        // Lent, then freed through the C API or `c_free`.
        let lent = std::mem::ManuallyDrop::new(CBox::new(2u64));
        // SAFETY: the box gave up ownership (ManuallyDrop); freed once.
        unsafe {
            call!(fixtures::fx_free_it(
                lent.as_ptr().cast_mut().cast::<c_void>()
            ))
        };
        let lent = std::mem::ManuallyDrop::new(CBox::from_slice(&[3u8; 5]));
        // SAFETY: as above.
        unsafe { c_free(lent.as_ptr().cast_mut().cast()) };
    });
}

#[test]
fn a_stale_pointer_to_a_guarded_block_handed_over_is_caught() {
    let _mode = mode2();
    let b = CBox::new(5u64);
    let old = b.as_ptr();
    let owned = b.into_raw();
    assert_ne!(old, owned.cast_const(), "handed over as a plain block");
    let ((), violations) = capture(|| {
        // SAFETY: the stale pointer is only checked, never read.
        unsafe { call!(fixtures::fx_free_it(old.cast_mut().cast::<c_void>())) }
    });
    assert_eq!(
        kinds(&violations),
        [ViolationKind::UseAfterFree, ViolationKind::DoubleFree]
    );
    // SAFETY: C owns `owned` and frees it once.
    unsafe { libc::free(owned.cast()) };
}
