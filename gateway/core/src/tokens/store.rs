//! The token store: creating, looking up, renewing and revoking tokens
//! (revocation takes a token's children with it), and counting uses.

use keybridge_barrier::WriteBatch;
use zeroize::Zeroizing;

use crate::audit::Caller;
use crate::core::{Capability, Core, Unsealed, encode_json};
use crate::policies::{DEFAULT_POLICY, ROOT_POLICY, normalize_name};
use crate::tokens as token;
use crate::{Error, Result};

/// Default and maximum token lifetime, as Vault's defaults: 768 hours.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 768 * 3600;

/// What `create_token` is asked for.
pub struct TokenRequest {
    pub policies: Vec<String>,
    /// 0: the default (768 hours).
    pub ttl_secs: u64,
    /// 0: the default (768 hours). Renewals never reach past it.
    pub max_ttl_secs: u64,
    pub renewable: bool,
    /// Requests the token may make before it is revoked; 0: unlimited.
    pub num_uses: u32,
    pub display_name: String,
    pub no_default_policy: bool,
}

impl Default for TokenRequest {
    fn default() -> Self {
        TokenRequest {
            policies: Vec::new(),
            ttl_secs: 0,
            max_ttl_secs: 0,
            renewable: true,
            num_uses: 0,
            display_name: String::new(),
            no_default_policy: false,
        }
    }
}

impl Core {
    /// Creates a token. A non-root caller can only give policies it holds
    /// and a lifetime that ends no later than its own.
    pub async fn create_token(
        &self,
        caller: &Caller,
        req: TokenRequest,
    ) -> Result<(Zeroizing<String>, crate::tokens::TokenEntry)> {
        use crate::tokens::TokenEntry;
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "auth/token/create", Capability::Update).await?;
        let entry: &crate::tokens::TokenEntry = &id;
        if entry.num_uses > 0 {
            // As Vault: a use-limited token cannot multiply its uses.
            return Err(Error::PermissionDenied("a use-limited token cannot create child tokens".into()));
        }
        let mut policies = req.policies.iter().map(|p| normalize_name(p)).collect::<Result<Vec<_>>>()?;
        if !req.no_default_policy && !policies.iter().any(|p| p == DEFAULT_POLICY || p == ROOT_POLICY) {
            policies.push(DEFAULT_POLICY.into());
        }
        policies.sort();
        policies.dedup();
        if policies.is_empty() {
            return Err(Error::InvalidArgument("a token needs at least one policy".into()));
        }
        if !id.is_root()
            && let Some(p) = policies.iter().find(|p| !id.policies.contains(p) && p.as_str() != DEFAULT_POLICY)
        {
            return Err(Error::PermissionDenied(format!(
                "a token can only be given policies its creator holds; the caller does not hold {p:?}"
            )));
        }
        let max_ttl = if req.max_ttl_secs == 0 { DEFAULT_TOKEN_TTL_SECS } else { req.max_ttl_secs };
        let ttl = if req.ttl_secs == 0 { DEFAULT_TOKEN_TTL_SECS.min(max_ttl) } else { req.ttl_secs };
        if max_ttl > DEFAULT_TOKEN_TTL_SECS || ttl > max_ttl {
            return Err(Error::InvalidArgument(format!(
                "ttl {ttl}s must not exceed max_ttl {max_ttl}s, which must not exceed {DEFAULT_TOKEN_TTL_SECS}s (768h)"
            )));
        }
        let now = crate::Timestamp::now();
        let after = |secs: u64| now.plus_secs(secs);
        let mut max_expires = after(max_ttl);
        if let Some(parent) = id.expires {
            max_expires = max_expires.min(parent);
        }
        let expires = after(ttl).min(max_expires);
        let display_name = if req.display_name.is_empty() { "token".to_string() } else { req.display_name };
        if display_name.len() > 128 || display_name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(
                "display_name must be at most 128 characters, no control characters".into(),
            ));
        }
        let loaded = self.unsealed()?;
        let entry = TokenEntry {
            hash: String::new(),
            policies,
            display_name,
            created: now,
            expires: Some(expires),
            parent: Some(id.hash.clone()),
            ttl_secs: ttl,
            max_expires: Some(max_expires),
            renewable: req.renewable,
            num_uses: req.num_uses,
            accessor: String::new(),
            meta: Default::default(),
            revoking: false,
        };
        self.store_new_token(&loaded, entry, Vec::new(), None).await
    }

    /// Generates a token for `entry` (its hash and accessor are filled in)
    /// and writes it with its accessor, its parent's child marker, and
    /// `markers`, in one write. A parent must still exist when the child is
    /// written, so a concurrent revocation of the parent cannot miss it.
    pub(crate) async fn store_new_token(
        &self,
        loaded: &Unsealed,
        mut entry: crate::tokens::TokenEntry,
        markers: Vec<String>,
        also_expect: Option<(&str, &keybridge_barrier::Stamp)>,
    ) -> Result<(Zeroizing<String>, crate::tokens::TokenEntry)> {
        use crate::tokens as token;
        let new_token = token::generate_token();
        let (key, hash) = loaded.salt.entry_key(&new_token);
        entry.hash = hash;
        entry.accessor = token::generate_accessor();
        let mut batch = WriteBatch::new();
        if let Some(parent) = &entry.parent {
            let parent_key = token::entry_key_of(parent);
            let (found, parent_stamp) = self.barrier.get_stamped(&parent_key).await?;
            let parent_entry: Option<crate::tokens::TokenEntry> =
                found.and_then(|raw| serde_json::from_slice(&raw).ok());
            // Gone, or being revoked with its tree: no child may appear
            // under it (the write below is conditioned on this read).
            if parent_entry.is_none_or(|p| p.revoking) {
                return Err(Error::Unauthenticated);
            }
            batch
                .expect(parent_key, &parent_stamp)
                .put(format!("{}{parent}/{}", token::PARENT_PREFIX, entry.hash), Zeroizing::new(b"1".to_vec()));
        }
        for m in markers {
            batch.put(format!("{m}{}", entry.hash), Zeroizing::new(b"1".to_vec()));
        }
        batch
            .expect(key.clone(), &keybridge_barrier::Stamp::absent())
            .put(key, Zeroizing::new(serde_json::to_vec(&entry).expect("plain data")))
            .put(
                format!("{}{}", token::ACCESSOR_PREFIX, entry.accessor),
                Zeroizing::new(entry.hash.clone().into_bytes()),
            );
        if let Some((key, stamp)) = also_expect {
            batch.expect(key, stamp);
        }
        self.barrier.commit(batch).await.map_err(|e| match e {
            keybridge_barrier::Error::Conflict if also_expect.is_some() => {
                Error::Unavailable("the auth methods changed on another node while this login ran: try again".into())
            }
            keybridge_barrier::Error::Conflict => Error::Unauthenticated,
            e => e.into(),
        })?;
        Ok((new_token, entry))
    }

    /// The calling token's entry (policies, name, times).
    pub async fn lookup_self(&self, caller: &Caller) -> Result<crate::tokens::Identity> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "auth/token/lookup-self", Capability::Read).await?;
        Ok(id)
    }
}

impl Core {
    /// Revokes the token with this hash and, recursively, every token it
    /// created; they stop working at once.
    ///
    /// Exclusive with child creation: first every token of the tree is
    /// marked `revoking` (a parent before its children, each by a write
    /// conditioned on the entry it read), and a node's children are listed
    /// only after its mark is committed. A child's creation is conditioned on
    /// its parent's entry and refused when the parent is marked, so a child
    /// is either committed before its parent's mark (and listed here) or not
    /// at all. Then the whole tree goes in one write.
    pub(crate) async fn revoke_tree(&self, loaded: &Unsealed, hash: &str) -> Result<usize> {
        use crate::tokens::PARENT_PREFIX;
        let _guard = self.admin.lock().await;
        let Some(top) = self.mark_revoking(loaded, hash).await? else {
            return Ok(0);
        };
        let mut batch = WriteBatch::new();
        if let Some(parent) = &top.parent {
            batch.delete(format!("{PARENT_PREFIX}{parent}/{hash}"));
        }
        let mut pending = vec![(hash.to_string(), top)];
        let mut revoked = Vec::new();
        while let Some((h, entry)) = pending.pop() {
            #[cfg(test)]
            self.load_hold("revoke").await;
            let prefix = format!("{PARENT_PREFIX}{h}/");
            for marker in self.barrier.list(&prefix, None, usize::MAX).await? {
                let child = marker[prefix.len()..].to_string();
                batch.delete(marker);
                if let Some(e) = self.mark_revoking(loaded, &child).await? {
                    pending.push((child, e));
                }
            }
            if !entry.accessor.is_empty() {
                batch.delete(format!("{}{}", crate::tokens::ACCESSOR_PREFIX, entry.accessor));
            }
            batch.delete(crate::tokens::entry_key_of(&h));
            revoked.push(h);
        }
        self.barrier.commit(batch).await?;
        loaded.tokens.remove(&revoked);
        Ok(revoked.len())
    }

    /// Marks a token as being revoked (a write conditioned on the entry as
    /// read, retried on a conflict); `None` if it is gone.
    async fn mark_revoking(&self, loaded: &Unsealed, hash: &str) -> Result<Option<crate::tokens::TokenEntry>> {
        use crate::tokens::TokenEntry;
        let key = crate::tokens::entry_key_of(hash);
        for _ in 0..16 {
            let (raw, stamp) = self.barrier.get_stamped(&key).await?;
            let Some(raw) = raw else { return Ok(None) };
            let mut entry: TokenEntry =
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key: key.clone(), reason: e.to_string() })?;
            if entry.revoking {
                return Ok(Some(entry));
            }
            entry.revoking = true;
            let mut batch = WriteBatch::new();
            batch.expect(key.clone(), &stamp).put(key.clone(), encode_json(&entry));
            match self.barrier.commit(batch).await {
                Ok(()) => {
                    loaded.tokens.remove([hash]);
                    return Ok(Some(entry));
                }
                Err(keybridge_barrier::Error::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contention("a token being revoked".into()))
    }

    /// Revokes every token `hash` created (its own entry is already gone).
    async fn revoke_children(&self, loaded: &Unsealed, hash: &str) -> Result<()> {
        let prefix = format!("{}{hash}/", crate::tokens::PARENT_PREFIX);
        for marker in self.barrier.list(&prefix, None, usize::MAX).await? {
            self.revoke_tree(loaded, &marker[prefix.len()..]).await?;
        }
        Ok(())
    }

    /// Revokes `target` and its children. An unknown target is not an error
    /// (the answer does not tell whether a token existed).
    pub async fn revoke_token(&self, caller: &Caller, target: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "auth/token/revoke", Capability::Update).await?;
        if target.is_empty() {
            return Err(Error::InvalidArgument("give the token to revoke".into()));
        }
        let loaded = self.unsealed()?;
        let (_, hash) = loaded.salt.entry_key(target);
        self.revoke_tree(&loaded, &hash).await.map(|_| ())
    }

    /// Revokes the calling token and its children.
    pub async fn revoke_self(&self, caller: &Caller) -> Result<()> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "auth/token/revoke-self", Capability::Update).await?;
        let loaded = self.unsealed()?;
        self.revoke_tree(&loaded, &id.hash).await.map(|_| ())
    }
}

impl Core {
    /// Spends one use of a use-limited token (a conditional write, so
    /// concurrent requests cannot share a use); the last use revokes it.
    pub(crate) async fn consume_use(
        &self,
        loaded: &Unsealed,
        key: &str,
        hash: &str,
    ) -> Result<crate::tokens::Identity> {
        use crate::tokens::TokenEntry;
        for _ in 0..16 {
            let (raw, stamp) = self.barrier.get_stamped(key).await?;
            let raw = raw.ok_or(Error::Unauthenticated)?;
            let mut entry: TokenEntry =
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key: key.into(), reason: e.to_string() })?;
            let id = token::verify(std::sync::Arc::new(entry.clone()), hash, crate::Timestamp::now())?;
            if entry.num_uses == 0 {
                return Ok(id);
            }
            let mut batch = WriteBatch::new();
            batch.expect(key, &stamp);
            let last = entry.num_uses == 1;
            if last {
                // This request is the last one the token may make: the
                // entry goes in the same conditional write that spends it.
                batch.delete(key);
                if let Some(parent) = &entry.parent {
                    batch.delete(format!("{}{parent}/{hash}", token::PARENT_PREFIX));
                }
                if !entry.accessor.is_empty() {
                    batch.delete(format!("{}{}", token::ACCESSOR_PREFIX, entry.accessor));
                }
            } else {
                entry.num_uses -= 1;
                batch.put(key, Zeroizing::new(serde_json::to_vec(&entry).expect("plain data")));
            }
            match self.barrier.commit(batch).await {
                Ok(()) if last => {
                    self.revoke_children(loaded, hash).await?;
                    return Ok(id.with_uses(0));
                }
                Ok(()) => return Ok(id.with_uses(entry.num_uses)),
                Err(keybridge_barrier::Error::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contention("a use-limited token".into()))
    }

    /// Extends a token's life by `increment_secs` (0: its TTL), never past
    /// its max TTL. Returns the new expiry (`None`: never expires).
    async fn renew_hash(&self, loaded: &Unsealed, hash: &str, increment_secs: u64) -> Result<Option<crate::Timestamp>> {
        use crate::tokens::TokenEntry;
        let key = crate::tokens::entry_key_of(hash);
        let (raw, stamp) = self.barrier.get_stamped(&key).await?;
        let now = crate::Timestamp::now();
        let mut entry: TokenEntry = match raw {
            Some(raw) => {
                serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key: key.clone(), reason: e.to_string() })?
            }
            None => return Err(Error::NotFound("no such token (it may have expired or been revoked)".into())),
        };
        if entry.expires.is_some_and(|e| e <= now) {
            return Err(Error::NotFound("no such token (it may have expired or been revoked)".into()));
        }
        let Some(max) = entry.max_expires else {
            return Ok(entry.expires);
        };
        if !entry.renewable {
            return Err(Error::FailedPrecondition("this token is not renewable".into()));
        }
        let inc = if increment_secs == 0 { entry.ttl_secs } else { increment_secs };
        let wanted = now.plus_secs(inc);
        entry.expires = Some(wanted.min(max));
        let mut batch = WriteBatch::new();
        batch.expect(key.clone(), &stamp).put(key, Zeroizing::new(serde_json::to_vec(&entry).expect("plain data")));
        self.barrier.commit(batch).await?;
        loaded.tokens.remove([hash]);
        Ok(entry.expires)
    }

    pub async fn renew_self(&self, caller: &Caller, increment_secs: u64) -> Result<Option<crate::Timestamp>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "auth/token/renew-self", Capability::Update).await?;
        let loaded = self.unsealed()?;
        self.renew_hash(&loaded, &id.hash, increment_secs).await
    }

    pub async fn renew_token(
        &self,
        caller: &Caller,
        target: &str,
        increment_secs: u64,
    ) -> Result<Option<crate::Timestamp>> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "auth/token/renew", Capability::Update).await?;
        let loaded = self.unsealed()?;
        let (_, hash) = loaded.salt.entry_key(target);
        self.renew_hash(&loaded, &hash, increment_secs).await
    }
}

/// Which token a lookup or revocation names.
pub enum TokenRef<'a> {
    Token(&'a str),
    Accessor(&'a str),
}

impl Core {
    /// The hash of the token `r` names, if it exists.
    async fn resolve(&self, loaded: &Unsealed, r: &TokenRef<'_>) -> Result<Option<String>> {
        match r {
            TokenRef::Token(t) => Ok(Some(loaded.salt.entry_key(t).1)),
            TokenRef::Accessor(a) => {
                if a.is_empty() || a.len() > 64 || a.contains('/') {
                    return Err(Error::InvalidArgument("an accessor looks like acc.XXXXXXXX".into()));
                }
                let raw = self.barrier.get(&format!("{}{a}", crate::tokens::ACCESSOR_PREFIX)).await?;
                Ok(raw.map(|h| String::from_utf8_lossy(&h).into_owned()))
            }
        }
    }

    /// Looks up another token by the token itself or its accessor
    /// (`auth/token/lookup`, `auth/token/lookup-accessor`).
    pub async fn lookup_token(&self, caller: &Caller, target: TokenRef<'_>) -> Result<crate::tokens::Identity> {
        use crate::tokens::TokenEntry;
        let id = self.authenticate(caller).await?;
        let path = match target {
            TokenRef::Token(_) => "auth/token/lookup",
            TokenRef::Accessor(_) => "auth/token/lookup-accessor",
        };
        self.authorize(caller, &id, path, Capability::Update).await?;
        let loaded = self.unsealed()?;
        let not_found = || Error::NotFound("no such token (it may have expired or been revoked)".into());
        let hash = self.resolve(&loaded, &target).await?.ok_or_else(not_found)?;
        let key = crate::tokens::entry_key_of(&hash);
        let raw = self.barrier.get(&key).await?.ok_or_else(not_found)?;
        let entry: TokenEntry =
            serde_json::from_slice(&raw).map_err(|e| Error::Corrupt { key, reason: e.to_string() })?;
        crate::tokens::verify(std::sync::Arc::new(entry), &hash, crate::Timestamp::now()).map_err(|_| not_found())
    }

    /// Revokes a token (and its children) named by its accessor.
    pub async fn revoke_accessor(&self, caller: &Caller, accessor: &str) -> Result<()> {
        let id = self.authenticate(caller).await?;
        self.authorize(caller, &id, "auth/token/revoke-accessor", Capability::Update).await?;
        let loaded = self.unsealed()?;
        match self.resolve(&loaded, &TokenRef::Accessor(accessor)).await? {
            Some(hash) => self.revoke_tree(&loaded, &hash).await.map(|_| ()),
            None => Ok(()),
        }
    }
}
