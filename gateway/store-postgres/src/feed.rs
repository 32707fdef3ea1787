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
use std::time::Duration;

use super::*;

/// A point on the clock that keeps counting while the machine sleeps
/// (CLOCK_BOOTTIME): a node resumed from a suspend must not take its last
/// read of the feed for a recent one, as a monotonic clock that stopped
/// would have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Instant(Duration);

impl Instant {
    pub(crate) fn now() -> Instant {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes into the timespec it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        if rc != 0 {
            return Instant(Duration::ZERO);
        }
        Instant(Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0)))
    }

    pub(crate) fn elapsed(self) -> Duration {
        Instant::now().0.saturating_sub(self.0)
    }

    pub(crate) fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d))
    }
}

/// How far below the head a follower starts: commits in flight when it
/// started took numbers there, and are read when they land.
const START_BEHIND: i64 = 1000;

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
    /// Takes in a page of rows (in `seq` order): what changed (`out`; of
    /// it, what other processes changed: `theirs`), and whether this node
    /// must drop everything (too many gaps to track).
    pub(crate) fn take(
        &mut self,
        rows: &[Row],
        origin: i64,
        now: Instant,
        out: &mut Vec<String>,
        theirs: &mut Vec<String>,
    ) -> bool {
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
            match &row.keys {
                None => everything = true,
                Some(keys) => {
                    let keys = keys.iter().map(|k| String::from_utf8_lossy(k).into_owned());
                    if row.origin == origin {
                        // This process's own commit: the entry cache dropped
                        // its keys when it committed; the caches above
                        // hear of it too, in case the commit went through
                        // while its caller saw an error.
                        out.extend(keys);
                    } else {
                        let start = out.len();
                        out.extend(keys);
                        theirs.extend_from_slice(&out[start..]);
                    }
                }
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
    /// the rows committed since, drops other processes' keys from the entry
    /// cache, then awaits `apply` with every key (the caches above the
    /// store; `apply` answers whether it could apply them all), and only
    /// then counts the feed as followed (see [`PostgresStore::feed_age`]).
    /// What could not be applied is applied again, as everything, until it
    /// is. Prunes rows older than [`FEED_RETENTION`] now and then.
    pub async fn follow<F, Fut>(self: Arc<Self>, poll: Duration, mut apply: F)
    where
        F: FnMut(Change) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut cursor = Cursor::default();
        loop {
            match self.feed_head().await {
                Ok(head) => {
                    cursor.high = head.saturating_sub(START_BEHIND).max(0);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the change feed's head; trying again"),
            }
            tokio::time::sleep(poll.max(Duration::from_millis(100))).await;
        }
        let mut last_check = Instant::now();
        let mut warned = false;
        // Something could not be applied: everything is, at the next poll.
        let mut owed = false;
        loop {
            let started = Instant::now();
            let mut everything = owed;
            // Now and then: prune, and look for a sequence that went back
            // (the database restored from a backup, or failed over to a
            // replica that had not seen the last numbers).
            if last_check.elapsed() > Duration::from_secs(60) {
                last_check = Instant::now();
                if let Err(e) = self.feed_prune().await {
                    tracing::warn!(error = %e, "cannot prune the change feed");
                }
                if let Ok(head) = self.feed_head().await
                    && head < cursor.high
                {
                    tracing::warn!(
                        head,
                        read = cursor.high,
                        "the change feed's sequence went back; dropping every cache"
                    );
                    cursor = Cursor { high: head, ..Cursor::default() };
                    everything = true;
                }
            }
            match self.feed_page(&cursor).await {
                Ok((rows, full)) => {
                    warned = false;
                    let (mut keys, mut theirs): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
                    everything |= cursor.take(&rows, self.origin, started, &mut keys, &mut theirs);
                    cursor.expire(started, FEED_GAP_BOUND);
                    // Rows may have been pruned while this node could not
                    // read: it cannot tell what it missed.
                    if self.feed_age().is_some_and(|age| age > FEED_RETENTION / 2) {
                        everything = true;
                    }
                    let applied = if everything {
                        self.cache.clear();
                        apply(Change::Everything).await
                    } else {
                        theirs.sort_unstable();
                        theirs.dedup();
                        keys.sort_unstable();
                        keys.dedup();
                        let own: Vec<String> = keys.into_iter().filter(|k| theirs.binary_search(k).is_err()).collect();
                        let mut ok = true;
                        if !theirs.is_empty() {
                            self.cache.remove(theirs.iter().map(String::as_str));
                            ok &= apply(Change::Keys(theirs)).await;
                        }
                        if !own.is_empty() {
                            ok &= apply(Change::Own(own)).await;
                        }
                        ok
                    };
                    owed = !applied;
                    if let Some(newest) = rows.iter().filter(|r| r.origin != self.origin).map(|r| r.age_ms).min() {
                        let lag = newest.saturating_add(i64::try_from(started.elapsed().as_millis()).unwrap_or(0));
                        self.feed.lag_ms.store(u64::try_from(lag).unwrap_or(0), Ordering::Relaxed);
                    }
                    if applied && !full {
                        self.followed(started);
                    } else if applied {
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

    /// The rows of the gaps, then up to a page of those above them; and
    /// whether the page was full.
    pub(crate) async fn feed_page(&self, cursor: &Cursor) -> keybridge_barrier::Result<(Vec<Row>, bool)> {
        let client = self.client().await?;
        // The gaps first (numbers below the rest), then what follows.
        let mut rows = Vec::new();
        if !cursor.gaps.is_empty() {
            let stmt = client.prepare_cached(&self.sql.change_gaps).await.map_err(db)?;
            rows = client.query(&stmt, &[&cursor.gap_list()]).await.map_err(db)?;
        }
        let stmt = client.prepare_cached(&self.sql.change_poll).await.map_err(db)?;
        let above = client.query(&stmt, &[&cursor.high, &FEED_PAGE]).await.map_err(db)?;
        let full = above.len() as i64 == FEED_PAGE;
        rows.extend(above);
        let rows = rows
            .into_iter()
            .map(|r| Row { seq: r.get(0), origin: r.get(1), keys: r.get(2), age_ms: r.get(3) })
            .collect();
        Ok((rows, full))
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
        let (mut out, mut theirs) = (Vec::new(), Vec::new());
        // 5 and 6 taken, 6 committed first.
        assert!(!c.take(&[row(6, 1, &["b"])], 0, now, &mut out, &mut theirs));
        assert_eq!((c.high, c.gap_list()), (6, vec![5]));
        assert!(!c.take(&[row(5, 1, &["a"])], 0, now, &mut out, &mut theirs));
        assert!(c.gaps.is_empty());
        assert_eq!(out, ["b", "a"]);
        assert_eq!(theirs, out);
        // Read again (a page that overlaps): not applied twice.
        out.clear();
        c.take(&[row(5, 1, &["a"]), row(6, 1, &["b"])], 0, now, &mut out, &mut theirs);
        assert!(out.is_empty());
    }

    #[test]
    fn own_rows_reach_the_caches_above_only_and_old_gaps_are_forgotten() {
        let now = Instant::now();
        let mut c = Cursor::default();
        let (mut out, mut theirs) = (Vec::new(), Vec::new());
        c.take(&[row(1, 7, &["mine"]), row(3, 1, &["theirs"])], 7, now, &mut out, &mut theirs);
        assert_eq!(out, ["mine", "theirs"]);
        assert_eq!(theirs, ["theirs"]);
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
        let (mut out, mut theirs) = (Vec::new(), Vec::new());
        assert!(c.take(&[Row { seq: 1, origin: 1, keys: None, age_ms: 0 }], 0, now, &mut out, &mut theirs));
        let far = 1 + FEED_MAX_GAPS as i64 + 2;
        assert!(c.take(&[row(far, 1, &["x"])], 0, now, &mut out, &mut theirs));
        assert!(c.gaps.is_empty() && c.high == far);
    }
}
