//! Free lists of small blocks in front of a general allocator.
//!
//! A plugin's calls allocate and free many small blocks: each string the
//! host hands over, each key a plugin returns, each parsed payload. A
//! general allocator (Talc in the guest) searches bins and splits and
//! merges free chunks for each of them. [`Pooled`] keeps freed blocks of
//! up to 512 bytes on one free list per 16-byte size
//! class, so the next block of that class is a pop and a free is a push.
//! Larger blocks, and blocks aligned past 16 bytes, go to the inner
//! allocator as they are.
//!
//! Small blocks are never handed back to the inner allocator: the memory
//! they hold is the peak of small allocations, which the host bounds by
//! retiring an instance whose memory passed half its cap.
//!
//! Not thread-safe: it is `Sync` only where a guest has one thread
//! (`wasm32` without the `atomics` feature).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;

const GRANULE: usize = 16;
const CLASSES: usize = 32;
/// The largest block kept on a free list, in bytes.
const MAX_SMALL: usize = GRANULE * CLASSES;

/// A free-list cache of small blocks over the allocator `A`.
pub struct Pooled<A> {
    inner: A,
    /// Head of each size class's free list; a free block's first word
    /// points to the next one.
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

// SAFETY: a guest built for `wasm32` without atomics runs one thread, so
// the free lists are never touched concurrently.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for Pooled<A> {}

impl<A> Pooled<A> {
    pub const fn new(inner: A) -> Self {
        Pooled {
            inner,
            free: UnsafeCell::new([std::ptr::null_mut(); CLASSES]),
        }
    }
}

/// The size class of `layout`, if it is small.
fn class(layout: Layout) -> Option<usize> {
    if layout.align() > GRANULE || layout.size() > MAX_SMALL {
        return None;
    }
    Some(layout.size().max(1).div_ceil(GRANULE) - 1)
}

/// The layout every block of `class` is taken from the inner allocator with.
fn block(class: usize) -> Layout {
    // Sizes are multiples of the alignment, which is a power of two.
    Layout::from_size_align((class + 1) * GRANULE, GRANULE).expect("a valid block layout")
}

// SAFETY: small blocks are taken from `inner` with their class's layout,
// which satisfies any layout of that class (size up to the class's, align
// up to 16), and are only ever reused for that class; other layouts go to
// `inner` unchanged.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Pooled<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: one thread (see `Sync`), and `inner` never calls back.
        let head = unsafe { &mut (*self.free.get())[c] };
        if head.is_null() {
            return unsafe { self.inner.alloc(block(c)) };
        }
        let block = *head;
        // SAFETY: a free block's first word holds the next free block.
        *head = unsafe { block.cast::<*mut u8>().read() };
        block
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            return unsafe { self.inner.dealloc(ptr, layout) };
        };
        // SAFETY: as in `alloc`; a block is at least 16 bytes, aligned to 16.
        unsafe {
            let head = &mut (*self.free.get())[c];
            ptr.cast::<*mut u8>().write(*head);
            *head = ptr;
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the
        // alignment, does not overflow.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new)) {
            (Some(a), Some(b)) if a == b => ptr,
            (None, None) => unsafe { self.inner.realloc(ptr, layout, new_size) },
            _ => unsafe {
                let moved = self.alloc(new);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    /// A fixed pseudo-random sequence (xorshift), so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, below: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % below as u64) as usize
        }
    }

    fn fill(ptr: *mut u8, len: usize, tag: u8) {
        unsafe { std::ptr::write_bytes(ptr, tag, len) }
    }

    fn holds(ptr: *mut u8, len: usize, tag: u8) -> bool {
        unsafe { std::slice::from_raw_parts(ptr, len) }
            .iter()
            .all(|b| *b == tag)
    }

    #[test]
    fn blocks_keep_their_bytes_through_alloc_realloc_and_free() {
        let pool = Pooled::new(System);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Live blocks: pointer, layout, the byte they were filled with.
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        for step in 0..200_000u32 {
            let tag = step as u8;
            match rng.next(4) {
                0 | 1 => {
                    let size = if rng.next(10) == 0 {
                        1 + rng.next(4096)
                    } else {
                        1 + rng.next(MAX_SMALL + 64)
                    };
                    let layout =
                        Layout::from_size_align(size, 1 << rng.next(6)).expect("a valid layout");
                    let p = unsafe { pool.alloc(layout) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % layout.align(), 0, "aligned to {layout:?}");
                    fill(p, size, tag);
                    live.push((p, layout, tag));
                }
                2 if !live.is_empty() => {
                    let (p, layout, old) = live.swap_remove(rng.next(live.len()));
                    assert!(holds(p, layout.size(), old), "block kept its bytes");
                    unsafe { pool.dealloc(p, layout) };
                }
                3 if !live.is_empty() => {
                    let i = rng.next(live.len());
                    let (p, layout, old) = live[i];
                    let size = 1 + rng.next(2 * MAX_SMALL);
                    let q = unsafe { pool.realloc(p, layout, size) };
                    assert!(!q.is_null());
                    assert!(
                        holds(q, layout.size().min(size), old),
                        "realloc kept the bytes"
                    );
                    let layout =
                        Layout::from_size_align(size, layout.align()).expect("a valid layout");
                    fill(q, size, tag);
                    live[i] = (q, layout, tag);
                }
                _ => {}
            }
        }
        // No two live blocks overlap.
        let mut spans: Vec<(usize, usize)> = live
            .iter()
            .map(|(p, l, _)| (*p as usize, *p as usize + l.size()))
            .collect();
        spans.sort_unstable();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "blocks overlap");
        for (p, layout, tag) in live {
            assert!(holds(p, layout.size(), tag));
            unsafe { pool.dealloc(p, layout) };
        }
    }

    #[test]
    fn a_freed_small_block_is_reused_for_its_class() {
        let pool = Pooled::new(System);
        let a = Layout::from_size_align(40, 8).expect("a valid layout");
        let b = Layout::from_size_align(33, 1).expect("a valid layout"); // same 48-byte class
        let p = unsafe { pool.alloc(a) };
        unsafe { pool.dealloc(p, a) };
        assert_eq!(unsafe { pool.alloc(b) }, p);
        // Past the small sizes, blocks are the inner allocator's.
        let big = Layout::from_size_align(MAX_SMALL + 1, 8).expect("a valid layout");
        let q = unsafe { pool.alloc(big) };
        unsafe { pool.dealloc(q, big) };
        unsafe { pool.dealloc(p, b) };
    }
}
