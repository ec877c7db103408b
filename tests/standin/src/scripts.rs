//! The start and stop scripts of each broker: what an agent under test is
//! configured to run, in place of `kafka-server-start.sh -daemon` and
//! `kafka-server-stop.sh` (or `systemctl start/stop kafka`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::definition::StatePaths;
use crate::fsutil;

/// How long a start script waits for the broker to listen.
const START_TIMEOUT_SECS: u32 = 30;

/// Writes `bin/start-broker-N.sh` and `bin/stop-broker-N.sh`.
pub fn write_scripts(paths: &StatePaths, node_id: i32, binary: &Path) -> Result<()> {
    let state = quote(&paths.root.to_string_lossy());
    let pid_file = quote(&paths.pid_file(node_id).to_string_lossy());
    let log = quote(&paths.log_file(node_id).to_string_lossy());
    let bin = quote(&binary.to_string_lossy());
    let tries = START_TIMEOUT_SECS * 20;
    let start = format!(
        r#"#!/bin/sh
# Starts stand-in Kafka broker {node_id} in the background, like
# `kafka-server-start.sh -daemon`. Returns 0 once the broker has locked its
# log dirs and listens; if the broker exits during start-up, returns its
# exit status (non-zero).
set -u
pidfile={pid_file}
{bin} --state-dir {state} --node-id {node_id} >>{log} 2>&1 </dev/null &
pid=$!
i=0
while [ "$i" -lt {tries} ]; do
    if [ "$(cat "$pidfile" 2>/dev/null)" = "$pid" ]; then
        exit 0
    fi
    case "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)" in
        '' | Z | X)
            wait "$pid"
            rc=$?
            [ "$rc" -eq 0 ] && rc=1
            echo "stand-in broker {node_id} exited with status $rc during start-up; see "{log} >&2
            exit "$rc"
            ;;
    esac
    sleep 0.05
    i=$((i + 1))
done
echo "stand-in broker {node_id} (pid $pid) did not listen within {START_TIMEOUT_SECS} s; see "{log} >&2
exit 1
"#
    );
    let stop = format!(
        r#"#!/bin/sh
# Sends SIGTERM to stand-in Kafka broker {node_id} and returns at once, like
# `kafka-server-stop.sh`: the broker shuts down in the background.
pid=$(cat {pid_file} 2>/dev/null)
if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    echo "No kafka server to stop"
    exit 1
fi
kill -TERM "$pid"
"#
    );
    write_executable(&paths.start_script(node_id), &start)?;
    write_executable(&paths.stop_script(node_id), &stop)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fsutil::write_atomic(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Single-quotes a string for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("/a b/c"), "'/a b/c'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
