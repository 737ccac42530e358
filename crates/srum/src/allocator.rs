//! Process-wide allocator settings for training on the CPU.
//!
//! burn's CPU backends allocate a fresh buffer for every tensor an operation returns. With
//! glibc's default settings, every freed block above the mmap threshold (128 KiB to 32 MiB,
//! raised as large blocks are freed) is handed back to the kernel, and the next step's tensor of
//! the same size faults in fresh zeroed pages: a page fault and a page clear per 4 KiB. At
//! BAGEL's width, with activations of 80 MB and more, that kernel work took about a third of a
//! decoder layer's forward and backward (docs/PERFORMANCE.md).

/// Keeps freed memory in the process for reuse: every allocation comes from the heap (none is
/// mapped on its own), and the heap is never trimmed. Call it once, first thing in `main`,
/// before other threads exist. The cost is that the process's resident memory stays at its
/// peak. Returns whether the settings were applied: they exist on Linux with glibc only, and
/// elsewhere this does nothing.
///
/// The same settings without code: `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:`
/// `glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.top_pad=67108864`.
pub fn keep_freed_buffers() -> bool {
    imp::keep_freed_buffers()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub(super) fn keep_freed_buffers() -> bool {
        // SAFETY: `mallopt` only changes glibc's allocator parameters; its documented values
        // are used (a trim threshold of -1 disables trimming).
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1
                && libc::mallopt(libc::M_TOP_PAD, 64 << 20) == 1
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub(super) fn keep_freed_buffers() -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn applies_on_glibc() {
        assert!(super::keep_freed_buffers());
    }
}
