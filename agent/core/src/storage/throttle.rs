//! The `[storage] bandwidth_limit`: one budget of bytes per second for
//! everything a store transfers, uploads and downloads alike, shared by
//! every object open on it at the same time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far ahead of the budget a caller may run before it is made to wait.
/// Small enough that the rate holds over any second, large enough that
/// callers do not sleep for every 64 KiB.
const BURST: Duration = Duration::from_millis(100);

/// A token bucket kept as the time at which the budget is next free.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    next_free: Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Throttle {
        assert!(bytes_per_sec > 0, "a bandwidth limit is positive");
        Throttle {
            bytes_per_sec,
            next_free: Mutex::new(Instant::now()),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Accounts for `n` bytes, sleeping as long as the budget requires.
    pub fn consume(&self, n: usize) {
        let wait = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Time left unused is not saved up for later.
            if *next < now {
                *next = now;
            }
            *next += Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            next.saturating_duration_since(now + BURST)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Wraps a reader or writer so that every byte passing through is paid for.
pub struct Throttled<T> {
    pub inner: T,
    pub throttle: std::sync::Arc<Throttle>,
}

impl<R: std::io::Read> std::io::Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.throttle.consume(n);
        Ok(n)
    }
}

impl<W: std::io::Write> std::io::Write for Throttled<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.throttle.consume(n);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_rate_across_threads() {
        let t = std::sync::Arc::new(Throttle::new(10 << 20));
        let start = Instant::now();
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        t.consume(64 << 10);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // 5 MiB at 10 MiB/s: 0.5 s, less the one burst allowed up front.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(380) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
