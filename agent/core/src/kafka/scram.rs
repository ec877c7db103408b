//! The client side of SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677)
//! as Kafka uses it: no channel binding (`n,,`), no authorization id.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::digest::core_api::BlockSizeUser;
use hmac::digest::Digest;
use hmac::{Mac, SimpleHmac};
use sha2::{Sha256, Sha512};

/// Kafka refuses fewer (and so do we: a server asking for fewer is not
/// one to send a proof to).
const MIN_ITERATIONS: u32 = 4096;
/// More than this is not a real server (and would take minutes).
const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

/// One exchange: [`ScramClient::new`] gives the client-first message,
/// [`ScramClient::client_final`] answers the server-first one, and
/// [`ScramClient::verify_server_final`] checks that the server knew the
/// password too.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_first_bare: String,
    nonce: String,
    /// Set by `client_final`: the server signature to expect.
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// `nonce` must be fresh and random for every exchange.
    pub fn new(hash: ScramHash, user: &str, password: &str, nonce: &str) -> ScramClient {
        let name = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            hash,
            password: password.to_string(),
            client_first_bare: format!("n={name},r={nonce}"),
            nonce: nonce.to_string(),
            expected_server_signature: None,
        }
    }

    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client-final message (with the proof) for `server_first`.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        if let Some(e) = server_first.strip_prefix("e=") {
            return Err(format!("the server refused: {e}"));
        }
        let attr = |name: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(name))
                .ok_or_else(|| format!("server-first message without {name}"))
        };
        let nonce = attr("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the server's nonce does not extend ours".into());
        }
        let salt = B64
            .decode(attr("s=")?)
            .map_err(|e| format!("salt is not base64: {e}"))?;
        let iterations: u32 = attr("i=")?
            .parse()
            .map_err(|_| "iteration count is not a number".to_string())?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "iteration count {iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            ));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let (proof, server_signature) = match self.hash {
            ScramHash::Sha256 => {
                keys::<Sha256>(self.password.as_bytes(), &salt, iterations, &auth_message)
            }
            ScramHash::Sha512 => {
                keys::<Sha512>(self.password.as_bytes(), &salt, iterations, &auth_message)
            }
        };
        self.expected_server_signature = Some(server_signature);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message (`v=<server signature>`).
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), String> {
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(format!("the server refused: {e}"));
        }
        let expected = self
            .expected_server_signature
            .as_ref()
            .ok_or("server-final message before client-final")?;
        let got = server_final
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or("server-final message without a signature")?;
        if &got != expected {
            return Err("the server's signature is wrong: it does not know the password".into());
        }
        Ok(())
    }
}

/// (ClientProof, ServerSignature) of RFC 5802, section 3.
fn keys<D: Digest + BlockSizeUser + Clone>(
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    auth_message: &str,
) -> (Vec<u8>, Vec<u8>) {
    let salted = hi::<D>(password, salt, iterations);
    let client_key = hmac::<D>(&salted, b"Client Key");
    let stored_key = D::digest(&client_key).to_vec();
    let client_signature = hmac::<D>(&stored_key, auth_message.as_bytes());
    let proof = client_key
        .iter()
        .zip(&client_signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_key = hmac::<D>(&salted, b"Server Key");
    (proof, hmac::<D>(&server_key, auth_message.as_bytes()))
}

fn hmac<D: Digest + BlockSizeUser + Clone>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <SimpleHmac<D> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// Hi(): PBKDF2 with the HMAC as PRF and one block of output.
fn hi<D: Digest + BlockSizeUser + Clone>(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut u = hmac::<D>(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac::<D>(password, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example exchange of RFC 7677, section 3.
    #[test]
    fn rfc7677_example() {
        let mut c = ScramClient::new(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let fin = c
            .client_final(
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                 s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            )
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(c
            .verify_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G5=")
            .is_err());
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let mut c = ScramClient::new(ScramHash::Sha512, "a,b=c", "pw", "abc");
        assert_eq!(c.client_first(), "n,,n=a=2Cb=3Dc,r=abc");
        for bad in [
            "r=xyz1,s=c2FsdA==,i=4096", // nonce not ours
            "r=abc,s=c2FsdA==,i=4096",  // nonce not extended
            "r=abcd,s=c2FsdA==,i=1",    // too few iterations
            "r=abcd,s=***,i=4096",      // salt not base64
            "e=unknown-user",           // server error
            "r=abcd,i=4096",            // no salt
        ] {
            assert!(c.client_final(bad).is_err(), "{bad}");
        }
        assert!(c.verify_server_final("v=AAAA").is_err());
    }
}
