//! Clocks as records read them: the kernel's boot-time stamps as wall
//! time, Unix-epoch milliseconds, RFC 3339.

use std::time::{Duration, SystemTime};

/// Converts CLOCK_BOOTTIME nanoseconds (what the kernel stamps) to wall time.
pub fn boot_ns_to_wall(boot_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a valid out pointer.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } == 0;
    let now = SystemTime::now();
    if !ok {
        return now;
    }
    let boot_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    now - Duration::from_nanos(boot_now.saturating_sub(boot_ns))
}

/// Wall-clock milliseconds since the Unix epoch (0 for a clock before it).
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `ago` before now, in Unix-epoch milliseconds: the `--since` of the CLI.
pub fn ms_ago(ago: Duration) -> i64 {
    unix_ms(
        SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The wall time as records write it: RFC 3339, microseconds, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}
