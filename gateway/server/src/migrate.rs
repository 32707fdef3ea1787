//! `keybridge operator migrate --from A.hcl --to B.hcl`: copies one
//! store's entries as they are stored (ciphertext, and the plaintext seal
//! configuration) into another, then reads the destination back and checks
//! it holds the same number of entries with the same checksum.
//!
//! The copy streams: the source's consistent export feeds the
//! destination's import (one transaction: an interrupted copy leaves the
//! destination as it was) through a bounded channel, so no store is held
//! in memory whole.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use keybridge_barrier::Physical;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::{Output, print_json};
use crate::config::{Config, Storage};
use crate::error::Error;
use crate::server::open_store;

/// Entries in flight between the export and the import.
const IN_FLIGHT: usize = 1024;

/// What the export hands the import: an entry, or the end. The import
/// takes a channel closed without the end (the export stopped) as an
/// error, never as the end of the data.
enum Msg {
    Entry(String, Vec<u8>),
    Failed(keybridge_barrier::Error),
    End,
}

/// A running count and SHA-256 of entries, in key order: each key and value
/// with its length before it, so no two stores share a checksum by
/// shifting bytes between keys and values.
#[derive(Default)]
struct Tally {
    count: u64,
    hash: Sha256,
}

impl Tally {
    fn add(&mut self, key: &str, value: &[u8]) {
        self.count += 1;
        self.hash.update((key.len() as u64).to_be_bytes());
        self.hash.update(key.as_bytes());
        self.hash.update((value.len() as u64).to_be_bytes());
        self.hash.update(value);
    }

    fn finish(self) -> (u64, String) {
        (self.count, format!("{:x}", self.hash.finalize()))
    }
}

fn describe(s: &Storage) -> String {
    match s {
        Storage::File { dir, .. } => format!("file {}", dir.display()),
        Storage::InMemory => "inmem".into(),
        Storage::Postgres(p) => format!("postgresql table {}", p.table),
    }
}

fn storage_error(what: &str, e: keybridge_barrier::Error) -> Error {
    Error::Usage(format!("{what}: {e}"))
}

pub async fn run(from: &Path, to: &Path, overwrite: bool, output: Output) -> Result<u8, Error> {
    let (source, dest) = (Config::load(from)?.storage, Config::load(to)?.storage);
    if matches!(source, Storage::InMemory) || matches!(dest, Storage::InMemory) {
        return Err(Error::Usage("an in-memory store lives only inside its server: nothing to migrate".into()));
    }
    if source == dest {
        return Err(Error::Usage(format!(
            "{} and {} name the same store ({}): nothing to copy",
            from.display(),
            to.display(),
            describe(&source)
        )));
    }
    // A source that does not exist is not created (and then copied over
    // the destination as an empty store).
    if let Storage::File { dir, .. } = &source
        && !dir.join("keybridge.db").exists()
    {
        return Err(Error::Usage(format!("the source ({}) holds no store: nothing to migrate", describe(&source))));
    }
    // The source first: nothing is opened (or created) at the destination
    // for a copy that cannot start.
    let src = open_store(&source).await?;
    no_server_on(&src, &source, "source").await?;
    let src = src.physical;
    // Read as the barrier reads it: an initialized store has a seal configuration.
    let sealed_with = keybridge_barrier::Barrier::new(src.clone()).seal_config().await;
    if sealed_with.map_err(|e| storage_error("the source", e))?.is_none() {
        return Err(Error::Usage(format!(
            "the source ({}) is not an initialized Keybridge store: nothing to migrate",
            describe(&source)
        )));
    }
    let dst = open_store(&dest).await?;
    no_server_on(&dst, &dest, "destination").await?;
    let dst = dst.physical;
    if !overwrite && !dst.list("", None, 1).await.map_err(|e| storage_error("the destination", e))?.is_empty() {
        return Err(Error::Usage(format!(
            "the destination ({}) is not empty: migrate into an empty store, or pass --overwrite to replace it",
            describe(&dest)
        )));
    }
    let copied = copy(src.clone(), dst.clone()).await?;
    let found = tally(dst).await.map_err(|e| storage_error("reading the copy back", e))?;
    if copied != found {
        return Err(Error::Usage(format!(
            "the copy does not match: {} entries (sha256 {}) read from the source, {} entries (sha256 {}) in the \
             destination",
            copied.0, copied.1, found.0, found.1
        )));
    }
    if output == Output::Json {
        print_json(&json!({
            "from": describe(&source), "to": describe(&dest), "entries": copied.0, "sha256": copied.1, "verified": true,
        }));
    } else {
        println!(
            "Copied {} entries from {} to {}; the destination holds the same {} entries (sha256 {}).",
            copied.0,
            describe(&source),
            describe(&dest),
            found.0,
            copied.1
        );
    }
    Ok(crate::exit::OK)
}

/// No server may be using a store: a copy would miss its later writes, or
/// replace what it serves.
async fn no_server_on(opened: &crate::server::Opened, storage: &Storage, what: &str) -> Result<(), Error> {
    #[cfg(feature = "postgres")]
    if let (Some(pg), Storage::Postgres(p)) = (&opened.postgres, storage) {
        let leader = pg.leader().await.map_err(|e| storage_error(what, e))?;
        if leader.live {
            return Err(Error::Usage(format!(
                "a server ({}, {}) leads the {what} table: stop it first",
                leader.node,
                if leader.api_addr.is_empty() { "no api_addr" } else { leader.api_addr.as_str() }
            )));
        }
        // Every node serves, not only the leader.
        let members = pg.members(p.leader_lease).await.map_err(|e| storage_error(what, e))?;
        if let Some(m) = members.iter().find(|m| m.alive) {
            return Err(Error::Usage(format!(
                "a server ({}, {}) uses the {what} table: stop every node first",
                m.node,
                if m.api_addr.is_empty() { "no api_addr" } else { m.api_addr.as_str() }
            )));
        }
    }
    #[cfg(not(feature = "postgres"))]
    let _ = (opened, storage, what);
    Ok(())
}

/// Streams the source's export into the destination's import; the count
/// and checksum of what was read.
async fn copy(src: Arc<dyn Physical>, dst: Arc<dyn Physical>) -> Result<(u64, String), Error> {
    let (tx, rx) = mpsc::sync_channel::<Msg>(IN_FLIGHT);
    let export = tokio::task::spawn_blocking(move || {
        let mut tally = Tally::default();
        let r = src.export(&mut |k, v| {
            tally.add(k, v);
            tx.send(Msg::Entry(k.to_string(), v.to_vec()))
                .map_err(|_| keybridge_barrier::Error::Snapshot("the destination stopped taking entries".into()))
        });
        match &r {
            Ok(()) => {
                let _ = tx.send(Msg::End);
            }
            // The import must not commit a partial copy.
            Err(e) => {
                let _ = tx
                    .send(Msg::Failed(keybridge_barrier::Error::Snapshot(format!("the source's export failed: {e}"))));
            }
        }
        r.map(|()| tally.finish())
    });
    let import = tokio::task::spawn_blocking(move || {
        let mut ended = false;
        let mut entries = std::iter::from_fn(|| {
            if ended {
                return None;
            }
            match rx.recv() {
                Ok(Msg::Entry(k, v)) => Some(Ok((k, v))),
                Ok(Msg::Failed(e)) => {
                    ended = true;
                    Some(Err(e))
                }
                Ok(Msg::End) => {
                    ended = true;
                    None
                }
                Err(_) => {
                    ended = true;
                    Some(Err(keybridge_barrier::Error::Snapshot("the source's export stopped before its end".into())))
                }
            }
        });
        dst.import(&mut entries)
    });
    let imported = import.await.map_err(|e| Error::Usage(format!("the import stopped: {e}")))?;
    let exported = export.await.map_err(|e| Error::Usage(format!("the export stopped: {e}")))?;
    let exported = exported.map_err(|e| storage_error("reading the source", e))?;
    let imported = imported.map_err(|e| storage_error("writing the destination (it is unchanged)", e))?;
    if imported != exported.0 {
        return Err(Error::Usage(format!("read {} entries from the source but wrote {imported}", exported.0)));
    }
    Ok(exported)
}

/// The count and checksum of a store's entries.
async fn tally(store: Arc<dyn Physical>) -> keybridge_barrier::Result<(u64, String)> {
    tokio::task::spawn_blocking(move || {
        let mut tally = Tally::default();
        store
            .export(&mut |k, v| {
                tally.add(k, v);
                Ok(())
            })
            .map(|()| tally.finish())
    })
    .await
    .map_err(|e| keybridge_barrier::Error::Snapshot(format!("reading the store stopped: {e}")))?
}
