//! Revocation: the list of revoked certificates and the signed CRL built
//! from it, kept together in one stored value (`crl`) so every node serves
//! the same CRL. Each entry is also stored on its own (`revoked/<serial>`,
//! written first): two nodes revoking at the same moment may each rewrite
//! `crl` without the other's entry, and the leading node's periodic pass
//! puts any such entry back (and rebuilds the CRL) within seconds.
//!
//! The value grows with the revoked certificates not yet tidied (about 170
//! bytes each: the entry, and its part of the CRL in base64); a revocation
//! that would take it past [`MAX_REVOKED`] entries is refused with a
//! message that says to run `tidy` (which drops the expired ones); the
//! periodic pass may put back accepted revocations past it, and drops
//! entries once a CRL signed after their certificate's expiry listed
//! them. At the
//! bound the value is about 870 KB (under [`MAX_VALUE_BYTES`], which is
//! checked before every write) and the CRL itself about 200 KB.

use base64::Engine as _;
use keybridge_core::plugins::EngineError;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};

use crate::ca::{Ca, time_at};

/// The most unexpired revoked certificates a mount's CRL holds.
pub const MAX_REVOKED: usize = 5_000;
/// The largest `crl` value written; past it a revocation is refused (the
/// entry bound keeps it well under).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The CRL's validity when `config/crl` does not say (Vault's default).
pub const DEFAULT_EXPIRY: u64 = 72 * 3600;

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// Colon hex, as `serial_number` everywhere.
    pub serial: String,
    pub revoked_at: i64,
    /// The certificate's notAfter: past it (and `tidy`'s safety buffer),
    /// the entry can go.
    pub not_after: i64,
}

/// The stored `crl` value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlState {
    /// The last CRL's number (RFC 5280 cRLNumber); 0: none built yet.
    pub number: u64,
    pub this_update: i64,
    pub next_update: i64,
    /// The signed CRL, DER, base64.
    pub der: String,
    pub revoked: Vec<Revoked>,
}

impl CrlState {
    pub fn der_bytes(&self) -> Result<Vec<u8>, EngineError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.der)
            .map_err(|_| EngineError::Internal("the stored CRL is unreadable".into()))
    }

    pub fn find(&self, serial: &str) -> Option<&Revoked> {
        self.revoked.iter().find(|r| r.serial == serial)
    }

    /// Adds an entry, refusing past [`MAX_REVOKED`].
    pub fn add(&mut self, entry: Revoked) -> Result<(), EngineError> {
        if self.revoked.len() >= MAX_REVOKED {
            return Err(EngineError::Exhausted(format!(
                "this mount's CRL holds {MAX_REVOKED} unexpired revoked certificates, its limit; run `keybridge write <mount>/tidy tidy_revoked_certs=true` to drop expired ones, or issue shorter-lived certificates"
            )));
        }
        self.revoked.push(entry);
        Ok(())
    }

    /// Puts back an entry accepted already (stored on its own under
    /// `revoked/`), past [`MAX_REVOKED`] if need be: refusing it would
    /// leave the CRL without a revocation that was confirmed. The byte
    /// bound ([`MAX_VALUE_BYTES`]) still applies when the value is written.
    pub fn restore(&mut self, entry: Revoked) {
        self.revoked.push(entry);
    }

    /// Drops the entries whose certificate expired before this CRL was
    /// signed (each was listed at least once after its expiry, as RFC 5280
    /// asks) and returns their serials.
    pub fn drop_expired(&mut self) -> Vec<String> {
        let listed_at = self.this_update;
        let mut gone = Vec::new();
        self.revoked.retain(|r| {
            let keep = r.not_after >= listed_at;
            if !keep {
                gone.push(r.serial.clone());
            }
            keep
        });
        gone
    }

    /// Whether the CRL last built names `ca`'s subject, byte for byte, as
    /// its issuer (webpki matches a CRL to its CA by those bytes).
    pub fn issuer_matches(&self, ca: &Ca) -> bool {
        use x509_parser::prelude::FromDer as _;
        let Ok(der) = self.der_bytes() else { return false };
        x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .is_ok_and(|(_, parsed)| parsed.issuer().as_raw() == ca.facts.subject_raw.as_slice())
    }

    /// Signs a new CRL (the next number) of the entries, valid `expiry`
    /// seconds from `now`.
    pub fn rebuild(&mut self, ca: &Ca, now: i64, expiry: u64) -> Result<(), EngineError> {
        let next = now
            .checked_add(i64::try_from(expiry).unwrap_or(i64::MAX))
            .ok_or_else(|| EngineError::InvalidInput("the CRL expiry is too long".into()))?;
        let number = self.number.checked_add(1).ok_or_else(|| EngineError::Internal("CRL number overflow".into()))?;
        let mut revoked_certs = Vec::with_capacity(self.revoked.len());
        for r in &self.revoked {
            let serial = crate::ca::parse_serial(&r.serial).map_err(EngineError::Internal)?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: time_at(r.revoked_at)?,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let ski = {
            use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};
            let (_, cert) = X509Certificate::from_der(&ca.der)
                .map_err(|_| EngineError::Internal("the CA certificate is unreadable".into()))?;
            cert.iter_extensions().find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
        };
        let params = CertificateRevocationListParams {
            this_update: time_at(now)?,
            next_update: time_at(next)?,
            crl_number: SerialNumber::from_slice(&minimal(number)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: ski.map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified),
        };
        let crl =
            params.signed_by(&ca.issuer()?).map_err(|e| EngineError::Internal(format!("signing the CRL: {e}")))?;
        self.der = base64::engine::general_purpose::STANDARD.encode(crl.der());
        self.number = number;
        self.this_update = now;
        self.next_update = next;
        Ok(())
    }
}

/// `n` big-endian without leading zero bytes (at least one byte).
fn minimal(n: u64) -> Vec<u8> {
    let b = n.to_be_bytes();
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len() - 1);
    b[start..].to_vec()
}

/// `config/crl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// Seconds a CRL is valid (its nextUpdate).
    pub expiry: u64,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig { expiry: DEFAULT_EXPIRY }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_are_minimal_big_endian() {
        assert_eq!(minimal(0), vec![0]);
        assert_eq!(minimal(1), vec![1]);
        assert_eq!(minimal(256), vec![1, 0]);
    }

    #[test]
    fn the_revocation_list_is_bounded() {
        let mut s = CrlState::default();
        for _ in 0..MAX_REVOKED {
            let serial = crate::ca::serial_string(&crate::ca::new_serial());
            s.add(Revoked { serial, revoked_at: 1_800_000_000, not_after: 1_900_000_000 }).unwrap();
        }
        let e = s.add(Revoked { serial: "ff".into(), revoked_at: 1, not_after: 2 }).unwrap_err();
        assert!(matches!(&e, EngineError::Exhausted(m) if m.contains("tidy")), "{e}");
        // The stored value at the bound stays under MAX_VALUE_BYTES with the
        // CRL's own bytes (about 42 per entry, base64: 56) beside it.
        let json = serde_json::to_vec(&s).unwrap();
        assert!(json.len() + MAX_REVOKED * 56 < MAX_VALUE_BYTES, "{}", json.len());
    }
}
