//! The allocation-heavy workload both allocator benchmarks run: collections
//! and strings, built and dropped, the way ordinary Rust code allocates.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;

/// One round: about 4,000 allocations and as many frees.
pub fn round(seed: u32) -> usize {
    let mut words: Vec<String> = Vec::new();
    for i in 0..500u32 {
        words.push(format!("word-{}-{}", i, seed.wrapping_mul(i)));
    }
    let mut map: HashMap<&str, Vec<u32>> = HashMap::new();
    for (i, w) in words.iter().enumerate() {
        map.entry(w.as_str()).or_default().push(i as u32);
    }
    let mut tree = BTreeMap::new();
    for (i, w) in words.iter().enumerate().step_by(3) {
        tree.insert(w.clone(), i.to_string());
    }
    let mut joined = String::new();
    for w in words.iter().take(200) {
        joined.push_str(w);
        joined.push(' ');
    }
    let boxes: Vec<Box<[u8; 48]>> = (0..300).map(|i| Box::new([i as u8; 48])).collect();
    black_box(&boxes);
    black_box(map.len() + tree.len() + joined.len() + boxes.len())
}
