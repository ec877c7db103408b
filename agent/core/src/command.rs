//! Running an operator's command (`sh -c`): the broker's stop and start
//! commands and the hooks of the agent and the coordinator.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Runs `command` with `sh -c` and `env` added to its environment, killing
/// it after `timeout`. The error says how it ended, with the tail of its
/// stderr (at most 8 KiB are kept: a chatty script must not grow memory).
pub async fn run(command: &str, timeout: Duration, env: &[(&str, String)]) -> Result<(), String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let waited = tokio::time::timeout(timeout, async {
        let mut err = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    err.extend_from_slice(&buf[..n]);
                    if err.len() > 8192 {
                        err.drain(..err.len() - 8192);
                    }
                }
            }
        }
        (child.wait().await, err)
    })
    .await;
    match waited {
        Err(_) => Err(format!("still running after {timeout:?}; killed")),
        Ok((Err(e), _)) => Err(format!("waiting for it: {e}")),
        Ok((Ok(status), err)) if !status.success() => {
            let tail = String::from_utf8_lossy(&err).trim().to_string();
            Err(format!(
                "{status}{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            ))
        }
        Ok(_) => Ok(()),
    }
}
