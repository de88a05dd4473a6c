//! Where a request's balancer state lives: outside the request pool, in a per-worker list of
//! spare states, taken in `init_peer` and given back by a cleanup record of the request pool.
//!
//! Why not the pool: round robin's own per-request data is part of the state, so with the state
//! outside the pool a request takes no more pool memory than with round robin alone (only the
//! 24-byte cleanup record, for round robin's 40 bytes). An allocation that does not fit the
//! pool's current block costs a whole new 4 KB block, about 600 instructions: the state in the
//! pool made a sticky hit 3% dearer. The cleanup record is nginx's own (`ngx_pool_cleanup_add`),
//! so giving the state back from its handler relies on nothing of the pool's internals.

use std::alloc::Layout;
use std::cell::UnsafeCell;

/// How many spare states a worker keeps; more are freed.
const MAX_SPARES: usize = 1024;

/// A worker's spare states of type `T`. nginx runs balancers and pool cleanups on the worker's
/// one event-loop thread only.
pub struct Spares<T>(UnsafeCell<Vec<*mut T>>);

// SAFETY: only the worker's event-loop thread touches it (see above).
unsafe impl<T> Sync for Spares<T> {}

impl<T> Spares<T> {
    /// An empty list.
    pub const fn new() -> Self {
        Spares(UnsafeCell::new(Vec::new()))
    }

    /// A spare state, or a new allocation; null if memory ran out. Its content is undefined.
    pub fn take(&self) -> *mut T {
        // SAFETY: see `Sync`: no other reference to the list exists during this call.
        let list = unsafe { &mut *self.0.get() };
        match list.pop() {
            Some(state) => state,
            // SAFETY: `T` has a non-zero size (checked at compile time below).
            None => unsafe { std::alloc::alloc(Self::LAYOUT) }.cast(),
        }
    }

    /// Readies the list before a worker's first request: room for every spare, and `count`
    /// states. Made at the worker's start, the list and these states lie below the memory that
    /// requests take and give back; made by the first request, they lay above its pool's
    /// blocks and kept those, once freed, from merging back into the free top of the heap, and
    /// every later request's pool then cost the allocator about 100 instructions more.
    pub fn prepare(&self, count: usize) {
        // SAFETY: see `Sync`.
        let list = unsafe { &mut *self.0.get() };
        if list.capacity() == 0 && list.try_reserve_exact(MAX_SPARES).is_err() {
            return;
        }
        while list.len() < count.min(MAX_SPARES) {
            // SAFETY: `T` has a non-zero size (checked at compile time below).
            let state = unsafe { std::alloc::alloc(Self::LAYOUT) }.cast::<T>();
            if state.is_null() {
                return;
            }
            list.push(state);
        }
    }

    /// Takes a state back.
    ///
    /// # Safety
    /// `state` must come from `take` and no longer be used.
    #[inline(always)]
    pub unsafe fn give(&self, state: *mut T) {
        // SAFETY: see `Sync`.
        let list = unsafe { &mut *self.0.get() };
        // The usual case: room reserved (by `prepare`, or an earlier `give`), no allocation.
        if list.len() < list.capacity().min(MAX_SPARES) {
            list.push(state);
            return;
        }
        // SAFETY: per the function contract.
        unsafe { self.give_slow(state) }
    }

    /// [`give`](Self::give) when the list has no room: reserves it, or frees the state.
    ///
    /// # Safety
    /// As `give`.
    #[inline(never)]
    unsafe fn give_slow(&self, state: *mut T) {
        // SAFETY: see `Sync`.
        let list = unsafe { &mut *self.0.get() };
        if list.capacity() == 0 && list.try_reserve_exact(MAX_SPARES).is_err() {
            // SAFETY: per the function contract, allocated by `take` with this layout.
            unsafe { std::alloc::dealloc(state.cast(), Self::LAYOUT) };
            return;
        }
        if list.len() < MAX_SPARES {
            // Within the capacity reserved above: no allocation.
            list.push(state);
        } else {
            // SAFETY: as above.
            unsafe { std::alloc::dealloc(state.cast(), Self::LAYOUT) };
        }
    }

    const LAYOUT: Layout = {
        assert!(size_of::<T>() > 0);
        Layout::new::<T>()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_are_reused_newest_first_and_the_list_is_bounded() {
        let spares: Spares<[u64; 4]> = Spares::new();
        let states: Vec<*mut [u64; 4]> = (0..MAX_SPARES + 3).map(|_| spares.take()).collect();
        assert!(states.iter().all(|s| !s.is_null()));
        for &s in &states {
            // SAFETY: each state comes from `take` and is used by nothing.
            unsafe { spares.give(s) };
        }
        // SAFETY: only this test touches the list.
        let list = unsafe { &*spares.0.get() };
        assert_eq!(list.len(), MAX_SPARES);
        assert_eq!(list.capacity(), MAX_SPARES);
        assert_eq!(spares.take(), states[MAX_SPARES - 1]);
    }

    #[test]
    fn prepared_states_are_taken_first_and_room_is_reserved() {
        let spares: Spares<[u64; 4]> = Spares::new();
        spares.prepare(3);
        {
            // SAFETY: only this test touches the list.
            let list = unsafe { &*spares.0.get() };
            assert_eq!((list.len(), list.capacity()), (3, MAX_SPARES));
        }
        let taken: Vec<*mut [u64; 4]> = (0..4).map(|_| spares.take()).collect();
        assert!(taken.iter().all(|s| !s.is_null()));
        for &s in &taken {
            // SAFETY: each state comes from `take` and is used by nothing.
            unsafe { spares.give(s) };
        }
        spares.prepare(2 * MAX_SPARES);
        // SAFETY: as above.
        let list = unsafe { &*spares.0.get() };
        assert_eq!((list.len(), list.capacity()), (MAX_SPARES, MAX_SPARES));
    }
}
