//! Coherence with other nodes sharing the store: what this node keeps in
//! memory (caches, tables, the keyring) is dropped or read again when the
//! store says another node committed to the keys it came from. The store
//! tells (PostgreSQL's change feed); the server hands it here.

use std::sync::Arc;

use keybridge_barrier::KEYRING_KEY;

use crate::Result;
use crate::core::{Core, MOUNTS_KEY, Unsealed};
use crate::mounts::MountTable;

/// What another node committed to.
pub enum Changed<'a> {
    /// These storage keys.
    Keys(&'a [String]),
    /// Anything (the store was replaced, or the node lost track).
    Everything,
}

impl Changed<'_> {
    /// The auth methods' table or a method's config.
    fn auth(&self) -> bool {
        self.exact(crate::auth_methods::AUTH_TABLE_KEY)
            || matches!(self, Changed::Everything)
            || self.keys_under("auth/").any(|k| k.ends_with("/config"))
    }

    /// Touches what the lifecycle lock (`admin`) guards: the keyring, the
    /// mount table, the auth methods, the audit devices.
    fn guarded(&self) -> bool {
        self.exact(KEYRING_KEY) || self.exact(MOUNTS_KEY) || self.auth() || self.exact(keybridge_audit::DEVICES_KEY)
    }

    fn exact(&self, key: &str) -> bool {
        match self {
            Changed::Everything => true,
            Changed::Keys(keys) => keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok(),
        }
    }

    fn under(&self, prefix: &str) -> bool {
        match self {
            Changed::Everything => true,
            Changed::Keys(keys) => keys.iter().any(|k| k.starts_with(prefix)),
        }
    }

    fn keys_under<'k>(&'k self, prefix: &'k str) -> impl Iterator<Item = &'k str> + 'k {
        let keys: &[String] = match self {
            Changed::Everything => &[],
            Changed::Keys(keys) => keys,
        };
        keys.iter().filter_map(move |k| k.strip_prefix(prefix))
    }
}

impl Core {
    /// A commit to `changed` (keys sorted; another node's, or this node's
    /// own, told again): drops or reloads what this node holds of them.
    /// Runs before the store counts its feed as followed, so a revoked
    /// token or a changed policy stops working here once this returns.
    /// Answers whether everything could be applied (the store tells
    /// everything again until it could). A keyring this node's root key no
    /// longer opens (a rekey elsewhere) seals the node.
    pub async fn changed_elsewhere(&self, changed: Changed<'_>) -> bool {
        // Counted even while sealed: an unseal that was reading the store
        // meanwhile reads it again (see `Core::load`).
        self.remote_changes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        // Tokens and policies first, with no lock: they are never held up
        // behind a long mount removal holding the lifecycle lock.
        self.apply_unguarded(&changed);
        if !changed.guarded() {
            return true;
        }
        let _admin = self.admin.lock().await;
        self.apply_guarded(&changed).await
    }

    /// This node's own commit to `keys` (sorted), told again by the feed:
    /// the caches no lock guards drop them (a commit may have landed while
    /// its caller saw an error, and skipped its own invalidation). The
    /// tables the lifecycle lock guards were set by the change itself, and a
    /// change refused because they were stale reads them again.
    pub fn changed_here(&self, keys: &[String]) -> bool {
        self.apply_unguarded(&Changed::Keys(keys));
        true
    }

    /// As [`Core::changed_elsewhere`], with `admin` held by the caller.
    pub(crate) async fn apply_changes(&self, changed: Changed<'_>) -> bool {
        self.apply_unguarded(&changed);
        self.apply_guarded(&changed).await
    }

    /// What needs no lock: caches dropped, workers woken.
    fn apply_unguarded(&self, changed: &Changed<'_>) {
        let Ok(loaded) = self.unsealed() else { return };
        if matches!(changed, Changed::Everything) {
            loaded.tokens.clear();
        } else {
            loaded.tokens.remove(changed.keys_under(crate::tokens::ENTRY_PREFIX));
        }
        if changed.under(crate::policies::POLICY_PREFIX) {
            loaded.acls.clear();
        }
        if changed.under(crate::plugins::CATALOG) {
            // A component registered again: engines are built anew on
            // next use (calls in flight keep theirs).
            loaded.dropped.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            loaded.engines.write().unwrap_or_else(|p| p.into_inner()).clear();
        }
        if changed.under(keybridge_reconciler::RULES) {
            self.sync.reload();
        } else if changed.under("sync/") {
            self.sync.wake();
        }
        if changed.under("core/lease") {
            self.leases.changed.notify_one();
        }
    }

    /// What the lifecycle lock guards: the keyring, the mount table, the
    /// auth methods, the audit devices, read again. Whether all of it was.
    async fn apply_guarded(&self, changed: &Changed<'_>) -> bool {
        let Ok(loaded) = self.unsealed() else { return true };
        let mut ok = true;
        if changed.exact(KEYRING_KEY) {
            match self.barrier.reload_keyring().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(
                        "another node replaced the root key (a rekey): sealing; unseal this node with the new keys"
                    );
                    self.unload().await;
                    self.barrier.seal();
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the keyring another node changed");
                    ok = false;
                }
            }
        }
        if changed.exact(MOUNTS_KEY)
            && let Err(e) = self.reload_mounts(&loaded).await
        {
            tracing::warn!(error = %e, "cannot read the mount table another node changed");
            ok = false;
        }
        if changed.auth()
            && let Err(e) = self.reload_auth(&loaded, changed).await
        {
            tracing::warn!(error = %e, "cannot read the auth methods another node changed");
            ok = false;
        }
        if changed.exact(keybridge_audit::DEVICES_KEY)
            && let Err(e) = loaded.audit.refresh().await
        {
            tracing::error!(error = %e, "cannot start the audit devices another node changed");
            ok = false;
        }
        ok
    }

    /// Reads the mount table again.
    async fn reload_mounts(&self, loaded: &Arc<Unsealed>) -> Result<()> {
        let (table, stamp) = self.read_mounts().await?;
        if loaded.mounts.read().unwrap_or_else(|p| p.into_inner()).1 != stamp {
            self.install_mounts(loaded, table, stamp);
        }
        Ok(())
    }

    /// Puts a mount table read from the store in memory; mounts whose entry
    /// changed (a tune, an upgrade) or went have their clients and engines
    /// dropped.
    pub(crate) fn install_mounts(&self, loaded: &Unsealed, table: MountTable, stamp: keybridge_barrier::Stamp) {
        let old = loaded.table();
        let stale: Vec<String> =
            old.entries.iter().filter(|o| !table.entries.iter().any(|n| n == *o)).map(|o| o.id.clone()).collect();
        *loaded.mounts.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(table), stamp);
        loaded.dropped.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        for id in &stale {
            loaded.clouds.write().unwrap_or_else(|p| p.into_inner()).remove(id);
            loaded.engines.write().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
    }

    /// Reads the auth methods' table again and drops the parsed configs
    /// another node changed.
    async fn reload_auth(&self, loaded: &Arc<Unsealed>, changed: &Changed<'_>) -> Result<()> {
        let (table, stamp) = crate::auth_methods::load_table(self).await?;
        let mut st = loaded.auth.write().unwrap_or_else(|p| p.into_inner());
        let everything = matches!(changed, Changed::Everything);
        st.parsed.retain(|id, _| !everything && !changed.exact(&format!("auth/{id}/config")));
        st.install(table, stamp);
        st.dropped = st.dropped.wrapping_add(1);
        Ok(())
    }
}
