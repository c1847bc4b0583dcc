//! The allocator, tuned for a long-running server.
//!
//! projector runs on mimalloc (`#[global_allocator]` in the binary and
//! the benchmarks). By default mimalloc (v3) hands freed memory back to
//! the kernel after 1 s; a pipeline frees and asks again for the same
//! memory batch after batch, and every page it gets back is a fresh,
//! zeroed one (a page fault). [`tune`] keeps freed memory for
//! [`PURGE_DELAY_MS`] instead: steady state reuses it, and what stays
//! unused that long (after a burst) still goes back.
//!
//! Measured on the inbox benchmark (500k events, Wasm, one worker), in
//! two alternating pairs: memory never returned (`MIMALLOC_PURGE_DELAY=-1`)
//! took the processing phase from 23 000–27 000 page faults to about
//! 1 050 and ran about 14 % faster than the default; with the 10 s kept
//! here, later runs took 150–23 000.

/// How long freed memory is kept before it is returned to the kernel.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`, options enum).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory for [`PURGE_DELAY_MS`], unless the environment sets
/// `MIMALLOC_PURGE_DELAY` (an operator's choice wins). Call first in `main`.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    set_purge_delay(PURGE_DELAY_MS);
}

/// How long freed memory is kept under a memory budget
/// (`[engine] memory_mb`): none, so the process's resident memory follows
/// what it holds (a replay under 128 MiB peaked 38 MB lower than keeping
/// it 100 ms, at the same speed).
pub const BUDGET_PURGE_DELAY_MS: i64 = 0;

/// Under a memory budget: keep freed memory only
/// [`BUDGET_PURGE_DELAY_MS`], unless the environment sets
/// `MIMALLOC_PURGE_DELAY`.
pub fn tune_for_budget() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    set_purge_delay(BUDGET_PURGE_DELAY_MS);
}

#[allow(unsafe_code)]
fn set_purge_delay(ms: i64) {
    // SAFETY: mi_option_set only stores the value of a known option; the
    // allocator reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms as _) }
}

/// The purge delay mimalloc uses now.
#[cfg(test)]
#[allow(unsafe_code)]
fn purge_delay() -> i64 {
    // SAFETY: mi_option_get reads an option's value.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_set_is_the_purge_delay() {
        // The default of `mi_option_purge_delay` in mimalloc v3 is 1000 ms
        // (its `options.c`); no neighbour option has that default.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(super::purge_delay(), 1000);
        }
        super::tune();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(super::purge_delay(), super::PURGE_DELAY_MS);
        }
    }
}
