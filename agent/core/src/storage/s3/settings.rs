//! Where the S3 backend's settings come from: the store URL, the config's
//! `[storage.s3]`, the standard AWS environment variables and the shared
//! credentials file, in that order. Every resolved value remembers the
//! setting it came from, so that an error can name it.

use crate::storage::{S3Section, VerifyUpload};
use std::path::PathBuf;
use std::time::Duration;

/// `s3://bucket/prefix` split into its bucket and its key prefix (no
/// leading or trailing `/`, possibly empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

/// Checks an `s3://` URL. The prefix is kept to characters that need no
/// escaping anywhere (letters, digits, `-`, `_`, `.`, `/`).
pub fn parse_s3_url(url: &str) -> Result<S3Url, String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{url:?} is not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.as_bytes()[0].is_ascii_alphanumeric()
        && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
    if !bucket_ok {
        return Err(format!(
            "{url:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.'), \
             e.g. s3://kafka-snapshots/prod"
        ));
    }
    if !prefix.is_empty() {
        let bad_char = prefix
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || b"-_./".contains(&b)));
        let bad_part = prefix
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
        if bad_char || bad_part {
            return Err(format!(
                "{url:?}: the prefix {prefix:?} may only hold letters, digits, '-', '_', '.' and \
                 non-empty '/'-separated parts"
            ));
        }
    }
    Ok(S3Url {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
}

/// A value and the setting it came from (`storage.s3.endpoint`,
/// `AWS_ENDPOINT_URL`, ...).
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub setting: String,
}

fn sourced<T>(value: T, setting: impl Into<String>) -> Sourced<T> {
    Sourced {
        value,
        setting: setting.into(),
    }
}

/// Access key, secret and session token. Never printed: `Debug` shows the
/// key id only.
#[derive(Clone)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Everything the S3 backend needs, resolved.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub url: S3Url,
    /// None: AWS S3 in `region`.
    pub endpoint: Option<Sourced<String>>,
    pub region: Sourced<String>,
    pub path_style: bool,
    pub credentials: Sourced<Credentials>,
    pub request_timeout: Duration,
    pub deadline: Duration,
    pub part_size: u64,
    pub parts_in_flight: usize,
    pub retries: usize,
    pub verify_upload: VerifyUpload,
}

impl S3Settings {
    /// Resolves the settings for `url` from the config section (if any)
    /// and the environment (`env` is `std::env::var` outside tests).
    pub fn resolve(
        url: &str,
        section: Option<&S3Section>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Settings, String> {
        let url = parse_s3_url(url)?;
        let defaults = S3Section::default();
        let s = section.unwrap_or(&defaults);
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());

        let endpoint = s
            .endpoint
            .clone()
            .map(|e| sourced(e, "storage.s3.endpoint"))
            .or_else(|| env("AWS_ENDPOINT_URL_S3").map(|e| sourced(e, "AWS_ENDPOINT_URL_S3")))
            .or_else(|| env("AWS_ENDPOINT_URL").map(|e| sourced(e, "AWS_ENDPOINT_URL")))
            .map(|mut e| {
                e.value = e.value.trim_end_matches('/').to_string();
                e
            });
        if let Some(e) = &endpoint {
            let ok = e.value.starts_with("http://") || e.value.starts_with("https://");
            if !ok || e.value.contains('?') {
                return Err(format!(
                    "{}: {:?} is not an http:// or https:// URL",
                    e.setting, e.value
                ));
            }
        }
        let region = s
            .region
            .clone()
            .map(|r| sourced(r, "storage.s3.region"))
            .or_else(|| env("AWS_REGION").map(|r| sourced(r, "AWS_REGION")))
            .or_else(|| env("AWS_DEFAULT_REGION").map(|r| sourced(r, "AWS_DEFAULT_REGION")))
            .unwrap_or_else(|| sourced("us-east-1".to_string(), "the default region"));
        let path_style = match (s.path_style, env("KAFKA_SNAPSHOT_S3_PATH_STYLE")) {
            (Some(p), _) => p,
            (None, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => {
                    return Err(format!(
                        "KAFKA_SNAPSHOT_S3_PATH_STYLE: {v:?} is not true or false"
                    ))
                }
            },
            // S3-compatible servers are mostly reached by address, where
            // only path-style requests work; AWS prefers virtual hosts.
            (None, None) => endpoint.is_some(),
        };
        if let (Some(e), false) = (&endpoint, path_style) {
            // Virtual-hosted requests put the bucket in front of the host
            // name, which an address cannot have.
            let host = e.value.split_once("://").map_or("", |(_, h)| h);
            let host = host.split(['/', ':']).next().unwrap_or("");
            if host.is_empty()
                || host.parse::<std::net::Ipv4Addr>().is_ok()
                || e.value.contains('[')
            {
                return Err(format!(
                    "{}: {:?} is an IP address, which works only with path-style requests; \
                     set storage.s3.path_style = true (or KAFKA_SNAPSHOT_S3_PATH_STYLE=true)",
                    e.setting, e.value
                ));
            }
        }
        let credentials = credentials(s, &env)?;
        Ok(S3Settings {
            url,
            endpoint,
            region,
            path_style,
            credentials,
            request_timeout: s.request_timeout,
            deadline: s.deadline,
            part_size: s.part_size,
            parts_in_flight: s.parts_in_flight,
            retries: s.retries,
            verify_upload: s.verify_upload,
        })
    }

    /// The endpoint as a person should read it in an error.
    pub fn endpoint_text(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("{} (from {})", e.value, e.setting),
            None => format!(
                "AWS S3 in region {} (no storage.s3.endpoint or AWS_ENDPOINT_URL set)",
                self.region.value
            ),
        }
    }

    /// Base URL of the bucket: requests for a key append `/<key>`.
    pub fn bucket_url(&self) -> String {
        let b = &self.url.bucket;
        match (&self.endpoint, self.path_style) {
            (Some(e), true) => format!("{}/{b}", e.value),
            (Some(e), false) => match e.value.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{b}.{host}"),
                None => e.value.clone(),
            },
            (None, true) => format!("https://s3.{}.amazonaws.com/{b}", self.region.value),
            (None, false) => format!("https://{b}.s3.{}.amazonaws.com", self.region.value),
        }
    }
}

fn credentials(
    s: &S3Section,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Sourced<Credentials>, String> {
    if let (Some(id), Some(secret)) = (&s.access_key_id, &s.secret_access_key) {
        return Ok(sourced(
            Credentials {
                key_id: id.clone(),
                secret: secret.clone(),
                token: None,
            },
            "storage.s3.access_key_id/secret_access_key",
        ));
    }
    if let Some(file) = &s.credentials_file {
        let profile = s
            .profile
            .clone()
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        return credentials_file(file, &profile, "storage.s3.credentials_file");
    }
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret)) => {
            return Ok(sourced(
                Credentials {
                    key_id,
                    secret,
                    token: env("AWS_SESSION_TOKEN"),
                },
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
            ))
        }
        (Some(_), None) => {
            return Err("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into())
        }
        (None, Some(_)) => {
            return Err("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into())
        }
        (None, None) => {}
    }
    let (file, setting) = match env("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => (PathBuf::from(f), "AWS_SHARED_CREDENTIALS_FILE"),
        None => match env("HOME") {
            Some(h) => (
                PathBuf::from(h).join(".aws/credentials"),
                "~/.aws/credentials",
            ),
            None => (
                PathBuf::from("/root/.aws/credentials"),
                "~/.aws/credentials",
            ),
        },
    };
    let profile = s
        .profile
        .clone()
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    if !file.exists() {
        return Err(format!(
            "no S3 credentials: set storage.s3.access_key_id/secret_access_key or \
             storage.s3.credentials_file in the config, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
             or write profile [{profile}] to {}",
            file.display()
        ));
    }
    credentials_file(&file, &profile, setting)
}

/// Reads a profile of an AWS shared credentials file (INI).
fn credentials_file(
    file: &std::path::Path,
    profile: &str,
    setting: &str,
) -> Result<Sourced<Credentials>, String> {
    let where_ = format!("{setting} ({}) profile [{profile}]", file.display());
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{setting}: cannot read {}: {e}", file.display()))?;
    let mut section = String::new();
    let (mut key_id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key_id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (key_id, secret) {
        (Some(key_id), Some(secret)) => Ok(sourced(
            Credentials {
                key_id,
                secret,
                token,
            },
            where_,
        )),
        _ => Err(format!(
            "{where_}: no aws_access_key_id and aws_secret_access_key there"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_s3_url("s3://kafka-snapshots/prod/eu/").unwrap(),
            S3Url {
                bucket: "kafka-snapshots".into(),
                prefix: "prod/eu".into()
            }
        );
        assert_eq!(parse_s3_url("s3://bkt").unwrap().prefix, "");
        for bad in [
            "s3://",
            "s3://Upper/x",
            "s3://ab/x",
            "s3://-bkt/x",
            "s3://bkt/a//b",
            "s3://bkt/../x",
            "s3://bkt/a b",
            "s3://bkt/a?x",
        ] {
            assert!(parse_s3_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_first_then_environment() {
        let sec = S3Section {
            endpoint: Some("http://127.0.0.1:3900/".into()),
            region: Some("garage".into()),
            access_key_id: Some("GKconfig".into()),
            secret_access_key: Some("configsecret".into()),
            ..S3Section::default()
        };
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "AKenv"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
            ("AWS_ENDPOINT_URL", "http://other:9000"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        let s = S3Settings::resolve("s3://bkt/p", Some(&sec), &e).unwrap();
        assert_eq!(s.endpoint.as_ref().unwrap().value, "http://127.0.0.1:3900");
        assert_eq!(s.endpoint.as_ref().unwrap().setting, "storage.s3.endpoint");
        assert_eq!(s.region.value, "garage");
        assert_eq!(s.credentials.value.key_id, "GKconfig");
        assert!(s.path_style, "an endpoint defaults to path style");
        assert_eq!(s.bucket_url(), "http://127.0.0.1:3900/bkt");

        let s = S3Settings::resolve("s3://bkt/p", None, &e).unwrap();
        assert_eq!(s.endpoint.as_ref().unwrap().setting, "AWS_ENDPOINT_URL");
        assert_eq!(s.region.value, "eu-west-1");
        assert_eq!(s.credentials.value.key_id, "AKenv");
        assert_eq!(
            s.credentials.setting,
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        );
        // The secret is never in Debug output.
        assert!(!format!("{s:?}").contains("envsecret"));
    }

    #[test]
    fn aws_defaults_and_path_style_switch() {
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_DEFAULT_REGION", "eu-central-1"),
        ]);
        let s = S3Settings::resolve("s3://bkt", None, &e).unwrap();
        assert!(!s.path_style);
        assert_eq!(s.bucket_url(), "https://bkt.s3.eu-central-1.amazonaws.com");
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_ENDPOINT_URL", "https://minio.internal:9000"),
            ("KAFKA_SNAPSHOT_S3_PATH_STYLE", "false"),
        ]);
        let s = S3Settings::resolve("s3://bkt", None, &e).unwrap();
        assert_eq!(s.bucket_url(), "https://bkt.minio.internal:9000");
        assert_eq!(s.region.value, "us-east-1");
        let e = env(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "S"),
            ("AWS_ENDPOINT_URL", "http://10.0.0.1:9000"),
            ("KAFKA_SNAPSHOT_S3_PATH_STYLE", "false"),
        ]);
        let err = S3Settings::resolve("s3://bkt", None, &e).unwrap_err();
        assert!(err.contains("path_style"), "{err}");
    }

    #[test]
    fn credentials_file_profiles() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("credentials");
        std::fs::write(
            &f,
            "[default]\naws_access_key_id = AKdef\naws_secret_access_key = Sdef\n\n\
             # comment\n[backup]\naws_access_key_id=AKb\naws_secret_access_key=Sb\naws_session_token=T\n",
        )
        .unwrap();
        let fs = f.display().to_string();
        let s = S3Settings::resolve(
            "s3://bkt",
            None,
            &env(&[("AWS_SHARED_CREDENTIALS_FILE", &fs)]),
        )
        .unwrap();
        assert_eq!(s.credentials.value.key_id, "AKdef");
        let s = S3Settings::resolve(
            "s3://bkt",
            None,
            &env(&[
                ("AWS_SHARED_CREDENTIALS_FILE", &fs),
                ("AWS_PROFILE", "backup"),
            ]),
        )
        .unwrap();
        assert_eq!(s.credentials.value.token.as_deref(), Some("T"));
        let sec = S3Section {
            credentials_file: Some(f.clone()),
            profile: Some("nope".into()),
            ..S3Section::default()
        };
        let e = S3Settings::resolve("s3://bkt", Some(&sec), &env(&[])).unwrap_err();
        assert!(
            e.contains("storage.s3.credentials_file") && e.contains("[nope]"),
            "{e}"
        );
        let e =
            S3Settings::resolve("s3://bkt", None, &env(&[("HOME", "/nonexistent")])).unwrap_err();
        assert!(e.contains("no S3 credentials"), "{e}");
    }
}
