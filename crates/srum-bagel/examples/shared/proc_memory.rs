//! This process's resident memory from `/proc/self/status` (Linux); 0 where there is none.
//! Shared by the examples through `#[path]`.

fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Peak resident memory (`VmHWM`), bytes.
#[allow(dead_code)]
pub fn peak_rss() -> u64 {
    status_bytes("VmHWM:")
}

/// Resident memory now (`VmRSS`), bytes.
#[allow(dead_code)]
pub fn rss() -> u64 {
    status_bytes("VmRSS:")
}

/// Bytes in MiB.
#[allow(dead_code)]
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}
