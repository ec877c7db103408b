//! What operators order: a cycle now, and restores.

use super::{ApiError, ApiResult, Engine};
use crate::state::EventLevel;
use crate::store::{cycles, restores, snapshots, Now};
use kafka_snapshot_model::api::RestoreView;

impl Engine {
    fn configured(&self, broker: i32) -> ApiResult<()> {
        if self.cfg.brokers().contains(&broker) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "broker {broker} is not configured (agents: {:?})",
                self.cfg.brokers()
            )))
        }
    }

    /// Starts a cycle now, of every broker or one.
    pub fn run_now(&mut self, broker: Option<i32>, now: Now) -> ApiResult<i64> {
        let brokers = match broker {
            Some(b) => {
                self.configured(b)?;
                vec![b]
            }
            None => self.cfg.brokers(),
        };
        let cx = self.begin(now)?;
        if let Some((id, _)) = cycles::open(&cx.tx)? {
            return Err(ApiError::Conflict(format!("cycle {id} is still running")));
        }
        let id = cx.start_cycle("manual", &brokers)?;
        cx.commit()?;
        Ok(id)
    }

    /// Orders a restore of `broker` from `snapshot` (its newest usable one
    /// by default). It waits for the lease and goes before the next cycle
    /// broker.
    pub fn create_restore(
        &mut self,
        broker: i32,
        snapshot: Option<&str>,
        force: bool,
        now: Now,
    ) -> ApiResult<RestoreView> {
        self.configured(broker)?;
        let cx = self.begin(now)?;
        if let Some(id) = restores::open_of(&cx.tx, broker)? {
            return Err(ApiError::Conflict(format!(
                "restore order {id} of broker {broker} is still open"
            )));
        }
        let found = match snapshot {
            Some(id) => snapshots::find(&cx.tx, id)?,
            None => snapshots::newest_usable(&cx.tx, broker)?,
        };
        let Some((snapshot_id, cluster_id, of, verified)) = found else {
            return Err(ApiError::NotFound(match snapshot {
                Some(id) => format!("snapshot {id} is not in the catalog (try `catalog rebuild`)"),
                None => format!("broker {broker} has no usable snapshot in the catalog"),
            }));
        };
        if of != broker && !force {
            return Err(ApiError::Conflict(format!(
                "snapshot {snapshot_id} is of broker {of}, not {broker} (use --force to restore \
                 it anyway)"
            )));
        }
        if verified == Some(false) && !force {
            return Err(ApiError::Conflict(format!(
                "snapshot {snapshot_id} failed verification (use --force to restore it anyway)"
            )));
        }
        let id = restores::insert(&cx.tx, broker, &cluster_id, &snapshot_id, force, now)?;
        cx.event(
            EventLevel::Info,
            Some(broker),
            None,
            "restore_ordered",
            &format!(
                "restore order {id}: broker {broker} from snapshot {snapshot_id}{}",
                if force { " (forced)" } else { "" }
            ),
        )?;
        cx.commit()?;
        self.restore(id)
    }

    pub fn restore(&self, id: i64) -> ApiResult<RestoreView> {
        restores::view(&self.conn, id)?
            .ok_or_else(|| ApiError::NotFound(format!("restore order {id} does not exist")))
    }
}
