//! Making a snapshot: [`capture`] while the broker is stopped, then
//! [`Captured::commit`] to build the archive and write the manifest.

use crate::archive::{archive_path, write_archive, ArchiveOptions};
use crate::capture::{clone_into_staging, resolve_mode, Staging, StagingLock};
use crate::logdir::{self, Inventory};
use crate::random::random_hex;
use crate::settings::FreeSpace;
use crate::storage::ColdStore;
use chrono::{DateTime, Utc};
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::layout::{format_snapshot_id, SnapshotRef};
use kafka_snapshot_model::manifest::{
    archive_prefix, ArchiveRecord, CaptureMode, CaptureRecord, EntryRecord, EntryType,
    LogDirRecord, Manifest, Timestamps, Totals, ARCHIVE_FILE, ENCRYPTED_ARCHIVE_FILE,
    FORMAT_VERSION, FORMAT_VERSION_ENCRYPTED, FORMAT_VERSION_ENCRYPTED_INCREMENTAL,
    FORMAT_VERSION_INCREMENTAL,
};
use std::fs;
use std::path::PathBuf;

/// A new snapshot id: now, then random bits (see [`format_snapshot_id`]).
pub fn new_snapshot_id() -> Result<String> {
    Ok(format_snapshot_id(
        Utc::now(),
        &random_hex(4, "a snapshot id")?,
    ))
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[derive(Debug, Clone)]
pub struct CaptureRequest {
    pub log_dirs: Vec<PathBuf>,
    pub mode: CaptureMode,
    /// Archive dirs without `.kafka_cleanshutdown` (crash-consistent only).
    pub allow_unclean: bool,
    /// What reflink staging must leave free (`snapshot.staging_min_free`).
    pub staging_min_free: FreeSpace,
}

/// The frozen state of a stopped broker, ready to be archived.
pub struct Captured {
    pub snapshot_id: String,
    pub inventory: Inventory,
    pub requested: CaptureMode,
    pub used: CaptureMode,
    pub reason: String,
    pub capture_started: DateTime<Utc>,
    pub capture_finished: DateTime<Utc>,
    content_roots: Vec<PathBuf>,
    /// Kafka's `.lock` of every log dir, held while the archive reads the
    /// log dirs themselves (copy capture): the broker cannot start under us.
    broker_locks: Vec<fs::File>,
    staging: Vec<Staging>,
    staging_lock: StagingLock,
}

/// Freezes the log dirs of a stopped broker. Refuses when the broker still
/// holds a `.lock`, when a `*-future` dir exists, and (unless allowed) when
/// the broker did not stop cleanly.
pub fn capture(req: &CaptureRequest) -> Result<Captured> {
    let staging_lock = StagingLock::acquire(&req.log_dirs)?;
    let mut broker_locks = Vec::new();
    for d in &req.log_dirs {
        if let Some(l) = logdir::lock_log_dir(d)? {
            broker_locks.push(l);
        }
    }
    let capture_started = Utc::now();
    let inventory = logdir::scan(&req.log_dirs)?;
    // Tests stop here to change the log dirs behind the inventory's back.
    crate::pausepoint("capture-scanned");
    if !inventory.clean_shutdown() && !req.allow_unclean {
        let unclean: Vec<&logdir::LogDir> = inventory
            .dirs
            .iter()
            .filter(|d| !d.clean_shutdown)
            .collect();
        let reasons: Vec<&str> = unclean
            .iter()
            .filter_map(|d| d.unclean_reason.as_deref())
            .collect();
        return Err(Error::LogDir {
            path: unclean[0].path.clone(),
            message: format!(
                "the node did not stop cleanly ({}); start it, let it recover and stop it again \
                 (or pass --allow-unclean for a crash-consistent snapshot)",
                reasons.join("; ")
            ),
        });
    }
    let (used, reason) = resolve_mode(req.mode, &req.log_dirs, req.staging_min_free)?;
    let snapshot_id = new_snapshot_id()?;
    let (content_roots, staging) = if used == CaptureMode::Reflink {
        let roots: Vec<PathBuf> = req
            .log_dirs
            .iter()
            .enumerate()
            .map(|(i, d)| staging_lock.dir_for(d, &snapshot_id, i))
            .collect::<Result<_>>()?;
        // One guard per `<staging root>/<snapshot id>`: dropping them
        // removes the clones, after commit or on failure alike.
        let mut guards: Vec<Staging> = Vec::new();
        for r in &roots {
            let dir = r.parent().expect("staging dir has a parent").to_path_buf();
            if !guards.iter().any(|g| g.dir == dir) {
                guards.push(Staging { dir });
            }
        }
        clone_into_staging(&inventory, &roots)?;
        (roots, guards)
    } else {
        (req.log_dirs.clone(), Vec::new())
    };
    if used == CaptureMode::Reflink {
        // The clones are ours now: let the broker start.
        broker_locks.clear();
    }
    Ok(Captured {
        snapshot_id,
        inventory,
        requested: req.mode,
        used,
        reason,
        capture_started,
        capture_finished: Utc::now(),
        content_roots,
        broker_locks,
        staging,
        staging_lock,
    })
}

impl Captured {
    /// Removes the clones an earlier incremental snapshot kept for the
    /// next one ([`crate::kept`]): for a node that takes full snapshots
    /// now, they would pin the blocks of segments the broker deletes.
    /// (A full `archive create` run by hand leaves them to the daemon.)
    pub fn drop_kept_clones(&self) {
        for root in self.staging_lock.roots() {
            if let Err(e) = crate::kept::remove_all(root) {
                tracing::warn!(error = %e, "cannot remove the clones kept by an earlier snapshot");
            }
        }
    }
}

/// When the broker went down and came back, if the agent drove it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerTimes {
    pub stopped: Option<DateTime<Utc>>,
    pub restarted: Option<DateTime<Utc>>,
}

impl Captured {
    /// Archives and commits the snapshot: archive first (durable, under its
    /// final name only when complete), then a check of what landed, then the
    /// manifest. Staging is removed afterwards, whatever the outcome.
    pub fn commit(
        mut self,
        store: &dyn ColdStore,
        opts: &ArchiveOptions,
        times: BrokerTimes,
    ) -> Result<Manifest> {
        let snap = SnapshotRef {
            cluster_id: self.inventory.cluster_id().to_string(),
            broker: self.inventory.node_id(),
            snapshot_id: self.snapshot_id.clone(),
        };
        let (format_version, archive_file) = match (&opts.encrypt_to, &opts.objects) {
            (None, None) => (FORMAT_VERSION, ARCHIVE_FILE),
            (None, Some(_)) => (FORMAT_VERSION_INCREMENTAL, ARCHIVE_FILE),
            (Some(_), None) => (FORMAT_VERSION_ENCRYPTED, ENCRYPTED_ARCHIVE_FILE),
            (Some(_), Some(_)) => (FORMAT_VERSION_ENCRYPTED_INCREMENTAL, ENCRYPTED_ARCHIVE_FILE),
        };
        let archive_key = snap.object_key(archive_file);
        tracing::info!(snapshot = %snap.snapshot_id, broker = snap.broker, key = %archive_key,
            files = self.inventory.entries.len(), bytes = self.inventory.total_bytes(),
            encrypted_to = ?opts.encrypt_to.as_ref().map(|r| r.fingerprints()), "archiving");
        crate::catalog::remove_incomplete(store, &snap.cluster_id, snap.broker, &snap.snapshot_id)?;
        if self.used != CaptureMode::Reflink
            && opts
                .objects
                .as_ref()
                .is_some_and(|o| o.hash_cache.is_some())
        {
            // This snapshot's hash record will name no kept clones.
            self.drop_kept_clones();
        }
        // Even incompressible data grows by no more than tar headers and
        // zstd framing: lets the store size its upload parts.
        let data = self.inventory.total_bytes();
        let hint = data + data / 100 + 1024 * self.inventory.entries.len() as u64 + (1 << 20);
        let seal = match (&opts.encrypt_to, &opts.objects) {
            (Some(recipients), Some(o)) => match &o.object_key {
                Some(key) => Some(crate::objects::Seal { recipients, key }),
                None => {
                    return Err(Error::Usage(
                        "an encrypted incremental snapshot needs the cluster's object key \
                         (encryption.object_key_file, --object-key-file), or take a full one \
                         (snapshot.mode = \"full\", --mode full)"
                            .into(),
                    ))
                }
            },
            _ => None,
        };
        // An incremental snapshot's archive comes first: from the moment it
        // is stored, the snapshot is "incomplete" in storage, and retention
        // leaves every content object alone while one is (see
        // `objects::store_objects`, which then decides which objects exist).
        let archived = opts
            .objects
            .as_ref()
            .map(|o| crate::objects::archived(&self.inventory, o));
        let writer = store.create_sized(&archive_key, hint)?;
        let (writer, mut written) = write_archive(
            archived.as_ref().unwrap_or(&self.inventory),
            &self.content_roots,
            opts,
            writer,
        )?;
        crate::failpoint("before-archive-finish");
        let stored = writer.finish()?;
        let landed = store.stat(&archive_key)?;
        if stored != written.size || landed != Some(written.size) {
            return Err(store.error(
                &archive_key,
                format!(
                    "archive landed as {landed:?} bytes (store reported {stored}), but {} were written",
                    written.size
                ),
            ));
        }
        let objects = match &opts.objects {
            None => None,
            Some(o) => {
                let content = crate::objects::Content {
                    roots: &self.content_roots,
                    staged: self.used == CaptureMode::Reflink,
                };
                let stored = crate::objects::store_objects(
                    store,
                    &snap.cluster_id,
                    &self.inventory,
                    &content,
                    o,
                    &crate::objects::Writing {
                        seal,
                        compress: (opts.zstd_level, opts.zstd_threads),
                        cancel: opts.cancel.as_deref(),
                    },
                )?;
                let r = &stored.record;
                tracing::info!(snapshot = %snap.snapshot_id, broker = snap.broker, files = r.files,
                    bytes = r.bytes, objects = r.objects, uploaded = r.uploaded,
                    uploaded_bytes = r.uploaded_bytes, stored_bytes = r.uploaded_stored_bytes,
                    hashed = r.hashed, hashed_bytes = r.hashed_bytes, resumed = r.resumed,
                    "content objects stored");
                written.entries = merge_entries(&self.inventory, written.entries, &stored)?;
                Some(stored)
            }
        };
        // The log dirs are no longer read: the broker may start.
        self.broker_locks.clear();
        let archive_finished = Utc::now();
        // Sizes of files on one host cannot add up past u64; the check is
        // for manifests read back.
        let totals = Totals::of(&written.entries)
            .map_err(|m| Error::Internal(format!("snapshot {}: {m}", self.snapshot_id)))?;
        let downtime = match (times.stopped, times.restarted) {
            (Some(a), Some(b)) => Some((b - a).num_milliseconds().max(0) as u64),
            _ => None,
        };
        let encryption = opts
            .encrypt_to
            .as_ref()
            .map(|r| crate::crypt::seal_entries(r, &self.snapshot_id, &written.entries))
            .transpose()?;
        let mut manifest = Manifest {
            format_version,
            snapshot_id: self.snapshot_id.clone(),
            cluster_id: snap.cluster_id.clone(),
            node_id: snap.broker,
            host: hostname(),
            agent_version: crate::AGENT_VERSION.to_string(),
            capture: CaptureRecord {
                requested: self.requested,
                used: self.used,
                reason: self.reason.clone(),
            },
            clean_shutdown: self.inventory.clean_shutdown(),
            log_dirs: self
                .inventory
                .dirs
                .iter()
                .enumerate()
                .map(|(i, d)| LogDirRecord {
                    archive_prefix: archive_prefix(i),
                    path: d.path.display().to_string(),
                    meta_version: d.meta.version,
                    directory_id: d.meta.directory_id.clone(),
                    is_metadata_dir: d.is_metadata_dir,
                    clean_shutdown: d.clean_shutdown,
                })
                .collect(),
            timestamps: Timestamps {
                broker_stopped: times.stopped,
                capture_started: self.capture_started,
                capture_finished: self.capture_finished,
                broker_restarted: times.restarted,
                archive_finished,
                committed: Utc::now(),
            },
            broker_downtime_ms: downtime,
            archive: ArchiveRecord {
                file: archive_file.to_string(),
                size: written.size,
                sha256: written.sha256,
                compression: "zstd".into(),
                zstd_level: opts.zstd_level,
            },
            totals,
            encryption,
            objects: objects.as_ref().map(|o| o.record.clone()),
            entries: written.entries,
            manifest_sha256: String::new(),
        };
        // Encrypted, the entries are stored only sealed; the manifest this
        // returns has them back, as one read and unsealed would.
        let entries = if manifest.is_encrypted() {
            std::mem::take(&mut manifest.entries)
        } else {
            Vec::new()
        };
        let bytes = manifest.to_bytes();
        if manifest.is_encrypted() {
            manifest.entries = entries;
        }
        // A manifest no reader would take is no snapshot: say so now, not
        // on the day of the restore.
        let max = kafka_snapshot_model::manifest::MAX_MANIFEST_BYTES;
        if bytes.len() as u64 > max {
            return Err(Error::Refused {
                what: format!("snapshot {}", snap.snapshot_id),
                message: format!(
                    "its manifest would take {} bytes, more than the {max} a manifest may; {}",
                    bytes.len(),
                    if objects.is_some() {
                        "raise snapshot.object_chunk_size (each chunk costs about 75 bytes of manifest)"
                    } else {
                        "the node holds more files than one snapshot can list"
                    }
                ),
            });
        }
        if let Some(o) = &objects {
            crate::objects::check_present(
                store,
                &snap.cluster_id,
                &snap.snapshot_id,
                o.referenced(),
            )?;
        }
        crate::failpoint("before-manifest");
        store.put(&snap.manifest_key(), &bytes)?;
        tracing::info!(snapshot = %snap.snapshot_id, broker = snap.broker, archive_bytes = manifest.archive.size,
            sha256 = %manifest.archive.sha256, "snapshot committed");
        self.staging.clear();
        Ok(manifest)
    }
}

/// Every entry of `inv` in inventory order: the ones the archive holds as
/// it wrote them (`archived`, in the same order), the others as the
/// content objects of their chunks (`hashes`).
fn merge_entries(
    inv: &Inventory,
    archived: Vec<EntryRecord>,
    stored: &crate::objects::Stored,
) -> Result<Vec<EntryRecord>> {
    let mut archived = archived.into_iter();
    let mut out = Vec::with_capacity(inv.entries.len());
    for (e, h) in inv.entries.iter().zip(&stored.hashes) {
        let rec = match h {
            Some(h) => EntryRecord {
                path: archive_path(e),
                kind: EntryType::File,
                size: e.size,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime_ns: e.mtime_ns,
                sha256: Some(h.sha256.clone()),
                link_target: None,
                chunks: Some(h.chunks.clone()),
                cuts: h.cuts.clone(),
                objects: stored.names_of(h),
            },
            None => archived.next().ok_or_else(|| {
                Error::Internal("the archive wrote fewer entries than it was given".into())
            })?,
        };
        out.push(rec);
    }
    if archived.next().is_some() {
        return Err(Error::Internal(
            "the archive wrote more entries than it was given".into(),
        ));
    }
    Ok(out)
}
