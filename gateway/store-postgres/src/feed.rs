//! Following the change feed: every commit adds a row to `<table>_changes`
//! naming the keys it wrote, in its own transaction; each node reads the
//! rows of the others and drops what it cached of those keys.
//!
//! Gap safety. A row's number is taken from an identity sequence, which
//! hands numbers out in order but commits them in any order: a reader that
//! asked for `seq > last` would skip a number taken earlier and committed
//! later. The reader keeps every number it skipped as a gap and asks for
//! the gaps again on each poll, until the row appears or the gap is older
//! than [`FEED_GAP_BOUND`]: a commit takes its number in its last statement
//! and every connection bounds a statement and an idle transaction, so a
//! number still missing by then belonged to a transaction that rolled back
//! (a retry, a failed check). No advisory lock, no LISTEN/NOTIFY, no single
//! counter row every commit would queue on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;

/// How the reader stands on the sequence.
#[derive(Default)]
pub(crate) struct Cursor {
    /// The highest number read.
    pub(crate) high: i64,
    /// Numbers below `high` not read yet, and when they were first missed.
    pub(crate) gaps: BTreeMap<i64, Instant>,
}

/// One row of the feed, as a poll returns it.
pub(crate) struct Row {
    pub(crate) seq: i64,
    pub(crate) origin: i64,
    /// `None`: everything.
    pub(crate) keys: Option<Vec<Vec<u8>>>,
    pub(crate) age_ms: i64,
}

impl Cursor {
    /// Takes in a page of rows (in `seq` order): what changed, and whether
    /// this node must drop everything (too many gaps to track).
    pub(crate) fn take(&mut self, rows: &[Row], origin: i64, now: Instant, out: &mut Vec<String>) -> bool {
        let mut everything = false;
        for row in rows {
            if row.seq > self.high {
                let missed = row.seq.saturating_sub(self.high).saturating_sub(1);
                if missed > 0 {
                    if self.gaps.len().saturating_add(usize::try_from(missed).unwrap_or(usize::MAX)) > FEED_MAX_GAPS {
                        everything = true;
                        self.gaps.clear();
                    } else {
                        for g in self.high.saturating_add(1)..row.seq {
                            self.gaps.insert(g, now);
                        }
                    }
                }
                self.high = row.seq;
            } else if self.gaps.remove(&row.seq).is_none() {
                continue; // read before
            }
            if row.origin == origin {
                continue; // this process's own commit: dropped when it committed
            }
            match &row.keys {
                None => everything = true,
                Some(keys) => out.extend(keys.iter().map(|k| String::from_utf8_lossy(k).into_owned())),
            }
        }
        everything
    }

    /// Forgets gaps older than `bound` (numbers of rolled-back commits).
    pub(crate) fn expire(&mut self, now: Instant, bound: Duration) {
        self.gaps.retain(|_, first| now.saturating_duration_since(*first) < bound);
    }

    fn gap_list(&self) -> Vec<i64> {
        self.gaps.keys().copied().collect()
    }
}

impl PostgresStore {
    /// Follows the change feed until the process ends: every `poll`, reads
    /// the rows other nodes committed, drops those keys from the entry
    /// cache, then awaits `apply` with them (the caches above the store),
    /// and only then counts the feed as followed (see
    /// [`PostgresStore::feed_age`]). Prunes rows older than
    /// [`FEED_RETENTION`] now and then.
    pub async fn follow<F, Fut>(self: Arc<Self>, poll: Duration, mut apply: F)
    where
        F: FnMut(Change) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut cursor = Cursor::default();
        // Start at the head: whatever came before is in no cache yet.
        loop {
            let started = Instant::now();
            match self.feed_head().await {
                Ok(head) => {
                    cursor.high = head;
                    self.followed(started);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the change feed's head; trying again"),
            }
            tokio::time::sleep(poll.max(Duration::from_millis(100))).await;
        }
        let mut last_prune = Instant::now();
        let mut warned = false;
        loop {
            let started = Instant::now();
            match self.feed_page(&cursor).await {
                Ok(rows) => {
                    warned = false;
                    let full = rows.len() as i64 == FEED_PAGE;
                    let mut keys = Vec::new();
                    let mut everything = cursor.take(&rows, self.origin, started, &mut keys);
                    cursor.expire(started, FEED_GAP_BOUND);
                    // Rows may have been pruned while this node could not
                    // read: it cannot tell what it missed.
                    if self.feed_age().is_some_and(|age| age > FEED_RETENTION / 2) {
                        everything = true;
                    }
                    if everything {
                        self.cache.clear();
                        apply(Change::Everything).await;
                    } else if !keys.is_empty() {
                        keys.sort_unstable();
                        keys.dedup();
                        self.cache.remove(keys.iter().map(String::as_str));
                        apply(Change::Keys(keys)).await;
                    }
                    if let Some(newest) = rows.iter().filter(|r| r.origin != self.origin).map(|r| r.age_ms).min() {
                        let applied = newest.saturating_add(i64::try_from(started.elapsed().as_millis()).unwrap_or(0));
                        self.feed.lag_ms.store(u64::try_from(applied).unwrap_or(0), Ordering::Relaxed);
                    }
                    if !full {
                        self.followed(started);
                    } else {
                        continue; // more to read at once
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "cannot read the change feed; trying again");
                        warned = true;
                    }
                }
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                last_prune = Instant::now();
                if let Err(e) = self.feed_prune().await {
                    tracing::warn!(error = %e, "cannot prune the change feed");
                }
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// How long ago this node last read the change feed to its end and
    /// applied it (`None` until it first did, or while it does not follow).
    pub fn feed_age(&self) -> Option<Duration> {
        self.feed.caught_up.lock().unwrap_or_else(|p| p.into_inner()).map(|at| at.elapsed())
    }

    /// From commit to application, for the newest change of another node
    /// applied here.
    pub fn feed_lag(&self) -> Duration {
        Duration::from_millis(self.feed.lag_ms.load(Ordering::Relaxed))
    }

    fn followed(&self, at: Instant) {
        let mut c = self.feed.caught_up.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none_or(|prev| prev < at) {
            *c = Some(at);
        }
    }

    async fn feed_head(&self) -> keybridge_barrier::Result<i64> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.change_head).await.map_err(db)?;
        Ok(client.query_one(&stmt, &[]).await.map_err(db)?.get(0))
    }

    pub(crate) async fn feed_page(&self, cursor: &Cursor) -> keybridge_barrier::Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.change_poll).await.map_err(db)?;
        let rows = client.query(&stmt, &[&cursor.high, &cursor.gap_list(), &FEED_PAGE]).await.map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|r| Row { seq: r.get(0), origin: r.get(1), keys: r.get(2), age_ms: r.get(3) })
            .collect())
    }

    async fn feed_prune(&self) -> keybridge_barrier::Result<u64> {
        let ms = i64::try_from(FEED_RETENTION.as_millis()).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&self.sql.change_prune).await.map_err(db)?;
        client.execute(&stmt, &[&ms]).await.map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, origin: i64, keys: &[&str]) -> Row {
        Row { seq, origin, keys: Some(keys.iter().map(|k| k.as_bytes().to_vec()).collect()), age_ms: 0 }
    }

    #[test]
    fn a_number_committed_late_is_read_when_it_appears() {
        let now = Instant::now();
        let mut c = Cursor { high: 4, ..Cursor::default() };
        let mut out = Vec::new();
        // 5 and 6 taken, 6 committed first.
        assert!(!c.take(&[row(6, 1, &["b"])], 0, now, &mut out));
        assert_eq!((c.high, c.gap_list()), (6, vec![5]));
        assert!(!c.take(&[row(5, 1, &["a"])], 0, now, &mut out));
        assert!(c.gaps.is_empty());
        assert_eq!(out, ["b", "a"]);
        // Read again (a page that overlaps): not applied twice.
        out.clear();
        c.take(&[row(5, 1, &["a"]), row(6, 1, &["b"])], 0, now, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn own_rows_are_skipped_and_old_gaps_forgotten() {
        let now = Instant::now();
        let mut c = Cursor::default();
        let mut out = Vec::new();
        c.take(&[row(1, 7, &["mine"]), row(3, 1, &["theirs"])], 7, now, &mut out);
        assert_eq!(out, ["theirs"]);
        assert_eq!(c.gap_list(), vec![2]);
        c.expire(now + Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(c.gap_list(), vec![2]);
        c.expire(now + Duration::from_secs(6), Duration::from_secs(5));
        assert!(c.gaps.is_empty());
    }

    #[test]
    fn an_import_or_too_many_gaps_drop_everything() {
        let now = Instant::now();
        let mut c = Cursor::default();
        let mut out = Vec::new();
        assert!(c.take(&[Row { seq: 1, origin: 1, keys: None, age_ms: 0 }], 0, now, &mut out));
        let far = 1 + FEED_MAX_GAPS as i64 + 2;
        assert!(c.take(&[row(far, 1, &["x"])], 0, now, &mut out));
        assert!(c.gaps.is_empty() && c.high == far);
    }
}
