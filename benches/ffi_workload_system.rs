//! The FFI workload (`benches/ffi_workload`: a Rust buffer lent to C, a C
//! allocation read and freed, a string lent, per iteration) on the system
//! allocator: plain calls, the same raw pointers through `call!`, and the
//! wrappers (`Managed`, `CBox`) through `call!`, in one run. Its twin
//! `ffi_workload_tracking` runs the raw-pointer variant with
//! `TrackingAllocator` as the global allocator.
//!
//! Run: `cargo bench --features always --bench ffi_workload_system --bench ffi_workload_tracking`.

use criterion::{criterion_group, criterion_main, Criterion};

mod ffi_workload;

fn workload(c: &mut Criterion) {
    ffi_workload::bench_variants(c, "plain", "System");
}

criterion_group!(benches, workload);
criterion_main!(benches);
