//! Holding a lease: heartbeats at `ttl / 3` carrying the current phase and
//! progress, and one signal for the work under the lease to give up when
//! the lease is lost (409), the coordinator asks to abort, or the agent is
//! shutting down.

use super::client::{backoff, CoordinatorClient};
use kafka_snapshot_model::protocol::{ClusterGo, ClusterStep, Heartbeat, Lease, Phase};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Phase and progress line, as sent with every heartbeat.
pub type Progress = (Phase, Option<String>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loss {
    /// The coordinator answered 409: another epoch is current.
    Stale(String),
    /// The coordinator asked the agent to give up (an operator cancelled).
    Aborted,
    /// No heartbeat was answered for two thirds of the TTL: by now the
    /// coordinator may have expired the lease (and, once the cluster is
    /// back in sync, lease another broker), so the agent must stop acting
    /// under it before that can happen.
    Expired(String),
}

/// Share of the TTL after the last answered heartbeat was sent (or the
/// lease arrived) within which the agent still acts under the lease. The
/// coordinator renews the lease for a whole TTL from when it receives a
/// heartbeat, so the agent's deadline always comes first.
fn valid_for(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

pub struct LeaseSession {
    pub epoch: u64,
    progress: watch::Sender<Progress>,
    /// Under a whole-cluster restore lease: how far this node got (sent
    /// with every heartbeat), and how far the coordinator lets it go.
    step: watch::Sender<Option<ClusterStep>>,
    go: watch::Receiver<Option<ClusterGo>>,
    interrupt: watch::Receiver<bool>,
    loss: Arc<Mutex<Option<Loss>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Shortest pause between heartbeats, whatever the TTL.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Longest pause between heartbeats of a node of a whole-cluster restore.
const CLUSTER_STEP_INTERVAL: Duration = Duration::from_secs(1);

impl LeaseSession {
    pub fn start(
        coord: Arc<CoordinatorClient>,
        lease: &Lease,
        initial: Phase,
        mut shutdown: watch::Receiver<bool>,
    ) -> LeaseSession {
        let (progress, progress_rx) = watch::channel((initial, None));
        let (step, mut step_rx) = watch::channel(None);
        let (go_tx, go) = watch::channel(None);
        let (interrupt_tx, interrupt) = watch::channel(*shutdown.borrow());
        let interrupt_tx = Arc::new(interrupt_tx);
        let loss = Arc::new(Mutex::new(None));
        let forward = {
            let tx = interrupt_tx.clone();
            tokio::spawn(async move {
                while !*shutdown.borrow() {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
                let _ = tx.send(true);
            })
        };
        let beat = {
            let tx = interrupt_tx;
            let loss = loss.clone();
            let epoch = lease.epoch;
            let mut ttl = Duration::from_millis(lease.ttl_ms);
            let mut valid_until = tokio::time::Instant::now() + valid_for(ttl);
            tokio::spawn(async move {
                let mut failures = 0u32;
                loop {
                    let mut every = (ttl / 3).max(MIN_INTERVAL);
                    // A node of a whole-cluster restore waits for the
                    // others at each step: hear of them within a second.
                    if step_rx.borrow().is_some() {
                        every = every.min(CLUSTER_STEP_INTERVAL);
                    }
                    let pause = if failures == 0 {
                        every
                    } else {
                        backoff(failures).min(every)
                    };
                    let expired = || {
                        let phase = progress_rx.borrow().0;
                        let why = format!(
                            "no heartbeat answered for {:?} of the {ttl:?} lease TTL",
                            valid_for(ttl)
                        );
                        tracing::error!(epoch, %phase, "lease expired on this side: {why}; giving up the work under it");
                        *loss.lock().expect("lease loss lock") = Some(Loss::Expired(why));
                        let _ = tx.send(true);
                    };
                    let wake = (tokio::time::Instant::now() + pause).min(valid_until);
                    // A new step is told at once.
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = step_rx.changed() => {}
                    }
                    if tokio::time::Instant::now() >= valid_until {
                        return expired();
                    }
                    let (phase, progress) = progress_rx.borrow().clone();
                    let hb = Heartbeat {
                        broker: coord.broker,
                        epoch,
                        phase,
                        progress,
                        cluster_step: *step_rx.borrow(),
                    };
                    let sent = tokio::time::Instant::now();
                    let answer = tokio::select! {
                        r = coord.heartbeat(&hb) => r,
                        _ = tokio::time::sleep_until(valid_until) => return expired(),
                    };
                    match answer {
                        Ok(r) => {
                            failures = 0;
                            ttl = Duration::from_millis(r.ttl_ms);
                            valid_until = sent + valid_for(ttl);
                            go_tx.send_replace(r.go);
                            if r.abort {
                                tracing::warn!(epoch, %phase, "the coordinator asks to abort this lease");
                                *loss.lock().expect("lease loss lock") = Some(Loss::Aborted);
                                let _ = tx.send(true);
                                return;
                            }
                        }
                        Err(e) if e.is_stale() => {
                            tracing::error!(epoch, %phase, error = %e, "lease lost: giving up the work under it");
                            *loss.lock().expect("lease loss lock") =
                                Some(Loss::Stale(e.to_string()));
                            let _ = tx.send(true);
                            return;
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(epoch, failures, error = %e, "heartbeat failed");
                        }
                    }
                }
            })
        };
        LeaseSession {
            epoch: lease.epoch,
            progress,
            step,
            go,
            interrupt,
            loss,
            tasks: vec![forward, beat],
        }
    }

    /// True once the work must give up (lease lost, aborted, shutdown).
    pub fn interrupt(&self) -> watch::Receiver<bool> {
        self.interrupt.clone()
    }

    pub fn progress(&self) -> watch::Sender<Progress> {
        self.progress.clone()
    }

    /// Reports how far this node of a whole-cluster restore got (with the
    /// next heartbeat).
    pub fn set_step(&self, step: ClusterStep) {
        self.step.send_replace(Some(step));
    }

    /// How far the coordinator lets this node of a whole-cluster restore
    /// go, as of the last heartbeat answer.
    pub fn go(&self) -> watch::Receiver<Option<ClusterGo>> {
        self.go.clone()
    }

    pub fn loss(&self) -> Option<Loss> {
        self.loss.lock().expect("lease loss lock").clone()
    }

    /// Stops the heartbeats (before the lease is released).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for LeaseSession {
    fn drop(&mut self) {
        self.stop();
    }
}
