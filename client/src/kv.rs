//! Key-value helpers over `keybridge.v1.Secrets`.

use std::collections::HashMap;

use keybridge_proto::v1 as pb;

use crate::{Client, Error};

/// A value of named string fields, the usual shape of a secret.
pub fn fields<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> pb::SecretValue {
    let fields: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
    pb::SecretValue { kind: Some(pb::secret_value::Kind::Fields(pb::Fields { fields })) }
}

impl Client {
    /// Reads the latest version of a secret; `None` when it does not
    /// exist (or its latest version is deleted). Retried when the gateway
    /// is unavailable.
    pub async fn kv_get(&self, path: &str) -> Result<Option<pb::GetResponse>, Error> {
        let req = pb::GetRequest { path: path.to_string(), ..Default::default() };
        match self.secrets().get(req).await {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    }

    /// Writes a new version and returns its metadata. With `cas`, the write
    /// succeeds only if the current version is `cas` (`Some(0)`: only if
    /// the secret does not exist yet); otherwise it fails with
    /// `FAILED_PRECONDITION` and changes nothing. Never retried: a write
    /// whose answer was lost may have happened.
    ///
    /// ```
    /// # keybridge_testservers::gateway::doc_example(|address, token| async move {
    /// use keybridge_client::{Client, Config, fields};
    /// let client = Client::connect(Config::new(address).with_token(token)).await?;
    /// // Create only if absent: a second create-only write is refused.
    /// client.kv_put("secret/app/api", fields([("key", "k1")]), Some(0)).await?;
    /// let again = client.kv_put("secret/app/api", fields([("key", "k2")]), Some(0)).await;
    /// assert_eq!(again.unwrap_err().code(), tonic::Code::FailedPrecondition);
    /// # Ok::<(), keybridge_client::Error>(())
    /// # });
    /// ```
    pub async fn kv_put(
        &self,
        path: &str,
        value: pb::SecretValue,
        cas: Option<u64>,
    ) -> Result<pb::VersionMetadata, Error> {
        let req = pb::PutRequest { path: path.to_string(), value: Some(value), cas };
        let resp = self.secrets().put(req).await?.into_inner();
        resp.version.ok_or_else(|| Error::Status(tonic::Status::internal("the gateway's answer has no version")))
    }

    /// Read-modify-write under check-and-set: reads the secret (`None`
    /// when absent), writes what `change` makes of it with `cas` set to the
    /// version read, and when another writer got there first (the write
    /// fails with `FAILED_PRECONDITION`, or `ABORTED` under contention)
    /// reads again and repeats, at most
    /// `attempts` times. `change` returning `None` writes nothing.
    ///
    /// ```
    /// # keybridge_testservers::gateway::doc_example(|address, token| async move {
    /// use keybridge_client::{Client, Config, fields, pb};
    /// let client = Client::connect(Config::new(address).with_token(token)).await?;
    /// // A counter that concurrent writers increment without losing a step.
    /// let bump = |current: Option<&pb::GetResponse>| {
    ///     let n = current
    ///         .and_then(|r| match r.value.as_ref()?.kind.as_ref()? {
    ///             pb::secret_value::Kind::Fields(f) => f.fields.get("n")?.parse::<u64>().ok(),
    ///             _ => None,
    ///         })
    ///         .unwrap_or(0);
    ///     Some(fields([("n", (n + 1).to_string())]))
    /// };
    /// let (a, b) = tokio::join!(
    ///     client.kv_update("secret/app/counter", 10, bump),
    ///     client.kv_update("secret/app/counter", 10, bump)
    /// );
    /// let (a, b) = (a?.expect("written"), b?.expect("written"));
    /// assert_ne!(a.version, b.version);
    /// let last = client.kv_get("secret/app/counter").await?.expect("exists");
    /// assert_eq!(last.version.map(|v| v.version), Some(2));
    /// # Ok::<(), keybridge_client::Error>(())
    /// # });
    /// ```
    pub async fn kv_update(
        &self,
        path: &str,
        attempts: u32,
        mut change: impl FnMut(Option<&pb::GetResponse>) -> Option<pb::SecretValue>,
    ) -> Result<Option<pb::VersionMetadata>, Error> {
        let mut tries = 0u32;
        loop {
            tries = tries.saturating_add(1);
            let current = self.kv_get(path).await?;
            let cas = match &current {
                Some(r) => r.version.as_ref().map(|v| v.version).unwrap_or(0),
                None => self.current_version(path).await?,
            };
            let Some(value) = change(current.as_ref()) else { return Ok(None) };
            match self.kv_put(path, value, Some(cas)).await {
                // Another writer got there first (or the write met contention):
                // check-and-set made sure nothing was written, so read again.
                Err(e)
                    if matches!(e.code(), tonic::Code::FailedPrecondition | tonic::Code::Aborted)
                        && tries < attempts.max(1) =>
                {
                    continue;
                }
                other => return other.map(Some),
            }
        }
    }

    /// The current version number from the metadata (0 when the secret
    /// does not exist): a secret whose latest version is deleted reads as
    /// absent, but check-and-set still counts that version. A token that
    /// may not read the metadata gets 0, and check-and-set decides.
    async fn current_version(&self, path: &str) -> Result<u64, Error> {
        match self.secrets().describe(pb::DescribeRequest { path: path.to_string() }).await {
            Ok(r) => Ok(r.into_inner().metadata.map(|m| m.current_version).unwrap_or(0)),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::PermissionDenied) => Ok(0),
            Err(s) => Err(s.into()),
        }
    }
}
