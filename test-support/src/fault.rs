//! What the fault tests share: a seeded random source (so a failing run can be replayed with
//! `QLEET_FAULT_SEED`), the number of runs (`QLEET_FAULT_RUNS`), process checks and the
//! figures they print for BENCHMARKS.md.

use std::time::Duration;

/// A small deterministic generator (xorshift), so a failing seed can be replayed.
pub struct Seeded(u64);

impl Seeded {
    /// Seeded from `QLEET_FAULT_SEED`, else from the clock; prints the seed either way.
    pub fn from_env() -> Seeded {
        let seed = std::env::var("QLEET_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            });
        println!("QLEET_FAULT_SEED={seed}");
        Seeded(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A duration in `[0, max)` milliseconds.
    pub fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.next_u64() % max.max(1))
    }
}

/// Fault runs per test: `default`, or what `QLEET_FAULT_RUNS` asks for (the benchmark figures
/// use more).
pub fn runs(default: usize) -> usize {
    std::env::var("QLEET_FAULT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Whether process `pid` is alive; a zombie (exited, not yet reaped) is gone for our purposes.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Sends `signal` (`-KILL`, `-TERM`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// "median …, p95 …, max …" of `v` (not empty).
pub fn median_p95_max(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:?}, p95 {:?}, max {:?} (n = {})",
        at(0.5),
        at(0.95),
        v[v.len() - 1],
        v.len()
    )
}
