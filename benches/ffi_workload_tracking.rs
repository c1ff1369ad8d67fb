//! The FFI workload (`benches/ffi_workload`) with `TrackingAllocator` as the
//! global allocator: the plain variant (what the allocator alone costs) and
//! the raw pointers through `call!` (raw-pointer code checked without
//! wrappers), beside the wrappers on the same allocator. Compare with the
//! `plain` figure of `ffi_workload_system`, run right before it.
//!
//! Run: `cargo bench --features always --bench ffi_workload_system --bench ffi_workload_tracking`.

use criterion::{criterion_group, criterion_main, Criterion};
use ffi_check::TrackingAllocator;

mod ffi_workload;

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator::new();

fn workload(c: &mut Criterion) {
    ffi_workload::bench_variants(c, "plain/TrackingAllocator/mode1", "TrackingAllocator");
    ffi_workload::bench_mode2(c, "TrackingAllocator");
}

criterion_group!(benches, workload);
criterion_main!(benches);
