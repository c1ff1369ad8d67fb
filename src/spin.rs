//! A small lock for the checker's own short critical sections.
//!
//! Ground floor: uses nothing of the crate.
//!
//! [`SpinMutex`] is a flag taken with one compare-exchange and given back
//! with one plain store, so a critical section that meets no other (the
//! common case: the checker's are a few hundred instructions, and threads
//! mostly take different locks) executes one locked instruction, not the two
//! a sleeping mutex's release needs to learn whether anyone waits. A thread
//! that finds it held spins a little, then yields, then naps: a holder never
//! waits for anything but the processor.
//!
//! There is no poisoning: the checker's critical sections leave their data
//! consistent at every point that can panic, and the guard gives the flag
//! back while unwinding, so one panic never becomes a cascade.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// A lock for short critical sections. See the [module docs](self).
pub(crate) struct SpinMutex<T> {
    held: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: `value` is reached only through a `SpinGuard`, and at most one
// guard exists at a time (the flag is taken with Acquire and given back
// with Release, which orders every access in between); `T: Send` because
// the value is handed from thread to thread that way.
unsafe impl<T: Send> Sync for SpinMutex<T> {}

/// Holds a [`SpinMutex`]; gives it back when dropped.
pub(crate) struct SpinGuard<'a, T> {
    mutex: &'a SpinMutex<T>,
}

impl<T> SpinMutex<T> {
    pub(crate) const fn new(value: T) -> SpinMutex<T> {
        SpinMutex {
            held: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock, waiting while another thread holds it.
    #[inline]
    pub(crate) fn lock(&self) -> SpinGuard<'_, T> {
        if self
            .held
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
        SpinGuard { mutex: self }
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut round = 0u32;
        loop {
            // Wait reading (the line stays shared) before trying again.
            if !self.held.load(Ordering::Relaxed)
                && self
                    .held
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            round = round.saturating_add(1);
            if round < 64 {
                std::hint::spin_loop();
            } else if round < 256 {
                std::thread::yield_now();
            } else {
                // A long hold (a leak check visiting a shard, `fork`): nap
                // instead of spinning the processor away.
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }
}

impl<T> std::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard holds the lock: no other reference to the
        // value exists while it lives.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> std::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only borrow.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.held.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight threads adding under the lock, held long enough now and then
    /// for the others to spin, yield and nap: no addition is lost.
    #[test]
    fn additions_under_the_lock_are_never_lost() {
        static COUNT: SpinMutex<u64> = SpinMutex::new(0);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let mut c = COUNT.lock();
                        let v = *c;
                        if (i + t) % 5_000 == 0 {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        *c = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*COUNT.lock(), 8 * 20_000);
    }

    /// A panic while the lock is held gives it back: the next thread takes
    /// it and sees what was written before the panic.
    #[test]
    fn a_panic_under_the_lock_gives_it_back() {
        static VALUE: SpinMutex<u32> = SpinMutex::new(0);
        let r = std::thread::spawn(|| {
            let mut v = VALUE.lock();
            *v = 7;
            panic!("inside the lock");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(*VALUE.lock(), 7);
    }
}
