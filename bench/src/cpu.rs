//! CPU time: the generator's own (getrusage), and another process's (/proc/<pid>/stat), so results can say
//! whether the generator or the proxy was the bottleneck.

use std::time::Duration;

/// User + system CPU this process has used so far, all threads.
pub fn own() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// utime + stime of `pid`, from /proc; `None` once it is gone.
pub fn of_pid(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Fields 14 and 15 of a /proc/<pid>/stat line, counted after the parenthesised command name (which may hold
/// spaces).
fn parse_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")" the fields start at field 3 (state), so utime (14) is index 11.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let line =
            "1234 (my proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 0 0";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            parse_stat(line),
            Some(Duration::from_millis(300 * 1000 / hz))
        );
        assert!(of_pid(std::process::id()).is_some());
    }
}
