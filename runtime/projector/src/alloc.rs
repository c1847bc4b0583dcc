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
/// mimalloc's `mi_option_allow_thp` (the same enum).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Keep freed memory for [`PURGE_DELAY_MS`], unless the environment sets
/// `MIMALLOC_PURGE_DELAY` (an operator's choice wins). Call first in `main`.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        set_purge_delay(PURGE_DELAY_MS);
    }
}

/// How long freed memory is kept under a memory budget
/// (`[engine] memory_mb`): none, so the process's resident memory follows
/// what it holds (a replay under 128 MiB peaked 38 MB lower than keeping
/// it 100 ms, at the same speed).
pub const BUDGET_PURGE_DELAY_MS: i64 = 0;

/// Under a memory budget: keep freed memory only
/// [`BUDGET_PURGE_DELAY_MS`] (unless the environment sets
/// `MIMALLOC_PURGE_DELAY`), and take no transparent huge pages (unless
/// it sets `MIMALLOC_ALLOW_THP`). Call before the store opens.
///
/// mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), and a
/// kernel in THP's `madvise` mode (Debian's default) then backs a touched
/// 4 KiB with 2 MiB: resident memory grows by what the pages hold, not by
/// what the process does. A replay of 4M inbox events under a 256 MiB
/// budget peaked at 316–332 MiB with them and 262–271 MiB without. They
/// are kept without a budget: the inbox benchmark (Wasm, alternating)
/// ran 110 203 and 99 218 events/s with them against 92 109 and 94 684
/// without (ten times fewer page faults).
pub fn tune_for_budget() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        set_purge_delay(BUDGET_PURGE_DELAY_MS);
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        disable_huge_pages();
    }
}

/// No transparent huge pages for this process from now on, whatever
/// mimalloc or the kernel's `madvise` mode would give it.
#[allow(unsafe_code)]
fn disable_huge_pages() {
    // SAFETY: mi_option_set stores the value of a known option (mimalloc
    // then asks no huge pages for the arenas it maps from now on).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets a flag of the
    // process's memory map (a kernel without it returns an error, and the
    // process keeps its pages as they are).
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(
            "alloc: transparent huge pages stay on: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether this process takes transparent huge pages.
#[cfg(test)]
#[allow(unsafe_code)]
fn huge_pages_disabled() -> bool {
    // SAFETY: PR_GET_THP_DISABLE takes no pointers and returns the flag.
    unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
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
    fn freed_memory_is_kept_a_while_and_under_a_budget_neither_it_nor_huge_pages() {
        // One test: the options are the process's. An option the
        // environment sets is the operator's, and not checked.
        let purge_chosen = std::env::var_os("MIMALLOC_PURGE_DELAY").is_some();
        let thp_chosen = std::env::var_os("MIMALLOC_ALLOW_THP").is_some();
        // SAFETY: mi_option_get reads an option's value.
        #[allow(unsafe_code)]
        let thp = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_ALLOW_THP) };
        let check = |purge_delay: i64, huge_pages: bool| {
            if !purge_chosen {
                assert_eq!(super::purge_delay(), purge_delay);
            }
            if !thp_chosen {
                assert_eq!(thp() == 1, huge_pages);
                // (A process may start with them off: the flag is inherited.)
                if !huge_pages {
                    assert!(super::huge_pages_disabled());
                }
            }
        };
        // mimalloc v3's defaults (its `options.c`): a purge delay of
        // 1000 ms and huge pages allowed; no neighbour option has them.
        check(1000, true);
        super::tune();
        check(super::PURGE_DELAY_MS, true);
        super::tune_for_budget();
        check(super::BUDGET_PURGE_DELAY_MS, false);
    }
}
