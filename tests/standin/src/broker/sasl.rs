//! SASL on the SASL_PLAINTEXT listener: SaslHandshake (key 17, v0-v1) and
//! SaslAuthenticate (key 36, v0-v2) with PLAIN and SCRAM-SHA-256/512
//! (RFC 5802, RFC 7677), against the users of the cluster definition.
//! After a v0 handshake the client sends raw SASL tokens without Kafka
//! headers, as Kafka still accepts.

use bytes::Bytes;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use sha2::{Digest, Sha256, Sha512};

use super::Broker;

pub const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
const SCRAM_ITERATIONS: u32 = 4096;

const ILLEGAL_SASL_STATE: i16 = 34;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;

/// Where a connection is in authentication.
#[derive(Debug, Default)]
pub(super) enum Auth {
    /// PLAINTEXT listener, or SASL done.
    #[default]
    Done,
    /// SASL listener before a SaslHandshake.
    AwaitHandshake,
    /// Mechanism chosen; `raw` after a v0 handshake.
    Authenticating {
        mechanism: &'static str,
        raw: bool,
        scram: Option<Scram>,
    },
}

/// The outcome of one authentication step.
pub(super) enum Step {
    /// Send this token; more steps follow or authentication is complete.
    Continue(Vec<u8>),
    /// Authentication failed with this message: answer, then close.
    Failed(String),
}

pub(super) fn handshake(
    session_auth: &mut Auth,
    req: &SaslHandshakeRequest,
    version: i16,
) -> SaslHandshakeResponse {
    let mechanisms = MECHANISMS
        .iter()
        .map(|m| StrBytes::from_static_str(m))
        .collect();
    let response = SaslHandshakeResponse::default().with_mechanisms(mechanisms);
    if !matches!(session_auth, Auth::AwaitHandshake) {
        return response.with_error_code(ILLEGAL_SASL_STATE);
    }
    match MECHANISMS.iter().find(|m| **m == req.mechanism.as_str()) {
        Some(m) => {
            *session_auth = Auth::Authenticating {
                mechanism: m,
                raw: version == 0,
                scram: None,
            };
            response
        }
        None => response.with_error_code(UNSUPPORTED_SASL_MECHANISM),
    }
}

/// SaslAuthenticate: returns the response and whether to close after it.
pub(super) fn authenticate(
    broker: &Broker,
    session_auth: &mut Auth,
    req: &SaslAuthenticateRequest,
) -> (SaslAuthenticateResponse, bool) {
    if !matches!(session_auth, Auth::Authenticating { raw: false, .. }) {
        let r = SaslAuthenticateResponse::default()
            .with_error_code(ILLEGAL_SASL_STATE)
            .with_error_message(Some(StrBytes::from_static_str(
                "Unexpected SaslAuthenticate request",
            )));
        return (r, true);
    }
    match step(broker, session_auth, &req.auth_bytes) {
        Step::Continue(token) => (
            SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(token)),
            false,
        ),
        Step::Failed(msg) => (
            SaslAuthenticateResponse::default()
                .with_error_code(SASL_AUTHENTICATION_FAILED)
                .with_error_message(Some(StrBytes::from_string(msg))),
            true,
        ),
    }
}

/// One token of the exchange, for both framings.
pub(super) fn step(broker: &Broker, auth: &mut Auth, token: &[u8]) -> Step {
    let Auth::Authenticating {
        mechanism, scram, ..
    } = auth
    else {
        return Step::Failed("Unexpected SASL token".into());
    };
    let password_of = |user: &str| {
        broker
            .def
            .sasl_users
            .iter()
            .find(|u| u.name == user)
            .map(|u| u.password.clone())
    };
    let mechanism = *mechanism;
    if mechanism == "PLAIN" {
        let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
        if parts.len() == 3 {
            let user = String::from_utf8_lossy(parts[1]);
            let pass = String::from_utf8_lossy(parts[2]);
            if password_of(&user).is_some_and(|p| p == pass) {
                *auth = Auth::Done;
                return Step::Continue(Vec::new());
            }
        }
        return Step::Failed("Authentication failed: Invalid username or password".into());
    }
    let hash = if mechanism == "SCRAM-SHA-256" {
        Hash::Sha256
    } else {
        Hash::Sha512
    };
    let failed = || {
        Step::Failed(format!(
            "Authentication failed during authentication due to invalid credentials with \
             SASL mechanism {mechanism}"
        ))
    };
    match scram.take() {
        None => {
            let Ok(first) = std::str::from_utf8(token) else {
                return failed();
            };
            let Some(user) = scram_user(first) else {
                return failed();
            };
            let Some(password) = password_of(&user) else {
                return failed();
            };
            let salt =
                crate::fsutil::derived_uuid(&format!("{}/scram/{user}", broker.def.cluster_id));
            match Scram::server_first(hash, first, &password, &salt, &random_nonce()) {
                Some((state, reply)) => {
                    *scram = Some(state);
                    Step::Continue(reply.into_bytes())
                }
                None => failed(),
            }
        }
        Some(state) => match std::str::from_utf8(token)
            .ok()
            .and_then(|t| state.server_final(t))
        {
            Some(reply) => {
                *auth = Auth::Done;
                Step::Continue(reply.into_bytes())
            }
            None => failed(),
        },
    }
}

/// The user name in a client-first message, `=2C`/`=3D` decoded.
fn scram_user(client_first: &str) -> Option<String> {
    let bare = client_first_bare(client_first)?;
    let user = bare.split(',').find_map(|a| a.strip_prefix("n="))?;
    Some(user.replace("=2C", ",").replace("=3D", "="))
}

/// Strips the GS2 header (`n,,` or `n,a=authzid,`); channel binding is
/// not supported.
fn client_first_bare(client_first: &str) -> Option<&str> {
    let rest = client_first.strip_prefix("n,")?;
    let comma = rest.find(',')?;
    Some(&rest[comma + 1..])
}

fn random_nonce() -> String {
    let mut bytes = [0u8; 18];
    if getrandom::fill(&mut bytes).is_err() {
        let t = crate::fsutil::monotonic_ns().to_be_bytes();
        bytes[..8].copy_from_slice(&t);
    }
    base64_encode(&bytes)
}

#[derive(Clone, Copy, Debug)]
enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Hash::Sha256 => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            Hash::Sha512 => {
                let mut h = Sha512::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
        }
    }

    fn block_size(self) -> usize {
        match self {
            Hash::Sha256 => 64,
            Hash::Sha512 => 128,
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut k = if key.len() > self.block_size() {
            self.digest(&[key])
        } else {
            key.to_vec()
        };
        k.resize(self.block_size(), 0);
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = self.digest(&[&ipad, data]);
        self.digest(&[&opad, &inner])
    }

    /// PBKDF2 with HMAC, one output block ("Hi" in RFC 5802).
    fn hi(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut u = self.hmac(password, &[salt, &1u32.to_be_bytes()].concat());
        let mut out = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password, &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        out
    }
}

/// Server state between the first and the final SCRAM message.
#[derive(Debug)]
pub(super) struct Scram {
    hash: Hash,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    salted_password: Vec<u8>,
}

impl Scram {
    fn server_first(
        hash: Hash,
        client_first: &str,
        password: &str,
        salt: &[u8],
        server_nonce: &str,
    ) -> Option<(Scram, String)> {
        let bare = client_first_bare(client_first)?;
        let gs2_header = &client_first[..client_first.len() - bare.len()];
        let client_nonce = bare.split(',').find_map(|a| a.strip_prefix("r="))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={SCRAM_ITERATIONS}", base64_encode(salt));
        let state = Scram {
            hash,
            gs2_header: gs2_header.to_string(),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            salted_password: hash.hi(password.as_bytes(), salt, SCRAM_ITERATIONS),
        };
        Some((state, server_first))
    }

    /// Checks the client proof; returns `v=<server signature>`.
    fn server_final(&self, client_final: &str) -> Option<String> {
        let (without_proof, proof) = client_final.rsplit_once(",p=")?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if channel? != base64_encode(self.gs2_header.as_bytes()) || nonce? != self.nonce {
            return None;
        }
        let h = self.hash;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_key = h.hmac(&self.salted_password, b"Client Key");
        let stored_key = h.digest(&[&client_key]);
        let signature = h.hmac(&stored_key, auth_message.as_bytes());
        let proof = base64_decode(proof)?;
        if proof.len() != signature.len() {
            return None;
        }
        let recovered: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if h.digest(&[&recovered]) != stored_key {
            return None;
        }
        let server_key = h.hmac(&self.salted_password, b"Server Key");
        let server_signature = h.hmac(&server_key, auth_message.as_bytes());
        Some(format!("v={}", base64_encode(&server_signature)))
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        acc = (acc << 6) | B64.iter().position(|&x| x == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).unwrap(), s.as_bytes());
        }
        assert_eq!(base64_encode(b"n,,"), "biws");
    }

    /// The SCRAM-SHA-256 example exchange of RFC 7677, section 3.
    #[test]
    fn rfc7677_example() {
        let salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (state, first) = Scram::server_first(
            Hash::Sha256,
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "pencil",
            &salt,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = state
            .server_final(
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                 p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(fin, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert!(state
            .server_final(
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                 p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVA="
            )
            .is_none());
        assert_eq!(scram_user("n,,n=us=2Cer,r=x").as_deref(), Some("us,er"));
    }
}
