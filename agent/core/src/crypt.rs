//! Encryption at rest with the age format (X25519): the agents hold only
//! recipients (public keys), and the identity (the private key) is needed
//! only where a snapshot's contents are read: a restore, `archive extract`,
//! a verify of the contents.
//!
//! What is encrypted, to every configured recipient (several: a rotated
//! key's successor, an offline break-glass key):
//! - the archive, streamed: tar -> zstd -> age -> storage, in age's 64 KiB
//!   authenticated chunks, so memory stays bounded and a damaged or altered
//!   byte fails the chunk that holds it;
//! - the manifest's entries (paths name topics), sealed into the manifest
//!   ([`seal_entries`]).
//!
//! The manifest records the recipients' fingerprints, never the keys, so a
//! listing can say which identity a restore needs and a wrong identity is
//! refused before anything is downloaded.
//!
//! Encryption protects what the store holds from whoever can read the
//! store. It does not authenticate the writer: anyone with a recipient can
//! make an age file to it, as anyone who can write the store can write an
//! unencrypted snapshot today.

use base64::Engine as _;
use kafka_snapshot_model::error::{Error, Result};
use kafka_snapshot_model::manifest::{
    recipient_fingerprint, EncryptionRecord, EntryRecord, Manifest, SealedEntries, AGE_SCHEME,
};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The recipients new snapshots are encrypted to.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
    fingerprints: Vec<String>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients{:?}", self.fingerprints)
    }
}

impl Recipients {
    /// Parses recipients (`age1...`), each a line of text; `source` names
    /// where they came from in an error (`encryption.recipients[2]`, `FILE
    /// line 3`). Duplicates are dropped.
    pub fn parse<'a>(
        items: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<Recipients, String> {
        let mut keys = Vec::new();
        let mut fingerprints = Vec::new();
        for (source, text) in items {
            let text = text.trim();
            let key = age::x25519::Recipient::from_str(text).map_err(|e| {
                format!(
                    "{source}: {:?} is not an age X25519 recipient (age1...): {e}",
                    abbreviate(text)
                )
            })?;
            let fp = recipient_fingerprint(&key.to_string());
            if !fingerprints.contains(&fp) {
                keys.push(key);
                fingerprints.push(fp);
            }
        }
        Ok(Recipients { keys, fingerprints })
    }

    /// The recipients in a recipients file: one `age1...` per line, `#`
    /// comments and blank lines ignored (the format `age -R` reads).
    pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let lines: Vec<(String, String)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, l)| (format!("{} line {}", path.display(), i + 1), l.to_string()))
            .collect();
        if lines.is_empty() {
            return Err(format!("{} holds no recipient", path.display()));
        }
        Ok(lines)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The recipients as `age1...` text.
    pub fn to_strings(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_string()).collect()
    }

    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    fn encryptor(&self) -> io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("setting up age encryption: {e}")))
    }

    /// Wraps `out` so that everything written to it is encrypted; call
    /// [`EncryptingWriter::finish`] to write the last chunk.
    pub fn encrypt<W: Write>(&self, out: W) -> io::Result<EncryptingWriter<W>> {
        Ok(EncryptingWriter {
            inner: self.encryptor()?.wrap_output(out)?,
        })
    }
}

/// Encrypts what is written to it, in age's authenticated chunks.
pub struct EncryptingWriter<W: Write> {
    inner: age::stream::StreamWriter<W>,
}

impl<W: Write> EncryptingWriter<W> {
    pub fn finish(self) -> io::Result<W> {
        self.inner.finish()
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The identities (private keys) of an identity file, for reading
/// encrypted snapshots.
pub struct Identities {
    path: PathBuf,
    keys: Vec<age::x25519::Identity>,
    fingerprints: Vec<String>,
}

impl std::fmt::Debug for Identities {
    // Never the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identities({}: {:?})",
            self.path.display(),
            self.fingerprints
        )
    }
}

impl Identities {
    /// Reads an age identity file (`AGE-SECRET-KEY-1...` lines, as
    /// `age-keygen` writes them; `#` comments). Like a token, it must not
    /// be readable by group or others: it opens every snapshot.
    pub fn load(path: &Path) -> Result<Identities, String> {
        use std::os::unix::fs::PermissionsExt;
        let md =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} has mode {mode:04o}: an identity must not be readable by group or others; \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut keys = Vec::new();
        let mut fingerprints = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // Never echo the line: it may be a key with a typo.
            let key = age::x25519::Identity::from_str(line).map_err(|_| {
                format!(
                    "{} line {}: not an age X25519 identity (AGE-SECRET-KEY-1...)",
                    path.display(),
                    i + 1
                )
            })?;
            let fp = recipient_fingerprint(&key.to_public().to_string());
            if !fingerprints.contains(&fp) {
                keys.push(key);
                fingerprints.push(fp);
            }
        }
        if keys.is_empty() {
            return Err(format!("{} holds no identity", path.display()));
        }
        Ok(Identities {
            path: path.to_path_buf(),
            keys,
            fingerprints,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprints of the recipients these identities open.
    pub fn fingerprints(&self) -> &[String] {
        &self.fingerprints
    }

    /// Refuses, naming both sides, when none of these identities is one of
    /// the recipients `enc` records for `snapshot`.
    pub fn check_opens(&self, snapshot: &str, enc: &EncryptionRecord) -> Result<()> {
        if enc.recipients.iter().any(|r| self.fingerprints.contains(r)) {
            return Ok(());
        }
        Err(Error::refused(
            "wrong identity",
            format!(
                "snapshot {snapshot} is encrypted to recipients [{}]; identity file {} holds \
                 none of them (it holds [{}]); use the identity of one of those recipients",
                enc.recipients.join(", "),
                self.path.display(),
                self.fingerprints.join(", ")
            ),
        ))
    }

    /// Decrypts an age stream: `Ok(None)` when it is not encrypted to any
    /// of these identities.
    pub fn decrypt<R: Read>(&self, input: R) -> io::Result<Option<age::stream::StreamReader<R>>> {
        let decryptor = age::Decryptor::new(input).map_err(age_io)?;
        match decryptor.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity)) {
            Ok(r) => Ok(Some(r)),
            Err(age::DecryptError::NoMatchingKeys) => Ok(None),
            Err(e) => Err(age_io(e)),
        }
    }
}

/// Writes a new identity to `path` (created, never replaced, mode 0600),
/// in the format `age-keygen` writes, and returns its recipient.
pub fn generate_identity_file(path: &Path) -> Result<String, String> {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let text = format!(
        "# created: {}\n# public key: {recipient}\n# fingerprint: {}\n{}\n",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        recipient_fingerprint(&recipient),
        id.to_string().expose_secret()
    );
    write_new_secret(path, &text)?;
    Ok(recipient)
}

/// Writes `text` to `path`, a new file (never one that exists) of mode
/// 0600, durably.
fn write_new_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The cluster's object key: names the content objects of encrypted
/// incremental snapshots. An object is named by the HMAC-SHA256, under this
/// key, of its chunk's SHA-256 (see
/// [`kafka_snapshot_model::manifest::SealedObjects`]), so equal chunks
/// still share one object, while whoever reads the store without the key
/// cannot test whether it holds a file they can guess. Every agent of a
/// cluster must hold the same key: an agent with another one stores its
/// chunks again under other names (correct, but nothing is shared).
///
/// Its file holds the key as 64 hex digits on a line of its own (`#`
/// comments and blank lines are ignored), as `kafka-snapshot-agent key
/// generate-object-key` writes it; like a token it must not be readable by
/// others.
#[derive(Clone, PartialEq, Eq)]
pub struct ObjectKey {
    key: [u8; 32],
    fingerprint: String,
}

impl std::fmt::Debug for ObjectKey {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectKey({})", self.fingerprint)
    }
}

/// What an object name is the HMAC of, besides the chunk's SHA-256: a key
/// used for anything else never names an object by accident.
const OBJECT_NAME_CONTEXT: &[u8] = b"kafka-snapshot content object name v1\0";
const OBJECT_KEY_FINGERPRINT_CONTEXT: &[u8] = b"kafka-snapshot object key fingerprint v1\0";

impl ObjectKey {
    pub fn from_bytes(key: [u8; 32]) -> ObjectKey {
        let fp = Self::mac(&key, OBJECT_KEY_FINGERPRINT_CONTEXT, b"");
        ObjectKey {
            key,
            fingerprint: format!("hmac:{}", hex::encode(&fp[..8])),
        }
    }

    /// Reads an object key file; the error names the file (and the line),
    /// never the key.
    pub fn load(path: &Path) -> Result<ObjectKey, String> {
        use std::os::unix::fs::PermissionsExt;
        let md =
            std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(format!(
                "{} has mode {mode:04o}: the object key must not be readable by others; run \
                 `chmod o-rwx {}`",
                path.display(),
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((n, line)) = lines.next() else {
            return Err(format!("{} holds no object key", path.display()));
        };
        if let Some((m, _)) = lines.next() {
            return Err(format!(
                "{} line {m}: a second key (the first is on line {n}); an object key file \
                 holds one",
                path.display()
            ));
        }
        let mut key = [0u8; 32];
        match hex::decode_to_slice(line, &mut key) {
            Ok(()) => Ok(ObjectKey::from_bytes(key)),
            Err(_) => Err(format!(
                "{} line {n}: not an object key (64 hex digits)",
                path.display()
            )),
        }
    }

    /// Writes a new random key to `path` (created, never replaced, mode
    /// 0600) and returns its fingerprint.
    pub fn generate_file(path: &Path) -> Result<String, String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness for a key: {e}"))?;
        let k = ObjectKey::from_bytes(key);
        let text = format!(
            "# kafka-snapshot object key: names the content objects of encrypted incremental\n\
             # snapshots. The same file on every agent of the cluster; keep a copy with the\n\
             # identities. created: {}, fingerprint: {}\n{}\n",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            k.fingerprint,
            hex::encode(key)
        );
        write_new_secret(path, &text)?;
        Ok(k.fingerprint)
    }

    /// `hmac:` and 16 hex digits: tells keys apart, says nothing of the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The name of the object of a chunk whose SHA-256 is `sha256` (hex).
    pub fn name(&self, sha256: &str) -> String {
        hex::encode(Self::mac(&self.key, OBJECT_NAME_CONTEXT, sha256.as_bytes()))
    }

    fn mac(key: &[u8; 32], context: &[u8], data: &[u8]) -> [u8; 32] {
        use hmac::{Mac, SimpleHmac};
        let mut mac = <SimpleHmac<sha2::Sha256> as Mac>::new_from_slice(key)
            .expect("HMAC takes keys of any length");
        mac.update(context);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

fn age_io(e: age::DecryptError) -> io::Error {
    match e {
        age::DecryptError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// The first and last characters of something that failed to parse as a
/// key: enough to find it, not the whole text.
fn abbreviate(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= 16 {
        text.to_string()
    } else {
        format!(
            "{}...{}",
            chars[..8].iter().collect::<String>(),
            chars[chars.len() - 4..].iter().collect::<String>()
        )
    }
}

/// The encryption record of a new snapshot: the entries sealed to
/// `recipients` (zstd-compressed JSON, then age, then base64).
pub fn seal_entries(
    recipients: &Recipients,
    snapshot_id: &str,
    entries: &[EntryRecord],
) -> Result<EncryptionRecord> {
    let sealed = SealedEntries {
        snapshot_id: snapshot_id.to_string(),
        entries: entries.to_vec(),
    };
    let json = serde_json::to_vec(&sealed).expect("entries serialise");
    let err = |e: io::Error| Error::io("sealing the manifest's entries", e);
    let compressed = zstd::bulk::compress(&json, 3).map_err(err)?;
    let mut w = recipients.encrypt(Vec::new()).map_err(err)?;
    w.write_all(&compressed).map_err(err)?;
    let ciphertext = w.finish().map_err(err)?;
    Ok(EncryptionRecord {
        scheme: AGE_SCHEME.to_string(),
        recipients: recipients.fingerprints().to_vec(),
        sealed_entries: base64::engine::general_purpose::STANDARD.encode(ciphertext),
    })
}

/// Opens the sealed entries of an encrypted manifest read from `key` with
/// `identity`; nothing to do for an unencrypted one. With no identity an
/// encrypted manifest is refused, saying which recipients it needs.
pub fn unseal(m: &mut Manifest, key: &str, identity: Option<&Identities>) -> Result<()> {
    let Some(enc) = m.encryption.clone() else {
        return Ok(());
    };
    if m.has_entries() {
        return Ok(());
    }
    let id = m.snapshot_id.clone();
    let Some(identity) = identity else {
        return Err(Error::refused(
            "no identity",
            format!(
                "snapshot {id} is encrypted to recipients [{}]; reading its contents needs the \
                 identity of one of them (--identity FILE, or encryption.identity_file in the \
                 agent config)",
                enc.recipients.join(", ")
            ),
        ));
    };
    identity.check_opens(&id, &enc)?;
    let corrupt = |message: String| Error::Manifest {
        snapshot: id.clone(),
        key: key.to_string(),
        message,
    };
    let ciphertext = base64::engine::general_purpose::STANDARD
        .decode(enc.sealed_entries.as_bytes())
        .map_err(|e| corrupt(format!("sealed entries are not base64: {e}")))?;
    let mut reader = identity
        .decrypt(&ciphertext[..])
        .map_err(|e| corrupt(format!("sealed entries cannot be decrypted: {e}")))?
        .ok_or_else(|| {
            corrupt(format!(
                "sealed entries are not encrypted to identity file {}, though the manifest says \
                 they are: damaged or altered",
                identity.path().display()
            ))
        })?;
    let mut compressed = Vec::new();
    reader
        .read_to_end(&mut compressed)
        .map_err(|e| corrupt(format!("sealed entries fail authentication: {e}")))?;
    // Bounded like a manifest: the entries came out of one.
    let json = zstd::bulk::decompress(
        &compressed,
        kafka_snapshot_model::manifest::MAX_MANIFEST_BYTES as usize,
    )
    .map_err(|e| corrupt(format!("sealed entries do not decompress: {e}")))?;
    m.unseal(&json, key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub fn keypair() -> (String, String) {
        let id = age::x25519::Identity::generate();
        let secret = {
            use age::secrecy::ExposeSecret;
            id.to_string().expose_secret().to_string()
        };
        (id.to_public().to_string(), secret)
    }

    fn identity_file(dir: &Path, name: &str, secrets: &[&str], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("# created: test\n{}\n", secrets.join("\n"))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn streams_round_trip_to_each_of_several_recipients() {
        let (r1, s1) = keypair();
        let (r2, s2) = keypair();
        let recipients = Recipients::parse([
            ("a".to_string(), r1.as_str()),
            ("b".to_string(), r2.as_str()),
            ("dup".to_string(), r1.as_str()),
        ])
        .unwrap();
        assert_eq!(recipients.fingerprints().len(), 2);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = recipients.encrypt(Vec::new()).unwrap();
        w.write_all(&data).unwrap();
        let ct = w.finish().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        for (i, s) in [&s1, &s2].iter().enumerate() {
            let ids = Identities::load(&identity_file(tmp.path(), &format!("k{i}"), &[s], 0o600))
                .unwrap();
            let mut out = Vec::new();
            ids.decrypt(&ct[..])
                .unwrap()
                .expect("encrypted to this identity")
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
        let (_, other) = keypair();
        let ids = Identities::load(&identity_file(tmp.path(), "other", &[&other], 0o600)).unwrap();
        assert!(ids.decrypt(&ct[..]).unwrap().is_none());
    }

    #[test]
    fn an_identity_file_others_can_read_or_that_holds_no_key_is_refused() {
        let (_, s) = keypair();
        let tmp = tempfile::tempdir().unwrap();
        let e = Identities::load(&identity_file(tmp.path(), "k", &[&s], 0o640))
            .err()
            .unwrap();
        assert!(e.contains("0640") && e.contains("chmod 600"), "{e}");
        let e = Identities::load(&identity_file(
            tmp.path(),
            "bad",
            &["AGE-SECRET-KEY-1XYZ"],
            0o600,
        ))
        .err()
        .unwrap();
        assert!(e.contains("line 2") && !e.contains("XYZ"), "{e}");
        let e = Identities::load(&identity_file(tmp.path(), "none", &[], 0o600))
            .err()
            .unwrap();
        assert!(e.contains("holds no identity"), "{e}");
    }

    #[test]
    fn object_keys_name_objects_by_a_keyed_hash_and_are_read_with_care() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("object.key");
        let fp = ObjectKey::generate_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(ObjectKey::generate_file(&path).is_err(), "never replaced");
        let k = ObjectKey::load(&path).unwrap();
        assert_eq!(k.fingerprint(), fp);
        assert!(fp.starts_with("hmac:") && fp.len() == 21, "{fp}");
        let sha = "ab".repeat(32);
        let name = k.name(&sha);
        assert_eq!(name.len(), 64);
        assert_ne!(name, sha);
        assert_eq!(name, ObjectKey::load(&path).unwrap().name(&sha), "stable");
        let other = ObjectKey::from_bytes([7; 32]);
        assert_ne!(other.name(&sha), name, "another key, another name");
        assert_ne!(other.fingerprint(), fp);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{k:?}").contains(text.lines().last().unwrap()));

        let write = |name: &str, text: &str, mode: u32| {
            let p = tmp.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let key_hex = "0f".repeat(32);
        let e = ObjectKey::load(&write("open", &key_hex, 0o644)).unwrap_err();
        assert!(e.contains("0644") && e.contains("chmod o-rwx"), "{e}");
        ObjectKey::load(&write("group", &format!("# c\n\n{key_hex}\n"), 0o640)).unwrap();
        let e = ObjectKey::load(&write("short", "0f0f\n", 0o600)).unwrap_err();
        assert!(
            e.contains("line 1: not an object key") && !e.contains("0f0f"),
            "{e}"
        );
        let e =
            ObjectKey::load(&write("two", &format!("{key_hex}\n{key_hex}\n"), 0o600)).unwrap_err();
        assert!(e.contains("line 2: a second key"), "{e}");
        let e = ObjectKey::load(&write("none", "# nothing\n", 0o600)).unwrap_err();
        assert!(e.contains("holds no object key"), "{e}");
    }

    #[test]
    fn a_bad_recipient_is_named_by_its_source() {
        let e = Recipients::parse([(
            "encryption.recipients[1]".to_string(),
            "age1notakeyatallreallynotakey",
        )])
        .unwrap_err();
        assert!(e.starts_with("encryption.recipients[1]: "), "{e}");
        assert!(e.contains("not an age X25519 recipient"), "{e}");
    }
}
