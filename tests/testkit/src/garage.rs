//! The Garage S3 server that tests/run.sh starts (tests/lib/garage.sh),
//! to stop (SIGKILL, as a crash or power cut) and start again from a test.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Garage {
    bin: String,
    config: String,
    pidfile: String,
    log: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through tests/run.sh, which starts the S3 server (tests/lib/garage.sh)")
    })
}

impl Garage {
    /// From the `KSNAP_TEST_GARAGE_*` variables garage_setup exports.
    pub fn from_env() -> Garage {
        Garage {
            bin: var("KSNAP_TEST_GARAGE_BIN"),
            config: var("KSNAP_TEST_GARAGE_CONFIG"),
            pidfile: var("KSNAP_TEST_GARAGE_PIDFILE"),
            log: var("KSNAP_TEST_GARAGE_LOG"),
        }
    }

    pub fn pid(&self) -> i32 {
        fs::read_to_string(&self.pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&self) {
        let pid = self.pid();
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let start = Instant::now();
        while crate::process::alive(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "garage {pid} does not die"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again (detached, so that it outlives the test)
    /// and waits until it answers.
    pub fn start(&self) {
        let out = Command::new("bash")
            .args([
                "-c",
                "\"$0\" -c \"$1\" server >>\"$2\" 2>&1 </dev/null & echo $!",
                &self.bin,
                &self.config,
                &self.log,
            ])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        fs::write(&self.pidfile, format!("{pid}\n")).unwrap();
        let start = Instant::now();
        while !Command::new(&self.bin)
            .args(["-c", &self.config, "status"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "garage does not come back"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Starts the server again when a test that stopped it fails.
pub struct Restart<'a> {
    pub garage: &'a Garage,
    pub down: bool,
}

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        if self.down {
            self.garage.start();
        }
    }
}
