//! The dependent crate's C allocations are tracked by ffi-check: they show
//! up in leak reports with the C file and line that made them.
#![cfg(any(debug_assertions, feature = "always"))]

use ffi_check::{assert_clean, leak_report, LeakCheck};
use ffi_check_dependent::WordList;

#[test]
fn c_allocations_through_the_redirect_header_are_tracked() {
    let scope = LeakCheck::start();
    let mut words = WordList::new();
    words.push("alpha");
    words.push("beta");
    assert_eq!(words.get(0).as_deref(), Some("alpha"));

    // While the list lives, its blocks are live C memory: a leak report
    // taken now lists them, allocated in wordlist.c.
    let live = scope.finish();
    let sites: Vec<String> = live
        .groups()
        .iter()
        .filter_map(|g| g.site())
        .map(|s| s.to_string())
        .collect();
    assert!(
        sites.iter().any(|s| s.contains("wordlist.c")),
        "no block from wordlist.c in {sites:?}"
    );
    assert!(sites.iter().all(|s| s.contains("wordlist.c")), "{sites:?}");
    // The list, its array and the two words.
    assert_eq!(live.leaked_allocations(), 4, "{live}");
    drop(words);
}

#[test]
fn a_list_freed_correctly_leaks_nothing() {
    assert_clean(|| {
        let mut words = WordList::new();
        for w in ["a", "b", "c", "d", "e"] {
            words.push(w); // grows with realloc past 4
        }
        assert_eq!(words.len(), 5);
    });
}

#[test]
fn words_c_forgets_to_free_are_leaks_with_their_c_site() {
    let scope = LeakCheck::start();
    let mut words = WordList::new();
    words.push("kept");
    words.push("forever");
    words.free_forgetting_words();
    let report = scope.finish();
    assert_eq!(report.leaked_allocations(), 2, "{report}");
    assert_eq!(
        report.leaked_bytes(),
        "kept".len() + 1 + "forever".len() + 1
    );
    let group = &report.groups()[0];
    let site = group.site().expect("the strdup in wordlist.c");
    assert!(site.is_c(), "{site}");
    assert!(site.file().ends_with("wordlist.c"), "{site}");
    // And the process-wide report sees them too.
    assert!(leak_report()
        .groups()
        .iter()
        .any(|g| g.site() == Some(site)));
}
