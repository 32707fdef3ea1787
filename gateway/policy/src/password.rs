//! Vault's password policies (`sys/policies/password/<name>`): how engines
//! generate passwords, in HCL.
//!
//! ```hcl
//! length = 20
//! rule "charset" {
//!   charset   = "abcdefghijklmnopqrstuvwxyz"
//!   min-chars = 1
//! }
//! rule "charset" {
//!   charset   = "0123456789"
//!   min-chars = 1
//! }
//! ```
//!
//! As in Vault: `length` is 4 to 100; each `charset` rule names printable
//! characters and how many of them (`min-chars`, default 0) a password
//! holds at least. A password is `length` characters drawn uniformly from
//! the union of every rule's charset by the caller's CSPRNG, drawn again
//! until every rule is met (at most [`MAX_ATTEMPTS`] times). A policy whose
//! `min-chars` add up to more than `length` is refused when parsed.
//!
//! Keybridge's additions: the charsets hold at most [`MAX_DISTINCT`]
//! distinct characters between them (parsing and drawing stay cheap), and
//! a policy is only *strong enough* ([`PasswordPolicy::check_strength`],
//! enforced when a policy is written and when an engine uses one) when
//! `length * log2(distinct characters)` is at least [`MIN_ENTROPY_BITS`].

use std::collections::{HashMap, HashSet};

use hcl::{Block, BlockLabel, Body, Expression};
use rand::{CryptoRng, Rng, RngCore};
use zeroize::Zeroizing;

use crate::Error;

/// The shortest password a policy may ask for (Vault's bound).
pub const MIN_LENGTH: usize = 4;
/// The longest password a policy may ask for (Vault's bound).
pub const MAX_LENGTH: usize = 100;
/// The largest policy text taken, in bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// The most rules a policy may hold.
pub const MAX_RULES: usize = 64;
/// Candidates drawn before a policy is declared unable to produce a password.
pub const MAX_ATTEMPTS: usize = 1000;
/// The most distinct characters the charsets may hold between them.
pub const MAX_DISTINCT: usize = 1024;
/// The least entropy a policy's passwords may have, in bits, counted as
/// `length * log2(distinct characters)` (a Keybridge addition: Vault has
/// no floor). 11 characters of a 62-character alphabet have 65.5.
pub const MIN_ENTROPY_BITS: f64 = 64.0;

/// One `rule "charset" { ... }` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharsetRule {
    /// The rule's characters, each once, in the order written.
    pub charset: Vec<char>,
    /// How many of them a password holds at least.
    pub min_chars: usize,
}

/// A parsed password policy. Holds no secret: the characters and counts a
/// password is made of, not a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub length: usize,
    pub rules: Vec<CharsetRule>,
    /// The union of the rules' charsets, each character once.
    alphabet: Vec<char>,
    /// For each character of `alphabet`, the rules whose charset holds it
    /// (bit `i`: rule `i`).
    membership: Vec<u64>,
    /// Each character of `alphabet`, to its place there.
    index: HashMap<char, usize>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Password(msg.into())
}

/// Whether `c` is a printable character, as Vault's `unicode.IsPrint`
/// reads it: no control character, no whitespace but the space, no
/// invisible format character (zero-width spaces and joiners, direction
/// marks, the byte order mark, the soft hyphen).
pub fn printable(c: char) -> bool {
    let format = matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    );
    !c.is_control() && (c == ' ' || !c.is_whitespace()) && !format
}

fn count(key: &str, e: &Expression) -> Result<usize, Error> {
    let n = match e {
        Expression::Number(n) => n.as_u64(),
        _ => None,
    };
    n.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| invalid(format!("{key} must be a whole number")))
}

fn charset_rule(index: usize, block: &Block) -> Result<CharsetRule, Error> {
    let at = format!("rule {}", index + 1);
    match block.labels() {
        [BlockLabel::String(kind)] if kind == "charset" => {}
        [BlockLabel::Identifier(kind)] if kind.as_str() == "charset" => {}
        [BlockLabel::String(kind)] => {
            return Err(invalid(format!("{at}: unknown rule type {kind:?}; the one rule type is \"charset\"")));
        }
        _ => return Err(invalid(format!("{at}: write it as rule \"charset\" {{ charset = \"...\" }}"))),
    }
    if let Some(inner) = block.body().blocks().next() {
        return Err(invalid(format!("{at}: unexpected block {:?} inside a rule", inner.identifier())));
    }
    let mut charset: Option<Vec<char>> = None;
    let mut min_chars = 0;
    for attr in block.body().attributes() {
        match attr.key() {
            "charset" => {
                let Expression::String(s) = attr.expr() else {
                    return Err(invalid(format!("{at}: charset must be a string")));
                };
                if let Some(c) = s.chars().find(|c| !printable(*c)) {
                    return Err(invalid(format!(
                        "{at}: charset holds the non-printable character U+{:04X}; use printable characters only",
                        c as u32
                    )));
                }
                let mut seen = HashSet::new();
                let mut chars: Vec<char> = Vec::new();
                for c in s.chars() {
                    if seen.insert(c) {
                        if chars.len() == MAX_DISTINCT {
                            return Err(too_many_distinct());
                        }
                        chars.push(c);
                    }
                }
                charset = Some(chars);
            }
            "min-chars" => min_chars = count(&format!("{at}: min-chars"), attr.expr())?,
            other => {
                return Err(invalid(format!(
                    "{at}: unknown key {other:?}; a charset rule takes charset and min-chars"
                )));
            }
        }
    }
    let charset = charset.ok_or_else(|| invalid(format!("{at}: give charset = \"...\"")))?;
    if charset.is_empty() {
        return Err(invalid(format!("{at}: the charset is empty")));
    }
    Ok(CharsetRule { charset, min_chars })
}

fn too_many_distinct() -> Error {
    invalid(format!(
        "the charsets hold more than {MAX_DISTINCT} distinct characters between them; at most {MAX_DISTINCT}"
    ))
}

/// The entropy, in bits, of `length` characters each drawn from
/// `distinct` characters: `length * log2(distinct)` (0 for no characters).
pub fn entropy_bits(length: usize, distinct: usize) -> f64 {
    if length == 0 || distinct == 0 {
        return 0.0;
    }
    // Both are small (at most 100 and 1024 here); as floats, exact.
    length as f64 * (distinct as f64).log2()
}

/// Whether passwords of `length` characters from `distinct` characters
/// reach [`MIN_ENTROPY_BITS`]; if not, a one-line message saying by how
/// much and what to change.
pub fn check_entropy(length: usize, distinct: usize) -> Result<(), Error> {
    let bits = entropy_bits(length, distinct);
    if bits >= MIN_ENTROPY_BITS {
        return Ok(());
    }
    let fix = if distinct < 2 {
        "add characters to the charsets (one character gives no entropy)".to_string()
    } else {
        match (length..=MAX_LENGTH).find(|n| entropy_bits(*n, distinct) >= MIN_ENTROPY_BITS) {
            Some(n) => format!("raise length to at least {n}, or add characters to the charsets"),
            None => "add characters to the charsets".to_string(),
        }
    };
    Err(invalid(format!(
        "passwords of {length} characters from {distinct} distinct characters have {:.1} bits of entropy, under the floor of {MIN_ENTROPY_BITS} (length * log2(characters)): {fix}",
        (bits * 10.0).floor() / 10.0
    )))
}

/// Parses a password policy's HCL text and checks it can be met.
pub fn parse_password_policy(text: &str) -> Result<PasswordPolicy, Error> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(invalid(format!("the policy is {} bytes; the limit is {MAX_POLICY_BYTES}", text.len())));
    }
    let body: Body = hcl::parse(text).map_err(|e| match e {
        // One line: hcl's own message spans several (a snippet and a caret).
        hcl::Error::Parse(p) => invalid(format!(
            "syntax error at line {}, column {}: {}",
            p.location().line(),
            p.location().column(),
            p.message()
        )),
        e => invalid(format!("syntax error: {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))),
    })?;
    let mut length = None;
    for attr in body.attributes() {
        match attr.key() {
            "length" => length = Some(count("length", attr.expr())?),
            other => {
                return Err(invalid(format!(
                    "unexpected top-level key {other:?}; a password policy holds length and rule blocks"
                )));
            }
        }
    }
    let length = length.ok_or_else(|| invalid(format!("give length = N ({MIN_LENGTH} to {MAX_LENGTH})")))?;
    if !(MIN_LENGTH..=MAX_LENGTH).contains(&length) {
        return Err(invalid(format!("length = {length}: must be {MIN_LENGTH} to {MAX_LENGTH}")));
    }
    let mut rules = Vec::new();
    for block in body.blocks() {
        if block.identifier() != "rule" {
            return Err(invalid(format!(
                "unexpected block {:?}; a password policy holds length and rule \"charset\" blocks",
                block.identifier()
            )));
        }
        if rules.len() == MAX_RULES {
            return Err(invalid(format!("more than {MAX_RULES} rules")));
        }
        rules.push(charset_rule(rules.len(), block)?);
    }
    if rules.is_empty() {
        return Err(invalid("no rules: add at least one rule \"charset\" { charset = \"...\" }"));
    }
    let required = rules.iter().try_fold(0usize, |sum, r| sum.checked_add(r.min_chars)).unwrap_or(usize::MAX);
    if required > length {
        return Err(invalid(format!(
            "the rules' min-chars add up to {required}, more than length = {length}: no password could meet them"
        )));
    }
    let mut alphabet: Vec<char> = Vec::new();
    let mut membership: Vec<u64> = Vec::new();
    let mut index: HashMap<char, usize> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        for &c in &rule.charset {
            let at = match index.get(&c) {
                Some(&at) => at,
                None => {
                    if alphabet.len() == MAX_DISTINCT {
                        return Err(too_many_distinct());
                    }
                    alphabet.push(c);
                    membership.push(0);
                    index.insert(c, alphabet.len() - 1);
                    alphabet.len() - 1
                }
            };
            membership[at] |= 1u64 << i;
        }
    }
    Ok(PasswordPolicy { length, rules, alphabet, membership, index })
}

impl PasswordPolicy {
    /// Every character a password may hold: the rules' charsets, each
    /// character once.
    pub fn alphabet(&self) -> &[char] {
        &self.alphabet
    }

    /// The entropy of its passwords, in bits: `length *
    /// log2(distinct characters)`.
    pub fn entropy_bits(&self) -> f64 {
        entropy_bits(self.length, self.alphabet.len())
    }

    /// Whether its passwords reach [`MIN_ENTROPY_BITS`] (see
    /// [`check_entropy`]).
    pub fn check_strength(&self) -> Result<(), Error> {
        check_entropy(self.length, self.alphabet.len())
    }

    /// Whether `password` is as the policy makes them: `length`
    /// characters of the alphabet, every rule's `min-chars` met.
    pub fn allows(&self, password: &str) -> bool {
        let mut n = 0usize;
        let mut counts = [0usize; MAX_RULES];
        for c in password.chars() {
            let Some(&at) = self.index.get(&c) else { return false };
            n = n.saturating_add(1);
            let mut rules = self.membership[at];
            while rules != 0 {
                let r = rules.trailing_zeros() as usize;
                counts[r] = counts[r].saturating_add(1);
                rules &= rules - 1;
            }
        }
        n == self.length && self.rules.iter().zip(counts.iter()).all(|(rule, got)| *got >= rule.min_chars)
    }

    /// A new password, from `rng` (give it a CSPRNG such as `OsRng`):
    /// candidates are drawn until one meets every rule, at most
    /// [`MAX_ATTEMPTS`] of them.
    pub fn generate<R: RngCore + CryptoRng>(&self, rng: &mut R) -> Result<Zeroizing<String>, Error> {
        let n = self.alphabet.len();
        for _ in 0..MAX_ATTEMPTS {
            // Sized once, so no copy of a candidate is left behind by a
            // reallocation.
            let mut candidate = Zeroizing::new(String::with_capacity(self.length.saturating_mul(4)));
            let mut counts = [0usize; MAX_RULES];
            for _ in 0..self.length {
                let i = rng.gen_range(0..n);
                candidate.push(self.alphabet[i]);
                let mut rules = self.membership[i];
                while rules != 0 {
                    let r = rules.trailing_zeros() as usize;
                    counts[r] = counts[r].saturating_add(1);
                    rules &= rules - 1;
                }
            }
            if self.rules.iter().zip(counts.iter()).all(|(rule, got)| *got >= rule.min_chars) {
                return Ok(candidate);
            }
        }
        Err(invalid(format!(
            "no password drawn met every rule in {MAX_ATTEMPTS} tries: lower min-chars, or make the charsets they count from a larger share of the characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// Vault's documented example.
    const VAULT_EXAMPLE: &str = r#"
length = 20
rule "charset" {
  charset = "abcdefghijklmnopqrstuvwxyz"
  min-chars = 1
}
rule "charset" {
  charset = "0123456789"
  min-chars = 1
}
"#;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn err(text: &str) -> String {
        parse_password_policy(text).unwrap_err().to_string()
    }

    fn rule(charset: &str, min: usize) -> String {
        format!("rule \"charset\" {{\n  charset = {charset:?}\n  min-chars = {min}\n}}\n")
    }

    #[test]
    fn vaults_example_parses() {
        let p = parse_password_policy(VAULT_EXAMPLE).unwrap();
        assert_eq!(p.length, 20);
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[1].min_chars, 1);
        assert_eq!(p.alphabet().len(), 36);
        // min-chars defaults to 0; overlapping charsets are counted once.
        let p = parse_password_policy(
            "length = 8\nrule \"charset\" { charset = \"abcabc\" }\nrule \"charset\" { charset = \"cd\" }\n",
        )
        .unwrap();
        assert_eq!(p.rules[0].min_chars, 0);
        assert_eq!(p.alphabet(), ['a', 'b', 'c', 'd']);
    }

    #[test]
    fn passwords_meet_every_rule_and_draw_from_every_charset() {
        let p = parse_password_policy(VAULT_EXAMPLE).unwrap();
        let mut rng = rng();
        let mut seen = std::collections::BTreeMap::new();
        let draws = 2000;
        for _ in 0..draws {
            let pw = p.generate(&mut rng).unwrap();
            assert_eq!(pw.chars().count(), 20);
            assert!(pw.chars().any(|c| c.is_ascii_lowercase()), "{}", pw.as_str());
            assert!(pw.chars().any(|c| c.is_ascii_digit()), "{}", pw.as_str());
            assert!(p.allows(&pw));
            for c in pw.chars() {
                *seen.entry(c).or_insert(0usize) += 1;
            }
        }
        // Every character of the union turns up, about as often as any
        // other: 40,000 draws over 36 characters is about 1,111 each (the
        // min-chars retries barely skew it).
        assert_eq!(seen.len(), 36, "{seen:?}");
        for (c, n) in &seen {
            assert!((850..=1400).contains(n), "{c:?} drawn {n} times: not uniform");
        }
    }

    #[test]
    fn min_chars_are_met_when_they_are_most_of_the_password() {
        let text = format!(
            "length = 6\n{}{}{}",
            rule("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 2),
            rule("0123456789", 2),
            rule("!#%&", 2)
        );
        let p = parse_password_policy(&text).unwrap();
        let mut rng = rng();
        for _ in 0..50 {
            let pw = p.generate(&mut rng).unwrap();
            assert!(p.allows(&pw));
            assert_eq!(pw.chars().filter(|c| "!#%&".contains(*c)).count(), 2, "{}", pw.as_str());
        }
    }

    #[test]
    fn non_ascii_charsets_work() {
        let p = parse_password_policy(&format!("length = 10\n{}", rule("äöüß€", 3))).unwrap();
        let pw = p.generate(&mut rng()).unwrap();
        assert_eq!(pw.chars().count(), 10);
        assert!(pw.chars().all(|c| "äöüß€".contains(c)));
    }

    #[test]
    fn impossible_policies_are_refused() {
        // More required than the length: refused when parsed.
        let e = err(&format!("length = 4\n{}{}", rule("abc", 3), rule("123", 2)));
        assert!(e.contains("add up to 5, more than length = 4"), "{e}");
        let e = err(&format!("length = 4\n{}", rule("abc", 5)));
        assert!(e.contains("add up to 5"), "{e}");
        // Possible on paper, never in practice: four of one character
        // among 91 (about one draw in 68 million). Generation gives up.
        let text = format!("length = 4\n{}{}", rule("a", 4), rule(&ascii_printable(), 0));
        let p = parse_password_policy(&text).unwrap();
        let e = p.generate(&mut rng()).unwrap_err().to_string();
        assert!(e.contains("in 1000 tries"), "{e}");
    }

    /// `s` as an HCL string's body: quotes and backslashes escaped, and
    /// what is not printable as `\uNNNN`.
    fn hcl_escape(s: &str) -> String {
        s.chars()
            .map(|c| match c {
                '"' | '\\' => format!("\\{c}"),
                c if printable(c) => c.to_string(),
                c => format!("\\u{:04X}", c as u32),
            })
            .collect()
    }

    fn ascii_printable() -> String {
        (b'!'..=b'~').map(char::from).filter(|c| *c != 'a' && *c != '"' && *c != '\\').collect()
    }

    #[test]
    fn the_length_is_4_to_100() {
        for (n, ok) in [(3, false), (4, true), (100, true), (101, false), (0, false)] {
            let r = parse_password_policy(&format!("length = {n}\n{}", rule("ab", 0)));
            assert_eq!(r.is_ok(), ok, "length {n}: {r:?}");
            if !ok {
                assert!(r.unwrap_err().to_string().contains("must be 4 to 100"));
            }
        }
        for bad in ["length = 20.5", "length = -5", "length = \"20\""] {
            let e = err(&format!("{bad}\n{}", rule("ab", 0)));
            assert!(e.contains("length must be a whole number"), "{bad}: {e}");
        }
        let p = parse_password_policy(&format!("length = 100\n{}", rule("ab", 0))).unwrap();
        assert_eq!(p.generate(&mut rng()).unwrap().len(), 100);
    }

    #[test]
    fn the_size_limit_is_64_kib() {
        let base = format!("length = 8\n{}", rule("ab", 0));
        let pad = |total: usize| format!("{base}#{}\n", "x".repeat(total - base.len() - 2));
        let at = pad(MAX_POLICY_BYTES);
        assert_eq!(at.len(), MAX_POLICY_BYTES);
        parse_password_policy(&at).unwrap();
        let over = pad(MAX_POLICY_BYTES + 1);
        let e = parse_password_policy(&over).unwrap_err().to_string();
        assert!(e.contains("65537 bytes; the limit is 65536"), "{e}");
    }

    #[test]
    fn at_most_64_rules() {
        let rules = |n: usize| format!("length = 8\n{}", (0..n).map(|_| rule("ab", 0)).collect::<String>());
        let p = parse_password_policy(&rules(MAX_RULES)).unwrap();
        assert!(p.allows(&p.generate(&mut rng()).unwrap()));
        let e = err(&rules(MAX_RULES + 1));
        assert!(e.contains("more than 64 rules"), "{e}");
    }

    #[test]
    fn charsets_are_printable_and_not_empty() {
        for (charset, why) in [
            ("", "the charset is empty"),
            ("ab\u{7}", "U+0007"),
            ("ab\t", "U+0009"),
            ("ab\n", "U+000A"),
            ("a\u{200B}b", "U+200B"),
            ("a\u{FEFF}", "U+FEFF"),
            ("a\u{A0}", "U+00A0"),
        ] {
            let e = err(&format!("length = 8\nrule \"charset\" {{\n charset = \"{}\"\n}}\n", hcl_escape(charset)));
            assert!(e.contains(why) && e.starts_with("password policy: rule 1: "), "{charset:?}: {e}");
        }
        // The space is printable, as in Vault.
        parse_password_policy("length = 8\nrule \"charset\" { charset = \"a b\" }\n").unwrap();
    }

    #[test]
    fn the_entropy_floor_is_64_bits() {
        let alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        // Respected: 11 of 62 (65.5 bits), 64 of 2 and 16 of 16 (64 exactly).
        for (length, charset) in [(11, alnum), (64, "ab"), (16, "0123456789abcdef"), (20, alnum)] {
            let p = parse_password_policy(&format!("length = {length}\n{}", rule(charset, 0))).unwrap();
            assert!(p.entropy_bits() >= MIN_ENTROPY_BITS, "{length} of {charset}");
            p.check_strength().unwrap_or_else(|e| panic!("{length} of {charset}: {e}"));
        }
        // Exceeded: every password "aaaa"; 10 of 62 (59.5 bits); 63 of 2.
        for (length, charset, bits, fix) in [
            (4, "a", "0.0 bits", "add characters to the charsets (one character gives no entropy)"),
            (10, alnum, "59.5 bits", "raise length to at least 11"),
            (63, "ab", "63.0 bits", "raise length to at least 64"),
            (8, "abcdefghijklmnopqrstuvwxyz'", "38.0 bits", "raise length to at least 14"),
            (4, "ab", "4.0 bits", "raise length to at least 64"),
        ] {
            let p = parse_password_policy(&format!("length = {length}\n{}", rule(charset, 0))).unwrap();
            let e = p.check_strength().unwrap_err().to_string();
            assert!(e.contains(bits) && e.contains("under the floor of 64") && e.contains(fix), "{e}");
            assert!(!e.contains('\n'));
        }
        // Repeated characters count once; the union of the rules counts.
        let p = parse_password_policy(&format!("length = 11\n{}{}", rule("abcabc", 0), rule(&alnum[3..], 0))).unwrap();
        assert_eq!(p.alphabet().len(), 62);
        p.check_strength().unwrap();
        assert_eq!(entropy_bits(0, 62), 0.0);
        assert_eq!(entropy_bits(10, 0), 0.0);
    }

    /// A charset of `n` distinct printable characters, CJK (3 bytes each).
    fn distinct(n: u32) -> String {
        (0..n).map(|i| char::from_u32(0x4E00 + i).unwrap()).collect()
    }

    #[test]
    fn at_most_1024_distinct_characters() {
        let p = parse_password_policy(&format!("length = 8\n{}", rule(&distinct(1024), 0))).unwrap();
        assert_eq!(p.alphabet().len(), MAX_DISTINCT);
        assert!(p.allows(&p.generate(&mut rng()).unwrap()));
        let e = err(&format!("length = 8\n{}", rule(&distinct(1025), 0)));
        assert!(e.contains("more than 1024 distinct characters"), "{e}");
        // Across rules: 600 + 600 distinct, each under the cap alone.
        let all = distinct(1200);
        let (a, b) = all.split_at(all.char_indices().nth(600).unwrap().0);
        let e = err(&format!("length = 8\n{}{}", rule(a, 0), rule(b, 0)));
        assert!(e.contains("more than 1024 distinct characters"), "{e}");
        // Overlapping rules count each character once.
        let p = parse_password_policy(&format!(
            "length = 8\n{}{}",
            rule(&all[..3 * 1000], 0),
            rule(&all[3 * 24..3 * 1024], 0)
        ))
        .unwrap();
        assert_eq!(p.alphabet().len(), 1024);
    }

    #[test]
    fn a_64_kib_charset_of_distinct_characters_parses_fast() {
        // About 21,800 distinct 3-byte characters: quadratic de-duplication
        // would take seconds; the cap stops it at the 1025th.
        let body = distinct(21_000);
        let text = format!("length = 8\nrule \"charset\" {{ charset = \"{body}\" }}\n");
        assert!(text.len() <= MAX_POLICY_BYTES, "{}", text.len());
        let started = std::time::Instant::now();
        let e = err(&text);
        assert!(e.contains("more than 1024 distinct characters"), "{e}");
        // And about the worst that is taken: 21 rules of the same 1000
        // characters (63 KB).
        let rules = (0..21).map(|_| rule(&distinct(1000), 0)).collect::<String>();
        let text = format!("length = 100\n{rules}");
        assert!(text.len() <= MAX_POLICY_BYTES, "{}", text.len());
        let p = parse_password_policy(&text).unwrap();
        assert_eq!(p.alphabet().len(), 1000);
        assert!(p.allows(&p.generate(&mut rng()).unwrap()));
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[test]
    fn errors_say_what_to_fix_on_one_line() {
        let cases = [
            ("", "give length = N"),
            ("length = 8\n", "no rules"),
            ("length = 8\nlength = 9\n", "line 2, column 1: invalid attribute; expected unique attribute key"),
            ("length = 8\ncolour = 1\n", "unexpected top-level key \"colour\""),
            ("length = 8\npath \"x\" {}\n", "unexpected block \"path\""),
            ("length = 8\nrule \"regex\" { charset = \"a\" }\n", "unknown rule type \"regex\""),
            ("length = 8\nrule \"charset\" { min-chars = 1 }\n", "give charset"),
            ("length = 8\nrule \"charset\" { charset = [\"a\"] }\n", "charset must be a string"),
            ("length = 8\nrule \"charset\" {\n charset = \"a\"\n min_chars = 1\n}\n", "unknown key \"min_chars\""),
            (
                "length = 8\nrule \"charset\" {\n charset = \"a\"\n min-chars = -1\n}\n",
                "min-chars must be a whole number",
            ),
            ("length = 8\nrule \"charset\" {\n charset = \"a\"\n", "syntax error at line 3"),
        ];
        for (text, needle) in cases {
            let e = err(text);
            assert!(e.contains(needle) && !e.contains('\n'), "{text:?}: {e}");
        }
    }
}
