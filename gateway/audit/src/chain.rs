//! The tamper-evident line format of audit records, and its verification.
//! Pure functions: no IO, no server, so the CLI can verify offline.
//!
//! A record is one JSON object on one line. The writer adds `seq` (1, 2, ...
//! per device, never reused) in front, and `prev` (the chain value before
//! this record) on the first record of every file segment, and ends the
//! object with `"chain":"<hex>"`, where
//!
//! ```text
//! chain(n) = HMAC-SHA256(chain_key, chain(n-1) || prefix(n))
//! ```
//!
//! and `prefix(n)` is the record's line with the `,"chain":"..."` member
//! removed (so it ends in `}`); `chain(0)` is 32 zero bytes. The key lives in
//! the barrier: whoever can edit the file cannot recompute the chain.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

pub const CHAIN_LEN: usize = 32;
/// `,"chain":"` + 64 hex digits + `"}`
const CHAIN_SUFFIX_LEN: usize = 10 + 2 * CHAIN_LEN + 2;

pub type ChainValue = [u8; CHAIN_LEN];

/// 32 bytes as 64 lowercase hex digits, without allocating.
pub fn hex32(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    // Cannot fail: the output is exactly twice the input.
    let _ = hex::encode_to_slice(bytes, &mut out);
    out
}

/// An HMAC-SHA256 key with its inner and outer pads already hashed: each
/// MAC starts from a copy of that state instead of hashing the key twice
/// more. Deliberately without `Debug` (the state is derived from the key).
/// It lives as long as its device, like the key bytes it stands for, and
/// its state is wiped when it is dropped (`Hmac<Sha256>` is not
/// `ZeroizeOnDrop` itself, in hmac 0.12 nor in 0.13). The short-lived copy
/// each MAC starts from is not.
#[derive(Clone)]
pub struct MacKey(Hmac<Sha256>);

impl MacKey {
    pub fn new(key: &[u8]) -> MacKey {
        MacKey(<Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length"))
    }

    fn wipe(&mut self) {
        // SAFETY: `&mut self.0` is valid and exclusive. `Hmac<Sha256>` (hmac
        // 0.12, sha2 0.10, block-buffer 0.10) is flat data: hash states of
        // `[u32; 8]` and a `u64` block count, a `[u8; 64]` buffer and its `u8`
        // position; no pointers, no heap, no `Drop`, and all zeroes is a valid
        // value of every field, so the wiped value stays sound to use (it
        // then MACs under no key; only the test does that).
        unsafe { zeroize::zeroize_flat_type(&mut self.0) };
    }

    /// The MAC of the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for p in parts {
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

impl Drop for MacKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

pub fn next_chain(key: &MacKey, prev: &ChainValue, prefix: &[u8]) -> ChainValue {
    key.mac(&[prev, prefix])
}

/// Turns a record body (a JSON object without `seq`) into its final line,
/// newline included, and returns the new chain value.
pub fn seal_line(
    key: &MacKey,
    prev: &ChainValue,
    seq: u64,
    first_in_segment: bool,
    body: &[u8],
    out: &mut Vec<u8>,
) -> ChainValue {
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = std::io::Write::write_fmt(out, format_args!("{{\"seq\":{seq},"));
    if first_in_segment {
        out.extend_from_slice(b"\"prev\":\"");
        out.extend_from_slice(&hex32(prev));
        out.extend_from_slice(b"\",");
    }
    // The body is `{...}`; drop its opening brace.
    out.extend_from_slice(body.strip_prefix(b"{").unwrap_or(body));
    let chain = next_chain(key, prev, &out[start..]);
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"chain\":\"");
    out.extend_from_slice(&hex32(&chain));
    out.extend_from_slice(b"\"}\n");
    chain
}

/// Where the server's record of a device stood: the last sequence number
/// written and its chain value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    /// The chain value of record `seq`, when known.
    pub chain: Option<ChainValue>,
    /// The first sequence number of the file the device writes now.
    pub segment_start: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Records that verified.
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The first problem found, with the line it is on; `None`: intact.
    pub problem: Option<String>,
    /// Notes that are not failures (e.g. the log continues an earlier file).
    pub notes: Vec<String>,
}

#[derive(Deserialize)]
struct Head {
    seq: u64,
    #[serde(default)]
    prev: Option<String>,
}

/// Verifies `lines` (the files' contents, in order) against `key`; with a
/// `checkpoint`, also that nothing was cut off the end.
pub struct Verifier {
    mac: MacKey,
    chain: Option<ChainValue>,
    expected: u64,
    line_no: u64,
    segment_start: Option<u64>,
    report: Report,
    /// The file being read, for messages.
    file: String,
    /// Bytes of the current file after its last newline.
    pending: Vec<u8>,
}

impl Verifier {
    pub fn new(key: &[u8]) -> Self {
        Verifier {
            mac: MacKey::new(key),
            chain: None,
            expected: 0,
            line_no: 0,
            segment_start: None,
            report: Report::default(),
            file: String::new(),
            pending: Vec::new(),
        }
    }

    /// Continues after record `seq` whose chain value is `chain` (a writer
    /// recovering its position past its last checkpoint).
    pub fn resume(key: &[u8], seq: u64, chain: ChainValue) -> Self {
        let mut v = Self::new(key);
        if seq > 0 {
            v.chain = Some(chain);
            v.expected = seq + 1;
        }
        v
    }

    /// The last record that verified: its sequence number, chain value, and
    /// the first record of its segment if the lines fed showed it.
    pub fn position(&self) -> (u64, ChainValue, Option<u64>) {
        (self.expected.saturating_sub(1), self.chain.unwrap_or([0u8; CHAIN_LEN]), self.segment_start)
    }

    fn fail(&mut self, msg: String) {
        if self.report.problem.is_none() {
            self.report.problem = Some(msg);
        }
    }

    pub fn failed(&self) -> bool {
        self.report.problem.is_some()
    }

    /// Starts the next file (its line numbers restart); whatever the
    /// previous one held after its last newline is checked as a last line.
    pub fn start_file(&mut self, name: &str) {
        self.flush();
        self.line_no = 0;
        self.file = name.to_string();
    }

    /// Feeds a piece of the current file; complete lines are checked as
    /// they arrive, so a file can come in chunks of any size.
    pub fn feed(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = self.pending[start..start + i].to_vec();
            self.line(&line);
            start += i + 1;
        }
        self.pending.drain(..start);
    }

    /// Whether the current file ends inside a line (a torn last record).
    pub fn torn(&self) -> bool {
        !self.pending.is_empty()
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.line(&line);
        }
    }

    /// Checks one line (without its newline).
    fn line(&mut self, line: &[u8]) {
        if self.failed() {
            return;
        }
        self.line_no += 1;
        let at = format!("{}:{}", self.file, self.line_no);
        if line.is_empty() {
            return self.fail(format!("{at}: an empty line was inserted"));
        }
        if line.len() < CHAIN_SUFFIX_LEN + 2 {
            return self.fail(format!("{at}: not a complete audit record (edited or truncated mid-record)"));
        }
        let (body, suffix) = line.split_at(line.len() - CHAIN_SUFFIX_LEN);
        let Some(chain_hex) = suffix.strip_prefix(b",\"chain\":\"").and_then(|s| s.strip_suffix(b"\"}")) else {
            return self.fail(format!("{at}: not a complete audit record (its chain value is missing)"));
        };
        let mut claimed = [0u8; CHAIN_LEN];
        if hex::decode_to_slice(chain_hex, &mut claimed).is_err() {
            return self.fail(format!("{at}: the record's chain value was edited"));
        }
        let mut prefix = body.to_vec();
        prefix.push(b'}');
        let head: Head = match serde_json::from_slice(&prefix) {
            Ok(h) => h,
            Err(_) => return self.fail(format!("{at}: the record is not valid JSON (edited)")),
        };
        let prev = match (self.chain, head.prev.as_deref()) {
            (Some(c), _) => c,
            (None, Some(p)) => {
                let mut v = [0u8; CHAIN_LEN];
                if hex::decode_to_slice(p, &mut v).is_err() {
                    return self.fail(format!("{at}: the record's prev value was edited"));
                }
                if head.seq > 1 {
                    self.report.notes.push(format!(
                        "{at}: the log begins at record {}, continuing an earlier file; pass that file first to check the link",
                        head.seq
                    ));
                }
                v
            }
            (None, None) => {
                if head.seq != 1 {
                    return self.fail(format!(
                        "{at}: the log begins at record {} without a link to earlier records: the head of the file was removed",
                        head.seq
                    ));
                }
                [0u8; CHAIN_LEN]
            }
        };
        if self.chain.is_some() {
            if head.seq > self.expected {
                return self.fail(format!(
                    "{at}: records {} to {} are missing (dropped) before this line",
                    self.expected,
                    head.seq - 1
                ));
            }
            if head.seq < self.expected {
                return self.fail(format!(
                    "{at}: record {} appears after record {}: reordered or inserted",
                    head.seq,
                    self.expected - 1
                ));
            }
        }
        let computed = next_chain(&self.mac, &prev, &prefix);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&computed[..], &claimed[..])) {
            let what = if self.chain.is_none() && head.seq == 1 {
                "edited, or not written with this key"
            } else {
                "edited or inserted"
            };
            return self.fail(format!("{at}: record {} was {what}", head.seq));
        }
        if self.chain.is_none() {
            self.report.first_seq = head.seq;
        }
        if head.prev.is_some() {
            self.segment_start = Some(head.seq);
        }
        self.chain = Some(computed);
        self.expected = head.seq + 1;
        self.report.records += 1;
        self.report.last_seq = head.seq;
    }

    /// The checkpoint a client saw at `seq` before it read its files:
    /// records written after that are not required to be in them.
    pub fn finish_at(self, current: &Checkpoint, seen: Option<u64>) -> Report {
        match seen {
            Some(seq) if seq < current.seq => self.finish(Some(&Checkpoint {
                seq,
                chain: None,
                segment_start: current.segment_start.min(seq.max(1)),
            })),
            _ => self.finish(Some(current)),
        }
    }

    pub fn finish(mut self, checkpoint: Option<&Checkpoint>) -> Report {
        self.flush();
        if let Some(cp) = checkpoint
            && !self.failed()
        {
            if self.report.records == 0 {
                if cp.seq > 0 {
                    self.fail(format!("the log is empty, but the server recorded {} records", cp.seq));
                }
            } else if self.report.last_seq < cp.seq {
                let last = self.report.last_seq;
                if last >= cp.segment_start {
                    self.fail(format!(
                        "the log was truncated: it ends at record {last}, but the server recorded up to record {}",
                        cp.seq
                    ));
                } else if last + 1 == cp.segment_start {
                    self.report.notes.push(format!("the device's current file continues from record {}", last + 1));
                } else {
                    self.report.notes.push(format!(
                        "the log ends at record {last}; records {} to {} are in later files that were not given",
                        last + 1,
                        cp.segment_start - 1
                    ));
                }
            } else if self.report.last_seq == cp.seq && cp.chain.is_some() && self.chain != cp.chain {
                self.fail(format!("record {} does not match the server's checkpoint", cp.seq));
            }
        }
        self.report
    }
}

/// Verifies whole files (each a byte buffer) in order.
pub fn verify_files(key: &[u8], files: &[(String, Vec<u8>)], checkpoint: Option<&Checkpoint>) -> Report {
    let mut v = Verifier::new(key);
    for (name, data) in files {
        v.start_file(name);
        v.feed(data);
    }
    v.finish(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_dropped_mac_key_leaves_its_key_state_wiped() {
        let mut k = MacKey::new(b"a device's chain key");
        let before = k.mac(&[b"record"]);
        assert_eq!(before, MacKey::new(b"a device's chain key").mac(&[b"record"]));
        k.wipe();
        let wiped = k.mac(&[b"record"]);
        assert_ne!(wiped, before, "the key-derived state survived the wipe");
        // Nothing of the key is left: any key wiped gives the same state.
        let mut other = MacKey::new(b"another key");
        other.wipe();
        assert_eq!(other.mac(&[b"record"]), wiped);
    }

    fn log(n: u64) -> (Vec<u8>, Checkpoint) {
        let (key, mut out) = (MacKey::new(KEY), Vec::new());
        let mut chain = [0u8; CHAIN_LEN];
        for seq in 1..=n {
            let body = format!("{{\"type\":\"request\",\"path\":\"secret/data/r{seq}\"}}");
            chain = seal_line(&key, &chain, seq, seq == 1, body.as_bytes(), &mut out);
        }
        (out, Checkpoint { seq: n, chain: Some(chain), segment_start: 1 })
    }

    fn lines(data: &[u8]) -> Vec<Vec<u8>> {
        data.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| l.to_vec()).collect()
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    }

    fn check(data: Vec<u8>, cp: &Checkpoint) -> Report {
        verify_files(KEY, &[("audit.log".into(), data)], Some(cp))
    }

    #[test]
    fn untouched_log_passes() {
        let (data, cp) = log(20);
        let r = check(data, &cp);
        assert_eq!(r.problem, None);
        assert_eq!((r.records, r.first_seq, r.last_seq), (20, 1, 20));
    }

    #[test]
    fn each_kind_of_tampering_is_reported_at_the_first_bad_record() {
        let (data, cp) = log(10);
        let l = lines(&data);

        let mut edited = l.clone();
        let s = String::from_utf8(edited[4].clone()).unwrap().replace("r5", "r6");
        edited[4] = s.into_bytes();
        let p = check(join(&edited), &cp).problem.unwrap();
        assert!(p.contains("audit.log:5") && p.contains("record 5 was edited"), "{p}");

        let mut dropped = l.clone();
        dropped.remove(3);
        let p = check(join(&dropped), &cp).problem.unwrap();
        assert!(p.contains("audit.log:4") && p.contains("records 4 to 4 are missing"), "{p}");

        let mut inserted = l.clone();
        inserted.insert(6, l[6].clone());
        let p = check(join(&inserted), &cp).problem.unwrap();
        assert!(p.contains("audit.log:8") && p.contains("record 7 appears after record 7"), "{p}");

        let mut reordered = l.clone();
        reordered.swap(2, 3);
        let p = check(join(&reordered), &cp).problem.unwrap();
        assert!(p.contains("audit.log:3") && p.contains("missing"), "{p}");

        let truncated = l[..7].to_vec();
        let p = check(join(&truncated), &cp).problem.unwrap();
        assert!(p.contains("truncated") && p.contains("ends at record 7") && p.contains("record 10"), "{p}");

        let mut headless = l.clone();
        headless.remove(0);
        let p = check(join(&headless), &cp).problem.unwrap();
        assert!(p.contains("head of the file was removed"), "{p}");

        let p = verify_files(b"another key", &[("audit.log".into(), data.clone())], None).problem.unwrap();
        assert!(p.contains("not written with this key"), "{p}");

        let mut torn = data.clone();
        torn.truncate(data.len() - 30);
        let p = check(torn, &cp).problem.unwrap();
        assert!(p.contains("audit.log:10") && p.contains("not a complete audit record"), "{p}");
    }

    #[test]
    fn rotation_continues_the_chain() {
        let key = MacKey::new(KEY);
        let mut first = Vec::new();
        let mut second = Vec::new();
        let mut chain = [0u8; CHAIN_LEN];
        for seq in 1..=10u64 {
            let out = if seq <= 6 { &mut first } else { &mut second };
            chain = seal_line(&key, &chain, seq, seq == 1 || seq == 7, b"{\"type\":\"response\"}", out);
        }
        let cp = Checkpoint { seq: 10, chain: Some(chain), segment_start: 7 };
        let both = verify_files(KEY, &[("a.1".into(), first.clone()), ("a".into(), second.clone())], Some(&cp));
        assert_eq!((both.problem, both.records), (None, 10));
        let current = verify_files(KEY, &[("a".into(), second)], Some(&cp));
        assert_eq!(current.problem, None);
        assert!(current.notes[0].contains("begins at record 7"));
        let older = verify_files(KEY, &[("a.1".into(), first.clone())], Some(&cp));
        assert_eq!(older.problem, None, "{:?}", older.notes);
        let mut cut = first.clone();
        let keep = lines(&first)[..5].to_vec();
        cut.clear();
        cut.extend(join(&keep));
        let (_, tail) = (0, lines(&join(&keep)));
        assert_eq!(tail.len(), 5);
        // An older segment cut short is caught when its successor is given.
        let mut chain2 = [0u8; CHAIN_LEN];
        let mut s2 = Vec::new();
        for seq in 1..=10u64 {
            let mut sink = Vec::new();
            chain2 = seal_line(&key, &chain2, seq, seq == 1 || seq == 7, b"{\"type\":\"response\"}", &mut sink);
            if seq >= 7 {
                s2.extend(sink);
            }
        }
        let r = verify_files(KEY, &[("a.1".into(), cut), ("a".into(), s2)], Some(&cp));
        assert!(r.problem.unwrap().contains("records 6 to 6 are missing"));
    }
}
