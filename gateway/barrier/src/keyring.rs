//! Key material: the root key and the keyring of data-encryption key terms.
//!
//! Ciphertext layout: `[version 0x01][term: u32 BE][nonce: 12 bytes][AES-256-GCM
//! ciphertext and tag]`, with the storage key as associated data, so an entry
//! copied to another key fails to decrypt.

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

use crate::{Error, Result};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;
const TAG: usize = 16;
pub(crate) const KEY_LEN: usize = 32;
/// The term under which the keyring itself is encrypted with the root key.
const ROOT_TERM: u32 = 0;

/// The root key: decrypts the keyring. Split into Shamir shares at init.
/// Zeroed on drop; no `Debug`.
pub struct RootKey(Zeroizing<[u8; KEY_LEN]>);

impl RootKey {
    pub(crate) fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        RootKey(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes.try_into().map_err(|_| Error::InvalidKey("a root key is 32 bytes"))?;
        Ok(RootKey(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }

    pub(crate) fn seal_keyring(&self, keyring: &Keyring, storage_key: &str) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new_from_slice(self.0.as_ref()).map_err(|_| Error::InvalidKey("bad length"))?;
        encrypt_with(&cipher, ROOT_TERM, storage_key, &keyring.encode())
    }

    pub(crate) fn open_keyring(&self, sealed: &[u8], storage_key: &str) -> Result<Keyring> {
        let cipher = Aes256Gcm::new_from_slice(self.0.as_ref()).map_err(|_| Error::InvalidKey("bad length"))?;
        let (term, _) = parse_header(sealed, storage_key)?;
        if term != ROOT_TERM {
            return Err(Error::Decrypt { key: storage_key.into() });
        }
        let plain = decrypt_with(&cipher, sealed, storage_key).map_err(|_| Error::WrongKeys)?;
        Keyring::decode(&plain)
    }
}

struct Term {
    term: u32,
    installed_unix: u64,
    key: Zeroizing<[u8; KEY_LEN]>,
    cipher: Aes256Gcm,
}

/// Every data-encryption key term; the newest is the active one.
pub struct Keyring {
    terms: Vec<Term>,
}

impl Keyring {
    pub(crate) fn new(now_unix: u64) -> Self {
        let mut ring = Keyring { terms: Vec::new() };
        ring.add_term(now_unix);
        ring
    }

    /// A copy with one more term, which becomes active.
    pub(crate) fn rotated(&self, now_unix: u64) -> Self {
        let mut ring =
            Keyring { terms: self.terms.iter().map(|t| Term::new(t.term, t.installed_unix, *t.key)).collect() };
        ring.add_term(now_unix);
        ring
    }

    fn add_term(&mut self, now_unix: u64) {
        let next = self.terms.last().map_or(1, |t| t.term + 1);
        let mut key = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        self.terms.push(Term::new(next, now_unix, key));
        key.zeroize();
    }

    pub(crate) fn active_term(&self) -> (u32, u64) {
        let t = self.terms.last().expect("a keyring always holds a term");
        (t.term, t.installed_unix)
    }

    pub(crate) fn term_count(&self) -> usize {
        self.terms.len()
    }

    pub(crate) fn encrypt(&self, storage_key: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let t = self.terms.last().expect("a keyring always holds a term");
        encrypt_with(&t.cipher, t.term, storage_key, plaintext)
    }

    fn term(&self, storage_key: &str, term: u32) -> Result<&Term> {
        self.terms
            .iter()
            .rev()
            .find(|t| t.term == term)
            .ok_or_else(|| Error::UnknownTerm { key: storage_key.into(), term })
    }

    pub(crate) fn decrypt(&self, storage_key: &str, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let (term, _) = parse_header(ciphertext, storage_key)?;
        decrypt_with(&self.term(storage_key, term)?.cipher, ciphertext, storage_key)
    }

    /// Like [`Keyring::decrypt`], but decrypts the buffer in place (no
    /// second allocation or copy: the read path's common case).
    pub(crate) fn decrypt_owned(&self, storage_key: &str, mut buf: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
        let (term, nonce) = parse_header(&buf, storage_key)?;
        let t = self.term(storage_key, term)?;
        let tag_at = buf.len() - TAG;
        let tag = aes_gcm::Tag::clone_from_slice(&buf[tag_at..]);
        t.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                storage_key.as_bytes(),
                &mut buf[HEADER..tag_at],
                &tag,
            )
            .map_err(|_| Error::Decrypt { key: storage_key.into() })?;
        buf.truncate(tag_at);
        buf.drain(..HEADER);
        Ok(Zeroizing::new(buf))
    }

    /// `[count u32][term u32, installed u64, key 32 bytes]*`, zeroed on drop.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(4 + self.terms.len() * (12 + KEY_LEN)));
        out.extend_from_slice(&(self.terms.len() as u32).to_be_bytes());
        for t in &self.terms {
            out.extend_from_slice(&t.term.to_be_bytes());
            out.extend_from_slice(&t.installed_unix.to_be_bytes());
            out.extend_from_slice(t.key.as_ref());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::Decrypt { key: "core/keyring".into() };
        let count = u32::from_be_bytes(bytes.get(..4).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?) as usize;
        let rec = 12 + KEY_LEN;
        if count == 0 || bytes.len() != 4 + count * rec {
            return Err(corrupt());
        }
        let terms = bytes[4..]
            .chunks_exact(rec)
            .map(|c| {
                let term = u32::from_be_bytes(c[..4].try_into().expect("4 bytes"));
                let installed = u64::from_be_bytes(c[4..12].try_into().expect("8 bytes"));
                let key: [u8; KEY_LEN] = c[12..].try_into().expect("32 bytes");
                Term::new(term, installed, key)
            })
            .collect();
        Ok(Keyring { terms })
    }
}

impl Term {
    fn new(term: u32, installed_unix: u64, key: [u8; KEY_LEN]) -> Self {
        let cipher = Aes256Gcm::new_from_slice(&key).expect("32-byte key");
        Term { term, installed_unix, key: Zeroizing::new(key), cipher }
    }
}

fn encrypt_with(cipher: &Aes256Gcm, term: u32, storage_key: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: storage_key.as_bytes() })
        .map_err(|_| Error::Decrypt { key: storage_key.into() })?;
    let mut out = Vec::with_capacity(HEADER + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&term.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn parse_header(ciphertext: &[u8], storage_key: &str) -> Result<(u32, [u8; 12])> {
    if ciphertext.len() < HEADER + TAG || ciphertext[0] != VERSION {
        return Err(Error::Decrypt { key: storage_key.into() });
    }
    let term = u32::from_be_bytes(ciphertext[1..5].try_into().expect("4 bytes"));
    let nonce: [u8; 12] = ciphertext[5..HEADER].try_into().expect("12 bytes");
    Ok((term, nonce))
}

fn decrypt_with(cipher: &Aes256Gcm, ciphertext: &[u8], storage_key: &str) -> Result<Zeroizing<Vec<u8>>> {
    let (_, nonce) = parse_header(ciphertext, storage_key)?;
    cipher
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ciphertext[HEADER..], aad: storage_key.as_bytes() })
        .map(Zeroizing::new)
        .map_err(|_| Error::Decrypt { key: storage_key.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding_to_the_storage_key() {
        let ring = Keyring::new(1);
        let ct = ring.encrypt("a/b", b"hunter2").unwrap();
        assert_eq!(ring.decrypt("a/b", &ct).unwrap().as_slice(), b"hunter2");
        assert_eq!(ring.decrypt_owned("a/b", ct.clone()).unwrap().as_slice(), b"hunter2");
        assert!(matches!(ring.decrypt_owned("a/c", ct.clone()), Err(Error::Decrypt { .. })));
        assert!(matches!(ring.decrypt("a/c", &ct), Err(Error::Decrypt { .. })));
        let mut tampered = ct.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(matches!(ring.decrypt("a/b", &tampered), Err(Error::Decrypt { key }) if key == "a/b"));
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
    }

    #[test]
    fn rotation_adds_a_term_and_old_data_stays_readable() {
        let ring = Keyring::new(1);
        let old = ring.encrypt("k", b"v1").unwrap();
        let ring2 = ring.rotated(2);
        assert_eq!(ring2.active_term().0, 2);
        let new = ring2.encrypt("k", b"v2").unwrap();
        assert_eq!(u32::from_be_bytes(new[1..5].try_into().unwrap()), 2);
        assert_eq!(ring2.decrypt("k", &old).unwrap().as_slice(), b"v1");
        assert!(matches!(ring.decrypt("k", &new), Err(Error::UnknownTerm { term: 2, .. })));
    }

    #[test]
    fn keyring_sealed_under_root_key() {
        let root = RootKey::generate();
        let ring = Keyring::new(5).rotated(6);
        let sealed = root.seal_keyring(&ring, "core/keyring").unwrap();
        let opened = root.open_keyring(&sealed, "core/keyring").unwrap();
        assert_eq!(opened.term_count(), 2);
        let other = RootKey::generate();
        assert!(matches!(other.open_keyring(&sealed, "core/keyring"), Err(Error::WrongKeys)));
    }
}
