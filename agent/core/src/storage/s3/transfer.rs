//! Streaming an object to and from S3 with bounded memory.
//!
//! [`Upload`] cuts what is written into parts of `part_size` and keeps at
//! most `parts_in_flight` of them uploading while it fills the next, so it
//! holds at most `(parts_in_flight + 1) * part_size` bytes. An object
//! smaller than one part is sent with a single PUT. Every request has
//! `request_timeout` and is retried with backoff (`retries`); the whole
//! upload has `deadline`. On any failure, and when dropped unfinished, the
//! multipart upload is aborted; if even that fails (the server is gone),
//! the next run of the same broker aborts it (`catalog::remove_incomplete`).
//!
//! Before `finish` returns, the upload is confirmed: the object's size, and
//! its SHA-256 checksum as the server computed it from every part (each
//! part's own SHA-256 was checked by the server on arrival), against the
//! checksum of the bytes that were written. A server that keeps no
//! checksums, or `verify_upload = "read-back"`, gets the object read back
//! and hashed part by part instead. Either way a missing, short or
//! reordered part fails the upload, and the manifest is never written.
//!
//! [`Download`] reads an object with ranged GETs, a few ranges ahead.

use super::{abort_multipart, block_until, store_err, Failure, Rt, Shared};
use crate::storage::VerifyUpload;
use base64::Engine;
use bytes::Bytes;
use kafka_snapshot_model::error::{Error, Result};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// S3 allows 10,000 parts; sizes are planned for fewer, as headroom for a
/// size hint that was a little low.
const MAX_PARTS: usize = 10_000;
const PLANNED_PARTS: u64 = 9_000;
/// Ranged reads are at most this large: reads need no large parts.
const READ_CHUNK: u64 = 8 << 20;

/// An object being uploaded; see the module docs.
pub struct Upload {
    rt: Arc<Rt>,
    shared: Arc<Shared>,
    key: String,
    path: ObjPath,
    part_size: usize,
    buf: Vec<u8>,
    upload_id: Option<String>,
    /// Sent as a multipart upload (else as one PUT).
    multipart: bool,
    in_flight: VecDeque<JoinHandle<Result<PartId, Failure>>>,
    parts: Vec<PartId>,
    /// SHA-256 of every part sent (of the whole object for a single PUT).
    part_sha: Vec<[u8; 32]>,
    written: u64,
    started: Instant,
    deadline: Instant,
    /// The object is complete on the server but not yet confirmed.
    unconfirmed: bool,
    /// The first failure: nothing more is sent after it.
    failed: Option<String>,
    done: bool,
}

impl Upload {
    pub fn new(
        rt: Arc<Rt>,
        shared: Arc<Shared>,
        key: &str,
        path: ObjPath,
        size_hint: u64,
    ) -> Result<Upload> {
        let configured = shared.settings.part_size;
        let needed = size_hint.div_ceil(PLANNED_PARTS).next_multiple_of(1 << 20);
        let part_size = configured.max(needed).min(5 << 30);
        if part_size > configured {
            tracing::info!(
                key,
                size_hint,
                part_mib = part_size >> 20,
                memory_mib = (part_size >> 20) * (shared.settings.parts_in_flight as u64 + 1),
                "large object: parts bigger than storage.s3.part_size to stay within 10,000 parts"
            );
        }
        let now = Instant::now();
        Ok(Upload {
            deadline: now + shared.settings.deadline,
            rt,
            shared,
            key: key.to_string(),
            path,
            part_size: part_size as usize,
            buf: Vec::new(),
            upload_id: None,
            multipart: false,
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            part_sha: Vec::new(),
            written: 0,
            started: now,
            unconfirmed: false,
            failed: None,
            done: false,
        })
    }

    fn block<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        block_until(&self.rt, self.deadline, fut)
    }

    fn error(&self, f: &Failure) -> Error {
        self.shared.error(&self.key, self.shared.describe(f))
    }

    /// Sends the buffer as the next part, first waiting for a free slot.
    fn send_part(&mut self) -> Result<(), Failure> {
        if self.upload_id.is_none() {
            let (s, path) = (&self.shared, &self.path);
            let id = self.block(s.retry("starting a multipart upload", || async {
                s.client.create_multipart(path).await.map_err(store_err)
            }))?;
            tracing::debug!(key = %self.key, part_mib = self.part_size >> 20, "multipart upload started");
            self.upload_id = Some(id);
            self.multipart = true;
        }
        let idx = self.parts.len() + self.in_flight.len();
        if idx >= MAX_PARTS {
            return Err(Failure::Other(format!(
                "the object needs more than {MAX_PARTS} parts of {} MiB: raise storage.s3.part_size",
                self.part_size >> 20
            )));
        }
        while self.in_flight.len() >= self.shared.settings.parts_in_flight {
            self.wait_oldest()?;
        }
        let data = std::mem::take(&mut self.buf);
        self.part_sha.push(Sha256::digest(&data).into());
        let (shared, path) = (self.shared.clone(), self.path.clone());
        let id = self.upload_id.clone().expect("upload started");
        let payload = PutPayload::from(data);
        let what = format!("uploading part {} of {}", idx + 1, self.key);
        self.in_flight.push_back(self.rt.spawn(async move {
            // The part stays in memory until it is acknowledged, so any
            // attempt can send it again: after a broken connection, or
            // when the server found it damaged on the way.
            shared
                .retry(&what, || async {
                    shared
                        .client
                        .put_part(&path, &id, idx, payload.clone())
                        .await
                        .map_err(store_err)
                })
                .await
        }));
        Ok(())
    }

    fn wait_oldest(&mut self) -> Result<(), Failure> {
        let h = self.in_flight.pop_front().expect("a part in flight");
        let part = self.block(async move {
            h.await
                .map_err(|e| Failure::Other(format!("part upload task: {e}")))?
        })?;
        self.parts.push(part);
        Ok(())
    }

    fn finish_inner(&mut self) -> Result<u64, Failure> {
        if self.upload_id.is_none() {
            // Smaller than a part: one PUT, atomic like the rest.
            let data = std::mem::take(&mut self.buf);
            self.part_sha.push(Sha256::digest(&data).into());
            let (s, path) = (&self.shared, &self.path);
            let payload = PutPayload::from(data);
            self.block(s.retry("uploading", || async {
                s.client
                    .put_opts(path, payload.clone(), PutOptions::default())
                    .await
                    .map_err(store_err)
            }))?;
        } else {
            if !self.buf.is_empty() {
                self.send_part()?;
            }
            while !self.in_flight.is_empty() {
                self.wait_oldest()?;
            }
            let (s, path) = (&self.shared, &self.path);
            let id = self.upload_id.clone().expect("upload started");
            let parts = std::mem::take(&mut self.parts);
            let completed = self.block(s.retry("completing the multipart upload", || async {
                s.client
                    .complete_multipart(path, &id, parts.clone())
                    .await
                    .map_err(store_err)
            }));
            match completed {
                Ok(_) => {}
                // A retried Complete whose first attempt went through finds
                // the upload gone: the object itself is checked next.
                Err(f) if f.is_not_found() => {
                    tracing::info!(key = %self.key, "the multipart upload is gone: checking the object")
                }
                Err(f) => return Err(f),
            }
            self.upload_id = None;
        }
        self.unconfirmed = true;
        self.confirm()?;
        self.unconfirmed = false;
        Ok(self.written)
    }

    /// Checks what landed: size, then the server's checksum (or a read-back).
    fn confirm(&mut self) -> Result<(), Failure> {
        let shared = self.shared.clone();
        let key = self.key.clone();
        let head = self.block(async move { shared.head_checksum(&key).await })?;
        let Some((size, checksum)) = head else {
            return Err(Failure::Other(
                "the object is missing right after its upload completed".into(),
            ));
        };
        if size != self.written {
            return Err(Failure::Other(format!(
                "the object landed as {size} bytes, but {} were written",
                self.written
            )));
        }
        let expected = expected_checksum(&self.part_sha, self.multipart);
        match (checksum, self.shared.settings.verify_upload) {
            (Some(stored), VerifyUpload::Checksum) => {
                if !checksum_matches(&stored, &expected) {
                    return Err(Failure::Other(format!(
                        "the server's SHA-256 checksum of the object is {stored}, but the bytes \
                         written give {expected}"
                    )));
                }
                tracing::debug!(key = %self.key, checksum = %stored, "upload confirmed by the server's checksum");
                Ok(())
            }
            (stored, _) => {
                if stored.is_none() {
                    tracing::info!(key = %self.key,
                        "the server keeps no SHA-256 checksums: reading the object back to confirm it");
                }
                self.read_back()
            }
        }
    }

    /// Reads the object back and compares every part's SHA-256.
    fn read_back(&mut self) -> Result<(), Failure> {
        let mut r = Download::open_raw(
            self.rt.clone(),
            self.shared.clone(),
            &self.key,
            self.path.clone(),
            self.deadline,
        )?;
        let part_len = if self.multipart {
            self.part_size as u64
        } else {
            self.written
        };
        let mut buf = vec![0u8; 1 << 20];
        for (i, want) in self.part_sha.iter().enumerate() {
            let start = i as u64 * part_len;
            let len = part_len.min(self.written - start);
            let mut h = Sha256::new();
            let mut left = len;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                r.read_exact(&mut buf[..n])
                    .map_err(|e| Failure::Other(format!("reading the object back: {e}")))?;
                h.update(&buf[..n]);
                left -= n as u64;
            }
            if h.finalize().as_slice() != want {
                return Err(Failure::Other(format!(
                    "read back, part {} (bytes {start}..{}) differs from what was sent",
                    i + 1,
                    start + len
                )));
            }
        }
        tracing::debug!(key = %self.key, "upload confirmed by reading it back");
        Ok(())
    }

    /// Aborts the multipart upload (or deletes an unconfirmed object).
    fn abort(&mut self) {
        for h in self.in_flight.drain(..) {
            h.abort();
        }
        // Bounded even when the deadline has passed or the server is gone.
        let limit = Instant::now()
            + self
                .shared
                .settings
                .request_timeout
                .min(Duration::from_secs(60));
        if let Some(id) = self.upload_id.take() {
            let (s, path) = (&self.shared, &self.path);
            let r = block_until(
                &self.rt,
                limit,
                s.retry("aborting the multipart upload", || {
                    abort_multipart(s, path, &id)
                }),
            );
            match r {
                Ok(()) => tracing::info!(key = %self.key, "multipart upload aborted"),
                Err(f) => {
                    tracing::warn!(key = %self.key, upload_id = %id, error = %self.shared.describe(&f),
                    "could not abort the multipart upload; the next snapshot of this broker aborts it")
                }
            }
        }
        if self.unconfirmed {
            let (s, path) = (&self.shared, &self.path);
            let r = block_until(
                &self.rt,
                limit,
                s.retry("deleting the unconfirmed object", || async {
                    s.client.delete(path).await.map_err(store_err)
                }),
            );
            if let Err(f) = r {
                tracing::warn!(key = %self.key, error = %self.shared.describe(&f),
                    "could not delete the unconfirmed object; the next snapshot of this broker removes it");
            }
            self.unconfirmed = false;
        }
    }
}

/// The SHA-256 checksum S3 reports for an object: of the whole object for
/// a single PUT, else of the concatenated part checksums, then `-N`.
fn expected_checksum(part_sha: &[[u8; 32]], multipart: bool) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    if !multipart {
        return b64.encode(part_sha[0]);
    }
    let mut h = Sha256::new();
    for p in part_sha {
        h.update(p);
    }
    format!("{}-{}", b64.encode(h.finalize()), part_sha.len())
}

/// Some servers leave out the `-N` of a multipart checksum (base64 itself
/// never contains `-`).
fn checksum_matches(stored: &str, expected: &str) -> bool {
    stored == expected
        || expected
            .rsplit_once('-')
            .is_some_and(|(bare, _)| stored == bare)
}

impl Write for Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(m) = &self.failed {
            return Err(io::Error::other(m.clone()));
        }
        if let Some(t) = &self.shared.throttle {
            t.consume(data.len());
        }
        let mut rest = data;
        while !rest.is_empty() {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.part_size);
            }
            let n = (self.part_size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == self.part_size {
                if let Err(f) = self.send_part() {
                    let msg = self.error(&f).to_string();
                    self.failed = Some(msg.clone());
                    self.abort();
                    return Err(io::Error::other(msg));
                }
            }
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl super::ObjectWriter for Upload {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        if let Some(m) = &self.failed {
            let e = Error::Storage {
                location: format!("{}/{}", super::location(&self.shared.settings), self.key),
                message: m.clone(),
            };
            self.done = true;
            return Err(e);
        }
        let r = self.finish_inner();
        self.done = true;
        match r {
            Ok(size) => {
                let secs = self.started.elapsed().as_secs_f64();
                tracing::info!(key = %self.key, bytes = size, parts = self.part_sha.len(),
                    mib_per_s = format!("{:.0}", size as f64 / (1 << 20) as f64 / secs.max(1e-3)),
                    "uploaded and confirmed");
                Ok(size)
            }
            Err(f) => {
                let e = self.error(&f);
                self.abort();
                Err(e)
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            self.abort();
        }
    }
}

/// An object read with ranged GETs, `parts_in_flight` ranges ahead.
pub struct Download {
    rt: Arc<Rt>,
    shared: Arc<Shared>,
    key: String,
    path: ObjPath,
    size: u64,
    e_tag: Option<String>,
    next: u64,
    chunk: u64,
    pending: VecDeque<JoinHandle<Result<Bytes, Failure>>>,
    cur: Bytes,
    pos: usize,
    deadline: Instant,
    failed: Option<String>,
}

impl Download {
    pub fn open(rt: Arc<Rt>, shared: Arc<Shared>, key: &str, path: ObjPath) -> Result<Download> {
        let deadline = Instant::now() + shared.settings.deadline;
        Download::open_raw(rt, shared.clone(), key, path, deadline)
            .map_err(|f| shared.error(key, format!("opening: {}", shared.describe(&f))))
    }

    fn open_raw(
        rt: Arc<Rt>,
        shared: Arc<Shared>,
        key: &str,
        path: ObjPath,
        deadline: Instant,
    ) -> Result<Download, Failure> {
        let s = &shared;
        let meta = block_until(
            &rt,
            deadline,
            s.retry("HEAD", || async {
                s.client.head(&path).await.map_err(store_err)
            }),
        )?;
        Ok(Download {
            chunk: shared.settings.part_size.min(READ_CHUNK),
            rt,
            shared,
            key: key.to_string(),
            path,
            size: meta.size,
            e_tag: meta.e_tag,
            next: 0,
            pending: VecDeque::new(),
            cur: Bytes::new(),
            pos: 0,
            deadline,
            failed: None,
        })
    }

    /// Starts fetching ranges until `parts_in_flight` are under way.
    fn fill(&mut self) {
        while self.pending.len() < self.shared.settings.parts_in_flight && self.next < self.size {
            let end = (self.next + self.chunk).min(self.size);
            let range = self.next..end;
            self.next = end;
            let fetched = fetch(
                self.shared.clone(),
                self.path.clone(),
                range,
                self.e_tag.clone(),
            );
            self.pending.push_back(self.rt.spawn(fetched));
        }
    }
}

/// One range, retried on its own (a body cut off halfway included); the
/// object must keep its ETag throughout.
async fn fetch(
    shared: Arc<Shared>,
    path: ObjPath,
    range: Range<u64>,
    e_tag: Option<String>,
) -> Result<Bytes, Failure> {
    let what = format!("reading bytes {}..{}", range.start, range.end);
    shared
        .retry(&what, || async {
            let opts = GetOptions {
                range: Some(range.clone().into()),
                if_match: e_tag.clone(),
                ..GetOptions::default()
            };
            let got = match shared.client.get_opts(&path, opts).await {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            };
            match got {
                Ok(b) if b.len() as u64 == range.end - range.start => Ok(b),
                Ok(b) => Err(Failure::Network(format!(
                    "short read: {} bytes for range {}..{}",
                    b.len(),
                    range.start,
                    range.end
                ))),
                Err(object_store::Error::Precondition { .. }) => Err(Failure::Other(
                    "the object changed while it was being read (its ETag no longer matches)"
                        .into(),
                )),
                Err(e) => Err(store_err(e)),
            }
        })
        .await
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.failed {
            return Err(io::Error::other(m.clone()));
        }
        while self.pos == self.cur.len() {
            self.fill();
            let Some(h) = self.pending.pop_front() else {
                return Ok(0);
            };
            let got = block_until(&self.rt, self.deadline, async move {
                h.await
                    .map_err(|e| Failure::Other(format!("range read task: {e}")))?
            });
            match got {
                Ok(b) => {
                    self.cur = b;
                    self.pos = 0;
                    self.fill();
                }
                Err(f) => {
                    let msg = self
                        .shared
                        .error(&self.key, format!("reading: {}", self.shared.describe(&f)))
                        .to_string();
                    self.failed = Some(msg.clone());
                    return Err(io::Error::other(msg));
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        if let Some(t) = &self.shared.throttle {
            t.consume(n);
        }
        Ok(n)
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        for h in self.pending.drain(..) {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_checksum() {
        let a: [u8; 32] = Sha256::digest(b"part one").into();
        let b: [u8; 32] = Sha256::digest(b"part two").into();
        let single = expected_checksum(&[a], false);
        assert!(!single.contains('-'));
        assert!(checksum_matches(&single, &single));
        let multi = expected_checksum(&[a, b], true);
        assert!(multi.ends_with("-2"), "{multi}");
        assert!(checksum_matches(&multi, &multi));
        let bare = multi.trim_end_matches("-2");
        assert!(checksum_matches(bare, &multi));
        assert!(!checksum_matches(&expected_checksum(&[b, a], true), &multi));
        assert!(!checksum_matches(&single, &multi));
    }
}
