//! `[storage]` and `[storage.s3]`: where snapshots go and how the s3://
//! backend reaches them.

use super::parse_s3_url;
use crate::settings::{bad, byte_size, duration, opt_byte_size, KeyError};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// `file:///mnt/kafka-snapshots` (a local path or an NFS mount) or
    /// `s3://bucket/prefix`.
    pub url: String,
    /// Bytes per second for everything sent to or read from the store, by
    /// either backend (`"100MiB"` or an integer). Unlimited when unset.
    #[serde(default, deserialize_with = "opt_byte_size")]
    pub bandwidth_limit: Option<u64>,
    /// Settings of the `s3://` backend; without this section they come from
    /// the standard AWS environment variables and credentials file.
    pub s3: Option<S3Section>,
}

/// `[storage.s3]`. Credentials come from here when set, otherwise from
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, otherwise from the shared
/// credentials file (`~/.aws/credentials`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    /// `http(s)://host:port` of an S3-compatible server (MinIO, Ceph RGW,
    /// Garage); unset means AWS S3 in `region`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`;
    /// defaults to true when `endpoint` is set, false for AWS.
    pub path_style: Option<bool>,
    pub access_key_id: Option<String>,
    /// Prefer `credentials_file` (mode 0600) to a secret in this file.
    pub secret_access_key: Option<String>,
    /// An AWS shared credentials file, read for `profile`.
    pub credentials_file: Option<PathBuf>,
    pub profile: Option<String>,
    /// Limit on every single request, connection included.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// Limit on one whole object transfer, retries included.
    #[serde(deserialize_with = "duration")]
    pub deadline: Duration,
    /// Multipart part size (also the ranged-read size); with
    /// `parts_in_flight` it bounds the memory a transfer uses.
    #[serde(deserialize_with = "byte_size")]
    pub part_size: u64,
    pub parts_in_flight: usize,
    /// Attempts after the first for a failed request (with backoff).
    pub retries: usize,
    /// How an upload is confirmed before the manifest is written.
    pub verify_upload: VerifyUpload,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            credentials_file: None,
            profile: None,
            request_timeout: Duration::from_secs(60),
            deadline: Duration::from_secs(24 * 3600),
            part_size: 8 << 20,
            parts_in_flight: 2,
            retries: 10,
            verify_upload: VerifyUpload::Checksum,
        }
    }
}

// By hand, so that the secret never reaches a log line.
impl std::fmt::Debug for S3Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Section")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("credentials_file", &self.credentials_file)
            .field("profile", &self.profile)
            .field("request_timeout", &self.request_timeout)
            .field("deadline", &self.deadline)
            .field("part_size", &self.part_size)
            .field("parts_in_flight", &self.parts_in_flight)
            .field("retries", &self.retries)
            .field("verify_upload", &self.verify_upload)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyUpload {
    /// Compare the SHA-256 checksums the server verified and stored for
    /// every part with those of the bytes sent; read the object back when
    /// the server keeps no checksums.
    Checksum,
    /// Always read the whole object back and hash it.
    ReadBack,
}

impl S3Section {
    /// Every problem of the section, as (key, message).
    fn validate(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                problems.push((
                    "storage.s3.endpoint",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            problems.push(("storage.s3.region", "is empty".into()));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => problems.push((
                "storage.s3.secret_access_key",
                "missing: set it with access_key_id (or use credentials_file)".into(),
            )),
            (None, Some(_)) => problems.push((
                "storage.s3.access_key_id",
                "missing: set it with secret_access_key (or use credentials_file)".into(),
            )),
            (Some(_), Some(_)) if self.credentials_file.is_some() => problems.push((
                "storage.s3.credentials_file",
                "set either access_key_id/secret_access_key or credentials_file, not both".into(),
            )),
            _ => {}
        }
        if self.profile.is_some() && self.access_key_id.is_some() {
            problems.push((
                "storage.s3.profile",
                "names a profile of a credentials file, but access_key_id is set".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            problems.push(("storage.s3.request_timeout", "must be more than 0".into()));
        } else if self.deadline <= self.request_timeout {
            problems.push((
                "storage.s3.deadline",
                format!(
                    "{:?} must exceed request_timeout ({:?})",
                    self.deadline, self.request_timeout
                ),
            ));
        }
        // S3's limits: parts of 5 MiB to 5 GiB.
        if !(5 << 20..=5 << 30).contains(&self.part_size) {
            problems.push((
                "storage.s3.part_size",
                format!("{} bytes is outside 5MiB..=5GiB", self.part_size),
            ));
        }
        if !(1..=16).contains(&self.parts_in_flight) {
            problems.push((
                "storage.s3.parts_in_flight",
                format!("{} is outside 1..=16", self.parts_in_flight),
            ));
        }
        if self.retries > 100 {
            problems.push(("storage.s3.retries", "must be at most 100".into()));
        }
        problems
    }
}

impl StorageSection {
    /// Checks what serde cannot; the problems are (key, message).
    pub fn validate(&self) -> std::result::Result<(), Vec<KeyError>> {
        let mut problems = Vec::new();
        if let Err(m) = check_store_url(&self.url) {
            problems.push(bad("storage.url", m));
        }
        if self.bandwidth_limit == Some(0) {
            problems.push(bad(
                "storage.bandwidth_limit",
                "must be more than 0 (leave it out for no limit)".into(),
            ));
        }
        if let Some(s3) = &self.s3 {
            if !self.url.starts_with("s3://") {
                problems.push(bad(
                    "storage.s3",
                    format!("is set, but storage.url {:?} is not an s3:// URL", self.url),
                ));
            }
            problems.extend(s3.validate().into_iter().map(|(key, m)| bad(key, m)));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Checks the shape of a store URL without touching the store.
pub fn check_store_url(url: &str) -> Result<(), String> {
    if let Some(p) = url.strip_prefix("file://") {
        if p.starts_with('/') {
            return Ok(());
        }
        return Err(format!(
            "{url:?}: file:// needs an absolute path, e.g. file:///mnt/kafka-snapshots"
        ));
    }
    if url.starts_with('/') {
        return Ok(());
    }
    if url.starts_with("s3://") {
        return parse_s3_url(url).map(|_| ());
    }
    Err(format!(
        "{url:?}: unsupported store URL (use file:///path or s3://bucket/prefix)"
    ))
}
