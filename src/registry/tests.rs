//! The registry against a plain ordered map of the same regions, and
//! lock-free readers racing writers on the same pages. Each test uses
//! its own window of synthetic addresses (the registry never reads the
//! memory it tracks).

use super::directory::page_entry;
use super::lookup::find;
use super::*;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn add(start: usize, size: usize, kind: RegionKind) -> u64 {
    insert(NewRegion {
        start,
        size,
        kind,
        family: 0,
        flags: 0,
        site: Some(Site::caller()),
        type_name: None,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Model {
    size: usize,
    id: u64,
    freed: bool,
    pins: u16,
    managed: bool,
}

/// Every page's unpinned count in `[base, base + span)` is exactly the
/// number of the model's live, unpinned managed regions starting in it.
fn check_counts(model: &BTreeMap<usize, Model>, base: usize, span: usize) {
    let mut want: BTreeMap<usize, u16> = BTreeMap::new();
    for (&s, m) in model {
        if m.managed && !m.freed && m.pins == 0 {
            *want.entry(s >> PAGE_SHIFT).or_default() += 1;
        }
    }
    for page in base >> PAGE_SHIFT..(base + span) >> PAGE_SHIFT {
        let got = page_entry(page).map_or(0, |(_, c)| c.load(Ordering::Relaxed));
        let want = want.get(&page).copied().unwrap_or(0);
        assert_eq!(got, want, "unpinned count of page {page:#x}");
    }
}

/// The model's region containing `addr`.
fn containing(model: &BTreeMap<usize, Model>, addr: usize) -> Option<(usize, Model)> {
    let (&s, &m) = model.range(..=addr).next_back()?;
    (addr < s + m.size.max(1)).then_some((s, m))
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.below(10) {
        0 => 0,
        1..=5 => 1 + rng.below(128),
        6 | 7 => 1 + rng.below(6000),
        8 => 4096 * (1 + rng.below(4)),
        _ => 1 + rng.below(300_000),
    }
}

/// Checks every address of interest: region edges and random ones.
fn check_lookups(model: &mut BTreeMap<usize, Model>, base: usize, span: usize, rng: &mut Rng) {
    let mut probes: Vec<usize> = Vec::new();
    for (&s, m) in model.iter() {
        let end = s + m.size.max(1);
        probes.extend([s, s.saturating_sub(1), end - 1, end, s + m.size.max(1) / 2]);
    }
    probes.extend((0..200).map(|_| base + rng.below(span)));
    for addr in probes {
        let want = containing(model, addr);
        let got = lookup_for_free(addr);
        match (want, got) {
            (Some((s, m)), Some(r)) => {
                assert_eq!((r.start, r.size, r.id), (s, m.size, m.id), "at {addr:#x}");
                assert_eq!(r.state == RegionState::Freed, m.freed, "at {addr:#x}");
                assert_eq!(r.pins, m.pins, "at {addr:#x}");
                assert_eq!(
                    lookup(addr).is_some(),
                    !m.freed,
                    "released filter at {addr:#x}"
                );
            }
            (Some((s, m)), None) if m.freed => {
                // Evicted from the quarantine: the record must be gone.
                assert!(detail(s).is_none(), "freed {s:#x} is half there");
                model.remove(&s);
            }
            (None, None) => {}
            (want, got) => panic!("at {addr:#x}: model {want:x?}, registry {got:x?}"),
        }
    }
}

#[test]
fn registry_agrees_with_an_ordered_map() {
    const BASE: usize = 0x6a10_0000_0000 - 3 * 4096;
    const SPAN: usize = 6 << 20;
    for seed in 1..=6u64 {
        let base = BASE + (seed as usize) * (64 << 20);
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut model: BTreeMap<usize, Model> = BTreeMap::new();
        // Starts of evicted regions: registered again, they take the
        // vacant record in place.
        let mut evicted: Vec<usize> = Vec::new();
        for step in 0..1500 {
            match rng.below(9) {
                0..=3 => {
                    let neighbour = model
                        .iter()
                        .nth(rng.below(model.len().max(1)))
                        .map(|(&s, m)| s + m.size.max(1) + rng.below(64));
                    let start = match (evicted.pop(), neighbour) {
                        (Some(s), _) if rng.below(2) == 0 => s,
                        // Beside another region, often in its page: pages
                        // with several records, some of them vacant.
                        (_, Some(s)) if rng.below(2) == 0 && s < base + SPAN => s,
                        _ => base + rng.below(SPAN),
                    };
                    let size = random_size(&mut rng);
                    let end = start + size.max(1);
                    let stale: Vec<usize> = model
                        .iter()
                        .filter(|(&s, m)| s < end && start < s + m.size.max(1))
                        .map(|(&s, _)| s)
                        .collect();
                    for s in stale {
                        model.remove(&s);
                    }
                    let kind = if rng.below(2) == 0 {
                        RegionKind::C
                    } else {
                        RegionKind::Managed
                    };
                    let id = add(start, size, kind);
                    model.insert(
                        start,
                        Model {
                            size,
                            id,
                            freed: false,
                            pins: 0,
                            managed: kind == RegionKind::Managed,
                        },
                    );
                }
                4 => {
                    if let Some((&s, _)) = model.iter().nth(rng.below(model.len().max(1))) {
                        let gone = remove(s).expect("a modelled region is registered");
                        assert_eq!(gone.start, s);
                        model.remove(&s);
                    }
                }
                5 => {
                    let n = rng.below(model.len().max(1));
                    if let Some((&s, m)) = model.iter_mut().nth(n) {
                        let before = mark_freed(s, Some(m.id), None, Release::Released);
                        if !m.freed {
                            assert_eq!(before.map(|r| r.state), Some(RegionState::Live));
                        }
                        m.freed = true;
                    }
                }
                6 => {
                    let n = rng.below(model.len().max(1));
                    if let Some((&s, m)) = model.iter_mut().nth(n) {
                        // Pins come and go; unpinned regions count.
                        let unpin = m.pins > 0 && rng.below(2) == 0;
                        let pins = update(s, |r| {
                            if unpin {
                                r.pins -= 1;
                            } else {
                                r.pins += 1;
                            }
                            r.extra_mut().leak_reason = Some(format!("step {step}"));
                            r.pins
                        });
                        if unpin {
                            m.pins -= 1;
                        } else {
                            m.pins += 1;
                        }
                        assert_eq!(pins, Some(m.pins));
                        let d = detail(s).expect("present");
                        assert_eq!(d.leak_reason.as_deref(), Some(&*format!("step {step}")));
                    }
                }
                7 => {
                    // The quarantine lets a freed region go: its record
                    // becomes vacant, which no reader may see.
                    let n = rng.below(model.len().max(1));
                    if let Some((&s, m)) = model.iter().nth(n) {
                        if m.freed {
                            assert!(quarantine::evict_now(s), "{s:#x} was quarantined");
                            model.remove(&s);
                            evicted.push(s);
                            assert!(detail(s).is_none(), "evicted {s:#x} is gone");
                            assert!(lookup_for_free(s).is_none_or(|r| r.start != s));
                        }
                    }
                }
                _ => {
                    check_lookups(&mut model, base, SPAN, &mut rng);
                    check_counts(&model, base, SPAN + (1 << 20));
                }
            }
        }
        check_lookups(&mut model, base, SPAN, &mut rng);
        check_counts(&model, base, SPAN + (1 << 20));
        let mut seen = BTreeMap::new();
        for_each(|s, r| {
            if (base..base + SPAN + (1 << 20)).contains(&s) {
                seen.insert(s, (r.size, r.id()));
            }
        });
        let want: BTreeMap<usize, (usize, u64)> =
            model.iter().map(|(&s, m)| (s, (m.size, m.id))).collect();
        assert_eq!(seen, want, "seed {seed}");
        for s in want.keys() {
            remove(*s);
        }
        check_counts(&BTreeMap::new(), base, SPAN + (1 << 20));
        for addr in (0..2000).map(|_| base + rng.below(SPAN)) {
            assert!(lookup_for_free(addr).is_none(), "{addr:#x} after clearing");
        }
    }
}

#[test]
fn large_and_huge_regions_are_found_from_any_page() {
    let base = 0x6b00_0000_0000;
    let big = base + 123;
    let id = add(big, 5 << 20, RegionKind::Managed);
    let huge = base + (1 << 30);
    let huge_id = add(huge, 300 << 20, RegionKind::C);
    for addr in [big, big + 4096, big + (3 << 20) + 17, big + (5 << 20) - 1] {
        assert_eq!(lookup(addr).map(|r| (r.start, r.id)), Some((big, id)));
    }
    assert!(lookup(big + (5 << 20)).is_none());
    assert!(lookup(big - 1).is_none());
    for addr in [huge + 1, huge + (150 << 20), huge + (300 << 20) - 1] {
        assert_eq!(lookup(addr).map(|r| (r.start, r.id)), Some((huge, huge_id)));
    }
    // A small region inside a page the big one reaches is stale: it
    // replaces the big record.
    let small = big + (2 << 20);
    add(small, 64, RegionKind::C);
    assert!(detail(big).is_none());
    assert!(lookup(big + (3 << 20)).is_none());
    assert_eq!(lookup(small + 8).map(|r| r.start), Some(small));
    remove(small);
    remove(huge);
    assert!(lookup(huge + (150 << 20)).is_none());
}

#[test]
fn readers_never_see_a_write_half_done() {
    // Reader-owned regions at even slots, churned ones at odd slots of
    // the same pages: every lookup of a reader's region must find it
    // whole, and of a gap, nothing, while the writer grows, shrinks and
    // empties those pages' blocks.
    let base = 0x6c00_0000_0000;
    let slot = move |i: usize| base + i * 96;
    let stable: Vec<(usize, u64)> = (0..400)
        .map(|i| (slot(2 * i), add(slot(2 * i), 40, RegionKind::Managed)))
        .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(7);
            while !stop.load(Ordering::Relaxed) {
                let s = slot(2 * rng.below(400) + 1);
                add(s, 48, RegionKind::C);
                if rng.below(3) > 0 {
                    remove(s);
                }
            }
        })
    };
    let mut rng = Rng(11);
    for _ in 0..300_000 {
        let (s, id) = stable[rng.below(stable.len())];
        let r = find(s + 39, false).expect("a stable region");
        assert_eq!((r.start, r.size, r.id), (s, 40, id));
        assert!(find(s + 40, false).is_none(), "the gap after {s:#x}");
        assert!(find(s + 95, false).is_none() || find(s + 96, false).is_some());
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    for i in 0..800 {
        remove(slot(i));
    }
}

#[test]
fn vacant_records_keep_their_place_and_are_never_seen() {
    use super::directory::page_slot;
    // Forty 64-byte C blocks in one page, as an allocator lays them out.
    let base = 0x6b30_0000_0000usize;
    let starts: Vec<usize> = (0..40).map(|i| base + 16 + i * 80).collect();
    let page = base >> PAGE_SHIFT;
    let counts = || {
        let (b, len) = page_slot(page)
            .and_then(|s| s.block())
            .expect("the page has a block");
        (len, b.vacant())
    };
    let seen = || {
        let mut v = Vec::new();
        for_each(|s, _| {
            if (base..base + 4096).contains(&s) {
                v.push(s);
            }
        });
        v.sort_unstable();
        v
    };
    let mut ids: Vec<u64> = starts.iter().map(|&s| add(s, 64, RegionKind::C)).collect();
    // Every other one freed and let go by the quarantine: vacant.
    for &s in starts.iter().step_by(2) {
        assert!(mark_freed(s, None, None, Release::Released).is_some());
        assert!(quarantine::evict_now(s));
    }
    assert_eq!(counts(), (40, 20), "the evicted records kept their places");
    for (k, &s) in starts.iter().enumerate() {
        if k % 2 == 0 {
            assert!(lookup_for_free(s).is_none(), "vacant {s:#x} is not found");
            assert!(lookup_for_free(s + 63).is_none());
            assert!(detail(s).is_none() && remove(s).is_none());
            assert!(update(s, |_| ()).is_none());
        } else {
            let r = lookup_for_free(s + 63).expect("a live neighbour");
            assert_eq!((r.start, r.id), (s, ids[k]));
        }
    }
    let odd: Vec<usize> = starts.iter().copied().skip(1).step_by(2).collect();
    assert_eq!(seen(), odd, "a leak check sees the live ones only");
    // Registered again at the same addresses: the vacant places are taken.
    for (k, &s) in starts.iter().enumerate().step_by(2) {
        ids[k] = add(s, 64, RegionKind::C);
    }
    assert_eq!(counts(), (40, 0));
    assert_eq!(seen(), starts);
    for (k, &s) in starts.iter().enumerate() {
        assert_eq!(lookup_for_free(s + 1).map(|r| r.id), Some(ids[k]));
    }
    // A region that reaches over a vacant record's start drops it.
    assert!(mark_freed(starts[1], None, None, Release::Released).is_some());
    assert!(quarantine::evict_now(starts[1]));
    assert_eq!(counts(), (40, 1));
    assert!(remove(starts[0]).is_some());
    let wide = add(starts[0], 100, RegionKind::C);
    assert_eq!(counts(), (39, 0), "the vacant record inside it went");
    assert_eq!(lookup_for_free(starts[1] + 4).map(|r| r.id), Some(wide));
    // A page whose records are all vacant gives its block up.
    let left: Vec<usize> = std::iter::once(starts[0])
        .chain(starts[2..].iter().copied())
        .collect();
    for &s in &left {
        assert!(mark_freed(s, None, None, Release::Released).is_some());
        assert!(quarantine::evict_now(s));
    }
    assert!(page_slot(page).and_then(|s| s.block()).is_none());
    assert!(seen().is_empty());
    for &s in &starts {
        assert!(lookup_for_free(s).is_none());
    }
}

#[test]
fn a_kept_place_is_checked_before_it_is_trusted() {
    // Regions registered in one page, each time in front of the others:
    // every registration moves the records after it up by one, so the
    // place the thread kept for each earlier region is stale by then.
    let base = 0x6b40_0000_0000usize;
    let starts: Vec<usize> = (0..12).rev().map(|i| base + 32 + i * 128).collect();
    let ids: Vec<u64> = starts.iter().map(|&s| add(s, 96, RegionKind::C)).collect();
    // Freed, each found where it is now (the first one through a place
    // that moved eleven times).
    for (&s, &id) in starts.iter().zip(&ids) {
        let before = mark_freed(s, Some(id), None, Release::Released).expect("registered");
        assert_eq!((before.start, before.id), (s, id));
        let r = lookup_for_free(s + 95).expect("still recorded");
        assert_eq!((r.start, r.state), (s, RegionState::Freed));
    }
    // Let go by the quarantine, and registered again in the vacant places,
    // the other way round.
    for &s in &starts {
        assert!(quarantine::evict_now(s));
    }
    for &s in starts.iter().rev() {
        let id = add(s, 96, RegionKind::C);
        let r = lookup(s).expect("registered again");
        assert_eq!((r.start, r.id, r.state), (s, id, RegionState::Live));
        assert!(lookup(s + 100).is_none(), "nothing between the regions");
    }
    for &s in &starts {
        assert!(remove(s).is_some());
    }
    assert!(starts.iter().all(|&s| lookup_for_free(s).is_none()));
}

#[test]
fn regions_of_one_site_freed_from_two_sites_keep_their_own_free_site() {
    // The same allocation site (`add`'s), freed alternately from two lines:
    // a free's interned provenance is kept by the region and the free site.
    let base = 0x6b50_0000_0000usize;
    let (here, there) = (Site::caller(), Site::caller());
    assert_ne!(here, there);
    let starts: Vec<usize> = (0..6).map(|i| base + i * 64).collect();
    for (n, &s) in starts.iter().enumerate() {
        let id = add(s, 48, RegionKind::C);
        let site = if n % 2 == 0 { here } else { there };
        assert!(mark_freed(s, Some(id), Some(site), Release::Released).is_some());
    }
    let alloc_site = detail(starts[0]).expect("quarantined").alloc_site;
    assert!(alloc_site.is_some());
    for (n, &s) in starts.iter().enumerate() {
        let d = detail(s).expect("quarantined");
        assert_eq!(d.state, RegionState::Freed);
        assert_eq!(
            d.free_site,
            Some(if n % 2 == 0 { here } else { there }),
            "{n}"
        );
        assert_eq!(d.alloc_site, alloc_site);
        remove(s);
    }
}
