//! Passwords and passphrases by policy.
//!
//! - `policies/{name}`: a password policy (length, character classes with
//!   minimum counts, symbols, excluded characters); `policies`: list.
//! - `generate/{policy}`: a password of a stored policy; `generate`: one of
//!   the policy given inline (the same fields).
//! - `passphrase`: words of random syllables, with their entropy.
//!
//! As a rotating engine, `rotate("generate/{policy}")` gives the reconciler a
//! new password of that policy.

use keybridge_plugin_sdk::*;
use serde_json::{Value, json};

struct Passwords;

const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";
const SYMBOLS: &str = "!@#$%^&*-_=+?";

#[derive(Debug, PartialEq)]
struct Policy {
    length: usize,
    mins: [usize; 4],
    symbols: String,
    exclude: String,
}

fn policy_fields() -> Vec<Field> {
    vec![
        default(field("length", FieldKind::Int, "characters, 8 to 256"), "24"),
        default(field("min_lower", FieldKind::Int, "at least this many a-z (-1: none at all)"), "1"),
        default(field("min_upper", FieldKind::Int, "at least this many A-Z (-1: none at all)"), "1"),
        default(field("min_digits", FieldKind::Int, "at least this many 0-9 (-1: none at all)"), "1"),
        default(field("min_symbols", FieldKind::Int, "at least this many symbols (-1: none at all)"), "1"),
        default(field("symbols", FieldKind::String, "the symbols to use"), SYMBOLS),
        default(field("exclude", FieldKind::String, "characters never used, e.g. lIO0"), ""),
    ]
}

fn num(params: &Params, name: &str, default: i64) -> Result<i64, Error> {
    lookup(params, name)
        .map(|v| v.parse::<i64>().map_err(|_| Error::InvalidInput(format!("{name}: expected a whole number"))))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

/// Min -1 leaves a class out; 0 allows it without requiring it.
fn parse_policy(p: &Params) -> Result<(Policy, [bool; 4]), Error> {
    let length = num(p, "length", 24)?;
    if !(8..=256).contains(&length) {
        return Err(Error::InvalidInput("length must be 8 to 256".into()));
    }
    let mut mins = [0usize; 4];
    let mut used = [true; 4];
    for (i, n) in ["min_lower", "min_upper", "min_digits", "min_symbols"].iter().enumerate() {
        let v = num(p, n, 1)?;
        if v < -1 {
            return Err(Error::InvalidInput(format!("{n} must be -1 or more")));
        }
        used[i] = v >= 0;
        mins[i] = v.max(0) as usize;
    }
    let symbols = lookup(p, "symbols").unwrap_or(SYMBOLS).to_string();
    if symbols.chars().any(|c| c.is_alphanumeric() || c.is_whitespace() || !c.is_ascii()) {
        return Err(Error::InvalidInput("symbols must be ASCII punctuation".into()));
    }
    let policy = Policy { length: length as usize, mins, symbols, exclude: lookup(p, "exclude").unwrap_or("").into() };
    if policy.mins.iter().sum::<usize>() > policy.length {
        return Err(Error::InvalidInput("the minimum counts add up to more than the length".into()));
    }
    let sets = classes(&policy, used);
    if sets.iter().all(Vec::is_empty) {
        return Err(Error::InvalidInput("no characters are left to choose from".into()));
    }
    for (i, s) in sets.iter().enumerate() {
        if s.is_empty() && policy.mins[i] > 0 {
            return Err(Error::InvalidInput("a class with a minimum count has no characters left".into()));
        }
    }
    Ok((policy, used))
}

fn classes(p: &Policy, used: [bool; 4]) -> [Vec<char>; 4] {
    let keep = |s: &str, on: bool| -> Vec<char> {
        if on { s.chars().filter(|c| !p.exclude.contains(*c)).collect() } else { Vec::new() }
    };
    [keep(LOWER, used[0]), keep(UPPER, used[1]), keep(DIGITS, used[2]), keep(&p.symbols, used[3])]
}

fn pick(set: &[char]) -> char {
    set[random_below(set.len() as u32) as usize]
}

fn generate(p: &Policy, used: [bool; 4]) -> String {
    let sets = classes(p, used);
    let all: Vec<char> = sets.iter().flatten().copied().collect();
    let mut out: Vec<char> = Vec::with_capacity(p.length);
    for (i, set) in sets.iter().enumerate() {
        for _ in 0..p.mins[i] {
            out.push(pick(set));
        }
    }
    while out.len() < p.length {
        out.push(pick(&all));
    }
    // Fisher-Yates, so the required characters are not at the front.
    for i in (1..out.len()).rev() {
        out.swap(i, random_below(i as u32 + 1) as usize);
    }
    out.into_iter().collect()
}

const CONSONANTS: &[u8] = b"bdfghjklmnprstvz";
const VOWELS: &[u8] = b"aeiou";

fn passphrase(words: usize, sep: &str, capitalize: bool) -> (String, f64) {
    let mut out = Vec::new();
    for _ in 0..words {
        let mut w = String::new();
        for _ in 0..3 {
            w.push(CONSONANTS[random_below(CONSONANTS.len() as u32) as usize] as char);
            w.push(VOWELS[random_below(VOWELS.len() as u32) as usize] as char);
        }
        if capitalize {
            w = w[..1].to_uppercase() + &w[1..];
        }
        out.push(w);
    }
    let bits = words as f64 * 3.0 * ((CONSONANTS.len() * VOWELS.len()) as f64).log2();
    (out.join(sep), bits)
}

fn stored(name: &str) -> Result<Params, Error> {
    let v = storage::get_json(&format!("policies/{name}"))?
        .ok_or_else(|| Error::NotFound(format!("no policy {name:?}")))?;
    Ok(v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default())
}

fn password_for(path: &str, inline: &Params) -> Result<Response, Error> {
    let params = match path.strip_prefix("generate/") {
        Some(name) => stored(name)?,
        None => inline.clone(),
    };
    let (p, used) = parse_policy(&params)?;
    Ok(respond([("password", generate(&p, used))]))
}

impl Engine for Passwords {
    fn describe() -> EngineInfo {
        let mut policies = path(
            "policies/{name}",
            "A password policy",
            &[Operation::Read, Operation::Create, Operation::Update, Operation::Delete],
            policy_fields(),
        );
        policies.existence_check = true;
        info(
            "passwords",
            "0.1.0",
            "Passwords and passphrases by policy; a rotation generator for the reconciler",
            vec![
                policies,
                path("policies", "Lists policies", &[Operation::List], vec![]),
                path("generate/{policy}", "A password of a stored policy", &[Operation::Read], vec![]),
                path("generate", "A password of the policy given inline", &[Operation::Read], policy_fields()),
                path(
                    "passphrase",
                    "Words of random syllables",
                    &[Operation::Read],
                    vec![
                        default(field("words", FieldKind::Int, "3 to 20"), "6"),
                        default(field("separator", FieldKind::String, "between words"), "-"),
                        default(field("capitalize", FieldKind::Boolean, "capitalize each word"), "false"),
                    ],
                ),
            ],
        )
    }

    fn exists(_ctx: Context, req: Request) -> Result<bool, Error> {
        Ok(storage::get(&format!("policies/{}", param(&req, "name")?))?.is_some())
    }

    fn handle(_ctx: Context, req: Request) -> Result<Response, Error> {
        match (req.pattern.as_str(), req.operation) {
            ("policies/{name}", Operation::Create | Operation::Update) => {
                let name = param(&req, "name")?.to_string();
                let fields: Params = req.params.iter().filter(|(k, _)| k != "name").cloned().collect();
                parse_policy(&fields)?;
                let obj: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k, json!(v))).collect();
                storage::put_json(&format!("policies/{name}"), &Value::Object(obj))?;
                Ok(respond::<&str, &str>([]))
            }
            ("policies/{name}", Operation::Read) => {
                Ok(Response { data: stored(param(&req, "name")?)?, lease: None, warnings: vec![] })
            }
            ("policies/{name}", Operation::Delete) => {
                storage::delete(&format!("policies/{}", param(&req, "name")?))?;
                Ok(respond::<&str, &str>([]))
            }
            ("policies", _) => Ok(list_response(storage::list("policies/")?)),
            ("generate/{policy}" | "generate", _) => password_for(&req.path, &req.params),
            ("passphrase", _) => {
                let words = num(&req.params, "words", 6)?;
                if !(3..=20).contains(&words) {
                    return Err(Error::InvalidInput("words must be 3 to 20".into()));
                }
                let sep = opt_param(&req, "separator").unwrap_or("-");
                let cap = opt_param(&req, "capitalize") == Some("true");
                let (phrase, bits) = passphrase(words as usize, sep, cap);
                Ok(respond([("passphrase", phrase), ("entropy_bits", format!("{bits:.0}"))]))
            }
            (p, op) => Err(Error::Unsupported(format!("{p} does not support {op:?}"))),
        }
    }
}

impl Rotate for Passwords {
    /// `path`: `generate/{policy}` or `generate` (with the policy's fields
    /// in `params`).
    fn rotate(_ctx: Context, path: String, params: Params) -> Result<Response, Error> {
        password_for(&path, &params)
    }
}

export_rotating_engine!(Passwords);
