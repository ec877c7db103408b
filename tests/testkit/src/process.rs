//! Small process helpers the cluster harnesses share: free ports, running
//! a start/stop script, and whether a pid still runs.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

/// Ports that are free now, for servers that must keep their port across
/// restarts (a broker's listener).
///
/// They are taken outside the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port from `bind(:0)` is in that
/// range, and while its server is stopped any outgoing connection of the
/// machine may be given it as its local port, so the server's restart fails
/// with "Address already in use" (a Kafka broker then exits at startup:
/// "Unable to start acceptor"). Outside the range only a listener can take
/// it. Each process starts at its own offset and never hands out a port
/// twice, so tests running side by side do not pick the same ones.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);

    let candidates = non_ephemeral_ports();
    ensure!(
        candidates.len() >= n,
        "fewer than {n} ports outside the ephemeral range"
    );
    if NEXT.load(Ordering::Relaxed) == usize::MAX {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as usize)
            .unwrap_or(0);
        let start = (std::process::id() as usize).wrapping_mul(7919) ^ nanos;
        let _ = NEXT.compare_exchange(
            usize::MAX,
            start % candidates.len(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
    // Hold every chosen port bound until all are chosen.
    let mut held = Vec::with_capacity(n);
    for _ in 0..candidates.len() {
        if held.len() == n {
            break;
        }
        let i = NEXT.fetch_add(1, Ordering::Relaxed) % candidates.len();
        let port = candidates[i];
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, listener));
        }
    }
    ensure!(held.len() == n, "could not find {n} free ports");
    Ok(held.into_iter().map(|(port, _)| port).collect())
}

/// Unprivileged ports the kernel never gives an outgoing connection.
fn non_ephemeral_ports() -> Vec<u16> {
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    (10_000..=u16::MAX)
        .filter(|p| *p < low || *p > high)
        .collect()
}

/// Runs a script; fails with its output if it exits non-zero.
pub fn run_script(script: &Path) -> Result<()> {
    let out = Command::new(script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Whether `pid` runs: it exists and is no zombie (a process that is no
/// child of ours may wait a while for whoever reaps it).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().unwrap_or("").trim_start();
    !state.starts_with('Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_never_ephemeral() {
        let candidates = non_ephemeral_ports();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            for port in free_ports(6).unwrap() {
                assert!(
                    candidates.contains(&port),
                    "{port} is in the ephemeral range"
                );
                assert!(seen.insert(port), "{port} handed out twice");
            }
        }
    }
}
