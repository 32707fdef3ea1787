//! Splitting the root key into Shamir shares over GF(256) and combining
//! them again, with the `blahaj` crate (a maintained fork of `sharks`).
//! Shares travel as base64 of blahaj's encoding (x coordinate, then y).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use blahaj::{Share, Sharks};
use zeroize::Zeroizing;

use crate::{Error, Result};

pub const MAX_SHARES: u32 = 255;

pub fn validate(shares: u32, threshold: u32) -> Result<()> {
    if shares == 0 || shares > MAX_SHARES {
        return Err(Error::InvalidSealConfig(format!("key shares must be between 1 and {MAX_SHARES}, got {shares}")));
    }
    if threshold == 0 || threshold > shares {
        return Err(Error::InvalidSealConfig(format!(
            "key threshold must be between 1 and the number of shares ({shares}), got {threshold}"
        )));
    }
    if shares > 1 && threshold == 1 {
        return Err(Error::InvalidSealConfig(
            "a threshold of 1 with several shares makes every share the whole key; use threshold 2 or more, or 1 share"
                .into(),
        ));
    }
    Ok(())
}

/// Splits `secret` into `shares` base64 strings, any `threshold` of which
/// rebuild it. With a single share the share is the secret itself.
pub fn split(secret: &[u8], shares: u32, threshold: u32) -> Result<Vec<Zeroizing<String>>> {
    validate(shares, threshold)?;
    if shares == 1 {
        return Ok(vec![Zeroizing::new(STANDARD.encode(secret))]);
    }
    let dealer = Sharks(threshold as u8).dealer(secret);
    Ok(dealer
        .take(shares as usize)
        .map(|share| {
            let bytes = Zeroizing::new(Vec::from(&share));
            Zeroizing::new(STANDARD.encode(bytes.as_slice()))
        })
        .collect())
}

/// Decodes one base64 share into bytes.
pub fn decode_share(share: &str) -> Result<Zeroizing<Vec<u8>>> {
    let bytes = STANDARD
        .decode(share.trim())
        .map_err(|_| Error::InvalidKey("an unseal key must be the base64 text printed at init"))?;
    if bytes.is_empty() {
        return Err(Error::InvalidKey("the unseal key is empty"));
    }
    Ok(Zeroizing::new(bytes))
}

/// Rebuilds the secret from decoded shares (already at least `threshold`).
pub fn combine(shares: &[Zeroizing<Vec<u8>>], total_shares: u32, threshold: u32) -> Result<Zeroizing<Vec<u8>>> {
    if total_shares == 1 {
        return shares.first().cloned().ok_or(Error::WrongKeys);
    }
    let parsed: Vec<Share> = shares
        .iter()
        .map(|s| Share::try_from(s.as_slice()).map_err(|_| Error::InvalidKey("the unseal key is not a share")))
        .collect::<Result<_>>()?;
    Sharks(threshold as u8).recover(parsed.as_slice()).map(Zeroizing::new).map_err(|_| Error::WrongKeys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_recovers() {
        let secret = [7u8; 32];
        let shares = split(&secret, 5, 3).unwrap();
        let decoded: Vec<_> = shares.iter().map(|s| decode_share(s).unwrap()).collect();
        let pick = vec![decoded[4].clone(), decoded[0].clone(), decoded[2].clone()];
        assert_eq!(combine(&pick, 5, 3).unwrap().as_slice(), &secret);
        // Fewer than the threshold cannot recover the secret.
        let few = vec![decoded[0].clone(), decoded[1].clone()];
        assert_ne!(combine(&few, 5, 3).map(|s| s.to_vec()).unwrap_or_default(), secret.to_vec());
    }

    #[test]
    fn bad_parameters_are_refused() {
        let refused = |shares, threshold, text: &str| match split(&[1; 32], shares, threshold) {
            Err(Error::InvalidSealConfig(m)) => assert!(m.contains(text), "{m}"),
            Err(e) => panic!("{shares}/{threshold}: {e}"),
            Ok(_) => panic!("{shares}/{threshold} was accepted"),
        };
        refused(0, 0, "key shares must be between 1");
        refused(3, 4, "key threshold must be between 1 and the number of shares (3)");
        refused(3, 1, "a threshold of 1 with several shares");
        refused(256, 2, "key shares must be between 1");
        assert_eq!(split(&[1; 32], 1, 1).unwrap().len(), 1);
    }
}
