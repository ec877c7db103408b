//! Random names: temporary files, snapshot ids, generations.

use kafka_snapshot_model::error::{Error, Result};

/// `bytes` random bytes from the OS, hex; `what` names them in the error.
pub fn random_hex(bytes: usize, what: &str) -> Result<String> {
    let mut rnd = vec![0u8; bytes];
    getrandom::fill(&mut rnd).map_err(|e| {
        Error::io(
            format!("reading the OS random source for {what}"),
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(hex::encode(rnd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_the_asked_length_and_not_repeated() {
        let a = random_hex(8, "a test").unwrap();
        let b = random_hex(8, "a test").unwrap();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
