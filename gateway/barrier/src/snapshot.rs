//! The snapshot format: a consistent copy of every physical entry (all of
//! them ciphertext, but the seal configuration), so a snapshot is as safe at
//! rest as the store itself.
//!
//! `KBSNAP01`, then per entry `[key len u32 BE][key][value len u32 BE][value]`,
//! then `[0xFFFF_FFFF]` and the SHA-256 of everything before it.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use crate::physical::Physical;
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"KBSNAP01";
const END: u32 = u32::MAX;
/// Longest key or value a snapshot may hold (guards allocations on restore).
const MAX_FIELD: u32 = 64 << 20;

struct HashingWriter<'a> {
    inner: &'a mut dyn Write,
    hash: Sha256,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes every entry of `physical` to `out`, from one point in time.
/// Blocking. Returns the number of entries.
pub fn write(physical: &dyn Physical, out: &mut dyn Write) -> Result<u64> {
    let mut w = HashingWriter { inner: out, hash: Sha256::new() };
    w.write_all(MAGIC)?;
    let mut count = 0u64;
    physical.export(&mut |k, v| {
        w.write_all(&(k.len() as u32).to_be_bytes())?;
        w.write_all(k.as_bytes())?;
        w.write_all(&(v.len() as u32).to_be_bytes())?;
        w.write_all(v)?;
        count += 1;
        Ok(())
    })?;
    w.write_all(&END.to_be_bytes())?;
    let digest = w.hash.finalize_reset();
    w.inner.write_all(&digest)?;
    w.inner.flush()?;
    Ok(count)
}

/// Reads entries back. The last item is an error unless the trailer's
/// checksum matches, so a consumer that stops at the first error (such as
/// [`Physical::import`]) never applies a truncated or altered snapshot.
pub struct Reader<R: Read> {
    inner: R,
    hash: Sha256,
    started: bool,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader { inner, hash: Sha256::new(), started: false, done: false }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::Snapshot("the file ends early (truncated?)".into()),
            _ => Error::Io(e),
        })?;
        self.hash.update(&*buf);
        Ok(())
    }

    fn read_u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn read_field(&mut self, len: u32) -> Result<Vec<u8>> {
        if len > MAX_FIELD {
            return Err(Error::Snapshot(format!("an entry of {len} bytes is larger than allowed")));
        }
        let mut v = vec![0u8; len as usize];
        self.read_exact(&mut v)?;
        Ok(v)
    }

    fn next_entry(&mut self) -> Result<Option<(String, Vec<u8>)>> {
        if !self.started {
            self.started = true;
            let mut magic = [0u8; 8];
            self.read_exact(&mut magic)?;
            if &magic != MAGIC {
                return Err(Error::Snapshot("not a Keybridge snapshot (bad magic)".into()));
            }
        }
        let klen = self.read_u32()?;
        if klen == END {
            let expected = self.hash.finalize_reset();
            let mut got = [0u8; 32];
            self.inner
                .read_exact(&mut got)
                .map_err(|_| Error::Snapshot("the checksum is missing (truncated?)".into()))?;
            if got[..] != expected[..] {
                return Err(Error::Snapshot("checksum mismatch: the file was altered or damaged".into()));
            }
            let mut extra = [0u8; 1];
            if self.inner.read(&mut extra)? != 0 {
                return Err(Error::Snapshot("unexpected data after the checksum".into()));
            }
            return Ok(None);
        }
        let key = String::from_utf8(self.read_field(klen)?)
            .map_err(|_| Error::Snapshot("an entry key is not UTF-8".into()))?;
        let vlen = self.read_u32()?;
        let value = self.read_field(vlen)?;
        Ok(Some((key, value)))
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<(String, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
