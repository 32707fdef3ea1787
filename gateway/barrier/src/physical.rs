use async_trait::async_trait;

use crate::Result;

/// A precondition of a [`Batch`]: the key must hold exactly `value`
/// (`None`: the key must be absent) when the batch is applied.
pub struct Check {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// One write of a [`Batch`].
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// An atomic unit of writes: either every check holds and every op is
/// applied durably, or nothing changes and the commit fails
/// ([`crate::Error::Conflict`] when a check failed).
#[derive(Default)]
pub struct Batch {
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty() && self.ops.is_empty()
    }
}

/// The physical store below the barrier. It sees only ciphertext (and the
/// plaintext seal configuration), keyed by storage paths.
///
/// Keys are UTF-8 strings without NUL bytes, ordered bytewise.
#[async_trait]
pub trait Physical: Send + Sync + 'static {
    /// A short name for status output, e.g. `file` or `inmem`.
    fn kind(&self) -> &'static str;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Keys that start with `prefix`, in order, beginning at `start`
    /// (inclusive; it must itself start with `prefix`), at most `limit`.
    async fn list(&self, prefix: &str, start: Option<&str>, limit: usize) -> Result<Vec<String>>;

    /// Applies the batch atomically and durably.
    async fn commit(&self, batch: Batch) -> Result<()>;

    /// Calls `sink` with every entry, in key order, from one consistent
    /// point in time, while writes go on. Blocking: call it off the async
    /// runtime's worker threads.
    fn export(&self, sink: &mut dyn FnMut(&str, &[u8]) -> Result<()>) -> Result<()>;

    /// Replaces every entry with `entries` in one transaction. If the
    /// iterator yields an error, nothing changes. Blocking.
    fn import(&self, entries: &mut dyn Iterator<Item = Result<(String, Vec<u8>)>>) -> Result<u64>;

    /// Inside [`crate::leader_work::scope`], on a store several nodes
    /// share: fails with [`crate::Error::Fenced`] unless this node still
    /// leads (asked of the store itself). Leader work calls it (through
    /// [`crate::leader_work::check`]) before an external call (a cloud
    /// write, a plugin revoke), so a deposed leader starts none. Stores one
    /// node owns always pass.
    async fn fence_check(&self) -> Result<()> {
        Ok(())
    }
}
