//! The binary's global allocator: mimalloc, with small alignments served by `mi_malloc`.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every request to `mi_malloc_aligned`, with
//! the layout's alignment. mimalloc 3 serves that from its fast path only when the block
//! is at most 1 KiB and the next free block happens to be aligned; every other request
//! (a `HeaderMap`'s entries, a hash table with its 16-byte aligned control bytes, any
//! buffer over 1 KiB whose size is not a power of two) takes `..._aligned_at_generic`,
//! then `..._aligned_at_overalloc`: a block `alignment - 1` bytes larger, its page marked
//! as holding interior pointers, which makes each later `mi_free` there slower too.
//! Callgrind counted about five such requests per proxied REST request (bench/README.md,
//! REST fifteenth round).
//!
//! Plain `mi_malloc` already returns what those requests need: mimalloc's blocks of up
//! to 8 bytes are 8-aligned, and every larger size class is a multiple of 16 bytes with
//! the first block of each page 16-aligned (`MI_ALIGN2W` and
//! `MI_PAGE_MIN_START_BLOCK_ALIGN` on 64-bit targets). So a layout whose alignment is at
//! most 16 and at most its size goes to `mi_malloc`, `mi_zalloc` and `mi_realloc`, the
//! test the standard library's own allocator makes before calling `malloc`; any other
//! goes to the `_aligned` functions, as before. `mi_free` frees both kinds.

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The largest alignment plain `mi_malloc` guarantees for a block larger than 8 bytes
/// (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator (`#[global_allocator]` in the binary).
pub struct Mimalloc;

/// Whether plain `mi_malloc(size)` returns a block aligned as `align` asks.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every pointer handed out comes from mimalloc and is freed by `mi_free`, which
// frees blocks of the plain and the aligned functions alike. A block is at least as
// aligned as its layout asks: `plain` sends a request to the unaligned functions only
// when their blocks are aligned enough (see the module's documentation, and the tests
// below, which check every size up to 4 KiB), and every other request to the `_aligned`
// ones. Sizes are passed as given; mimalloc returns null when it cannot allocate, as
// `GlobalAlloc` requires.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    fn aligned(p: *mut u8, align: usize) -> bool {
        !p.is_null() && (p as usize) % align == 0
    }

    #[test]
    fn every_size_and_alignment_gets_an_aligned_block() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in (1..=4096).chain([8191, 65_537, 1 << 20]) {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // Several at once, so blocks after a page's first are checked too.
                let blocks: Vec<*mut u8> = (0..4)
                    .map(|_| {
                        // SAFETY: a layout of non-zero size; freed below.
                        unsafe { a.alloc(layout) }
                    })
                    .collect();
                for &p in &blocks {
                    assert!(aligned(p, align), "size {size} align {align}: {p:?}");
                }
                for p in blocks {
                    // SAFETY: allocated above with this layout, freed once.
                    unsafe { a.dealloc(p, layout) };
                }
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_and_aligned() {
        let a = Mimalloc;
        for (size, align) in [(24, 8), (48, 16), (1500, 8), (100, 64), (8, 16)] {
            let layout = Layout::from_size_align(size, align).expect("layout");
            // SAFETY: a layout of non-zero size; read within it; freed once.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(aligned(p, align));
                assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                a.dealloc(p, layout);
            }
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_and_the_alignment() {
        let a = Mimalloc;
        for align in [1, 8, 16, 32, 256] {
            let layout = Layout::from_size_align(8, align).expect("layout");
            // SAFETY: writes and reads stay within each block's current size; the block
            // is reallocated with its current layout and freed once.
            unsafe {
                let mut p = a.alloc(layout);
                p.write_bytes(0xA5, 8);
                let mut size = 8;
                for new_size in [24, 1000, 1500, 5000, 40, 3] {
                    let old = Layout::from_size_align(size, align).expect("layout");
                    p = a.realloc(p, old, new_size);
                    assert!(aligned(p, align), "realloc to {new_size} align {align}");
                    let kept = size.min(new_size).min(8);
                    assert!(std::slice::from_raw_parts(p, kept)
                        .iter()
                        .all(|&b| b == 0xA5));
                    size = new_size;
                }
                a.dealloc(p, Layout::from_size_align(size, align).expect("layout"));
            }
        }
    }
}
