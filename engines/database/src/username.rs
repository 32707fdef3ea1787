//! `username_template`: Vault's username templates, so a Vault
//! connection's setting ports as written.
//!
//! A template is Go `text/template` (parsed and run by the `gtmpl` crate)
//! with the fields `.DisplayName` (the caller's display name, passed
//! through as Vault does) and `.RoleName`, Vault's functions (`random`,
//! `truncate`, `truncate_sha256`, `uppercase`, `lowercase`, `replace`,
//! `sha256`, `base64`, `unix_time`, `unix_time_millis`, `timestamp`,
//! `uuid`) and Go's builtins (`printf`, `print`, `eq`, `and`, `if`,
//! `with`, pipelines, variables, ...).
//!
//! Differences from Vault, all on the side of refusing:
//! - The words `range`, `define`, `template` and `block` are refused
//!   anywhere in a template (a name needs no loop or sub-template; they
//!   would let a template run or recurse without bound).
//! - Limits: a template of at most [`MAX_TEMPLATE`] bytes, [`MAX_ACTIONS`]
//!   `{{`, [`MAX_PARENS`] `(`; `random N`, `truncate N`,
//!   `truncate_sha256 N` and printf widths at most [`MAX_N`]; every
//!   function's result and the whole output at most [`MAX_VALUE`] bytes.
//! - `printf` takes `%s`, `%v`, `%d`, `%x`, `%X` and `%%`, with the flags
//!   `-`, `0` and `+`, a width and a precision written as digits; a wrong
//!   type or count of values is an error (Go would print `%!s(...)`).
//! - `truncate N` keeps at most N bytes, cut at a character boundary (Go
//!   cuts bytes, and can split a character).
//! - `timestamp` formats the time in UTC; see [`go_time`] for the layout
//!   elements it knows.
//! - The result must be 1 to 63 bytes with no `"`, `'`, `\`, `$`, NUL or
//!   control character: it is filled into the role's SQL, quoted there by
//!   the statements' writer, so those characters could end the quoting.

use std::collections::HashMap;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};

use chrono::{DateTime, Datelike, Timelike, Utc};
use gtmpl::{Context, Func, FuncError, Template, Value};
use rand::Rng;
use sha2::Digest;

use crate::EngineError;

/// A template's length, in bytes.
pub const MAX_TEMPLATE: usize = 4096;
/// The largest `random N`, `truncate N`, `truncate_sha256 N`, and printf
/// width or precision.
pub const MAX_N: usize = 1024;
/// The longest value a function may return, and the longest output.
pub const MAX_VALUE: usize = 4096;
/// How many actions (`{{`) a template may have: each `if`/`with` nests
/// one deeper, and gtmpl walks the tree recursively.
pub const MAX_ACTIONS: usize = 64;
/// How many `(` a template may have (parenthesised pipelines nest).
pub const MAX_PARENS: usize = 32;
/// PostgreSQL's longest name (NAMEDATALEN - 1), in bytes.
pub const MAX_NAME: usize = 63;

/// Checks a template being written to `config/<name>`: within the
/// limits, it parses, and it renders a valid name for a sample caller
/// (`token`) and role (`role`).
pub fn validate(template: &str) -> Result<(), EngineError> {
    render(template, "token", "role")
        .map(drop)
        .map_err(|e| EngineError::InvalidInput(format!("username_template: {e}")))
}

/// A new user's name from connection `connection`'s template.
pub fn generate(connection: &str, template: &str, display_name: &str, role: &str) -> Result<String, EngineError> {
    render(template, display_name, role).map_err(|e| {
        EngineError::InvalidInput(format!(
            "username_template of config/{connection}, for role {role:?}: {e}; no user was created (fix the template with a write to config/{connection})"
        ))
    })
}

/// The template's output for these fields, checked to be a valid name.
pub fn render(template: &str, display_name: &str, role: &str) -> Result<String, String> {
    limits(template)?;
    let name = catch_unwind(AssertUnwindSafe(|| evaluate(template, display_name, role)))
        .unwrap_or_else(|_| Err("the template could not be evaluated".into()))?;
    check_name(&name)?;
    Ok(name)
}

/// What is refused before the template is parsed.
fn limits(template: &str) -> Result<(), String> {
    if template.len() > MAX_TEMPLATE {
        return Err(format!("the template has {} bytes; at most {MAX_TEMPLATE}", template.len()));
    }
    let actions = template.matches("{{").count();
    if actions > MAX_ACTIONS {
        return Err(format!("the template has {actions} actions ({{{{); at most {MAX_ACTIONS}"));
    }
    let parens = template.matches('(').count();
    if parens > MAX_PARENS {
        return Err(format!("the template has {parens} parentheses; at most {MAX_PARENS}"));
    }
    // A keyword is an identifier: not inside a longer word. Checked on the
    // whole text (strings and text between actions too) so no quoting can
    // hide one from this check and show it to the parser.
    let word = |c: char| c.is_alphanumeric() || c == '_';
    for keyword in ["range", "define", "template", "block"] {
        for (at, _) in template.match_indices(keyword) {
            let before = template[..at].chars().next_back();
            let after = template[at + keyword.len()..].chars().next();
            if !before.is_some_and(word) && !after.is_some_and(word) {
                return Err(format!(
                    "{keyword:?} is not taken here (no range, define, template or block: a user name needs no loop or sub-template)"
                ));
            }
        }
    }
    Ok(())
}

/// PostgreSQL takes the name, and no quoting in the role's statements can
/// be ended by it.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the template gave an empty name".into());
    }
    if let Some(c) = name.chars().find(|&c| matches!(c, '"' | '\'' | '\\' | '$') || c.is_control()) {
        let what = match c {
            '"' => "a double quote".to_string(),
            '\'' => "a single quote".to_string(),
            '\\' => "a backslash".to_string(),
            '$' => "a dollar sign".to_string(),
            c => format!("the control character U+{:04X}", u32::from(c)),
        };
        return Err(format!(
            "the template gave a name with {what}: names may not contain \", ', \\, $, NUL or control characters (they are filled into the role's SQL)"
        ));
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "the template gave a name of {} bytes; PostgreSQL's names take at most {MAX_NAME} (end the pipeline with | truncate {MAX_NAME})",
            name.len()
        ));
    }
    Ok(())
}

/// The output, at most [`MAX_VALUE`] bytes: past that, writing fails.
struct Capped(Vec<u8>);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len().saturating_add(buf.len()) > MAX_VALUE {
            return Err(std::io::Error::other(format!("the template's output is longer than {MAX_VALUE} bytes")));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Vault's functions, and Go's builtins with bounded output.
const FUNCS: &[(&str, Func)] = &[
    ("random", random),
    ("truncate", truncate),
    ("truncate_sha256", truncate_sha256),
    ("uppercase", uppercase),
    ("lowercase", lowercase),
    ("replace", replace),
    ("sha256", sha256),
    ("base64", base64),
    ("unix_time", unix_time),
    ("unix_time_millis", unix_time_millis),
    ("timestamp", timestamp),
    ("uuid", uuid),
    ("printf", printf),
    ("print", print),
    ("println", println),
    ("urlquery", urlquery),
    ("index", index),
];

fn evaluate(template: &str, display_name: &str, role: &str) -> Result<String, String> {
    let mut t = Template::default();
    t.add_funcs(FUNCS);
    t.parse(template)
        .map_err(|e| format!("the template does not parse: {}", one_line(&parse_message(&e.to_string()))))?;
    let data = HashMap::from([
        ("DisplayName".to_string(), Value::from(display_name)),
        ("RoleName".to_string(), Value::from(role)),
    ]);
    let mut out = Capped(Vec::new());
    t.execute(&mut out, &Context::from(Value::Object(data))).map_err(|e| {
        let m = match e {
            // Its message shows the whole data, as Rust prints it.
            gtmpl::error::ExecError::NoFiledFor(field, _) => {
                format!("no field .{field}: the fields are .DisplayName and .RoleName")
            }
            e => e.to_string(),
        };
        // No Rust dump of a value in a message.
        let m = if m.contains("String(") { "a value of the wrong kind (the fields are strings)".into() } else { m };
        format!("the template failed: {}", one_line(&m))
    })?;
    String::from_utf8(out.0).map_err(|_| "the template's output is not UTF-8".into())
}

/// gtmpl's parse error without its `template: <name>:<line>:` prefix
/// (the template has no name, and the line is counted from 2).
fn parse_message(m: &str) -> String {
    let m = match m.strip_prefix("template: :") {
        Some(rest) => rest.split_once(':').map_or(rest, |(_, msg)| msg),
        None => m,
    };
    if m == "NaN" { "a number is too large or not a number".into() } else { m.to_string() }
}

/// A message on one line, of bounded length.
fn one_line(m: &str) -> String {
    let mut s: String = m.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect();
    if m.chars().count() > 300 {
        s.push_str("...");
    }
    s
}

fn fail(m: impl Into<String>) -> FuncError {
    FuncError::Generic(m.into())
}

fn arity(name: &str, args: &[Value], n: usize) -> Result<(), FuncError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(fail(format!("wrong number of args for {name}: want {n} got {}", args.len())))
    }
}

fn text<'a>(name: &str, args: &'a [Value], i: usize) -> Result<&'a str, FuncError> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(fail(format!("{name}: argument {} must be a string", i + 1))),
    }
}

/// A count argument within `min..=MAX_N`.
fn count(name: &str, args: &[Value], i: usize, min: usize) -> Result<usize, FuncError> {
    let n = match args.get(i) {
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .ok_or_else(|| fail(format!("{name}: argument {} must be a whole number", i + 1)))?;
    usize::try_from(n)
        .ok()
        .filter(|n| (min..=MAX_N).contains(n))
        .ok_or_else(|| fail(format!("{name}: {n} is out of range: give {min} to {MAX_N}")))
}

/// A function's result, at most [`MAX_VALUE`] bytes.
fn value(name: &str, s: String) -> Result<Value, FuncError> {
    if s.len() > MAX_VALUE {
        return Err(fail(format!("{name} gave more than {MAX_VALUE} bytes")));
    }
    Ok(Value::from(s))
}

/// `s` cut to at most `n` bytes, at a character boundary.
fn cut(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn random(args: &[Value]) -> Result<Value, FuncError> {
    arity("random", args, 1)?;
    let n = count("random", args, 0, 0)?;
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    Ok(Value::from((0..n).map(|_| char::from(BASE62[rng.gen_range(0..BASE62.len())])).collect::<String>()))
}

fn truncate(args: &[Value]) -> Result<Value, FuncError> {
    arity("truncate", args, 2)?;
    let n = count("truncate", args, 0, 1)?;
    Ok(Value::from(cut(text("truncate", args, 1)?, n)))
}

fn hex_sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Vault's: longer than `n`, the last 8 of `n` bytes become the first 8
/// hex digits of the SHA-256 of what was cut off.
fn truncate_sha256(args: &[Value]) -> Result<Value, FuncError> {
    arity("truncate_sha256", args, 2)?;
    let n = count("truncate_sha256", args, 0, 9)?;
    let s = text("truncate_sha256", args, 1)?;
    if s.len() <= n {
        return Ok(Value::from(s));
    }
    let kept = cut(s, n - 8);
    let hash = hex_sha256(&s[kept.len()..]);
    Ok(Value::from(format!("{kept}{}", &hash[..8])))
}

fn uppercase(args: &[Value]) -> Result<Value, FuncError> {
    arity("uppercase", args, 1)?;
    value("uppercase", text("uppercase", args, 0)?.to_uppercase())
}

fn lowercase(args: &[Value]) -> Result<Value, FuncError> {
    arity("lowercase", args, 1)?;
    value("lowercase", text("lowercase", args, 0)?.to_lowercase())
}

/// `replace OLD NEW`: every OLD in the piped value becomes NEW (an empty
/// OLD matches between characters, as in Go).
fn replace(args: &[Value]) -> Result<Value, FuncError> {
    arity("replace", args, 3)?;
    let (old, new, s) = (text("replace", args, 0)?, text("replace", args, 1)?, text("replace", args, 2)?);
    // The result's length, before building it.
    let matches = if old.is_empty() { s.chars().count().saturating_add(1) } else { s.matches(old).count() };
    let removed = if old.is_empty() { 0 } else { matches.saturating_mul(old.len()) };
    let len = matches.checked_mul(new.len()).and_then(|added| s.len().saturating_sub(removed).checked_add(added));
    if len.is_none_or(|l| l > MAX_VALUE) {
        return Err(fail(format!("replace would give more than {MAX_VALUE} bytes")));
    }
    value("replace", s.replace(old, new))
}

fn sha256(args: &[Value]) -> Result<Value, FuncError> {
    arity("sha256", args, 1)?;
    Ok(Value::from(hex_sha256(text("sha256", args, 0)?)))
}

fn base64(args: &[Value]) -> Result<Value, FuncError> {
    use base64::Engine;
    arity("base64", args, 1)?;
    let s = text("base64", args, 0)?;
    if s.len() > MAX_VALUE / 4 * 3 {
        return Err(fail(format!("base64 would give more than {MAX_VALUE} bytes")));
    }
    value("base64", base64::engine::general_purpose::STANDARD.encode(s))
}

fn unix_time(args: &[Value]) -> Result<Value, FuncError> {
    arity("unix_time", args, 0)?;
    Ok(Value::from(Utc::now().timestamp().to_string()))
}

fn unix_time_millis(args: &[Value]) -> Result<Value, FuncError> {
    arity("unix_time_millis", args, 0)?;
    Ok(Value::from(Utc::now().timestamp_millis().to_string()))
}

fn timestamp(args: &[Value]) -> Result<Value, FuncError> {
    arity("timestamp", args, 1)?;
    let layout = text("timestamp", args, 0)?;
    if layout.len() > MAX_N {
        return Err(fail(format!("timestamp: the layout is longer than {MAX_N} bytes")));
    }
    value("timestamp", go_time(layout, Utc::now()))
}

fn uuid(args: &[Value]) -> Result<Value, FuncError> {
    arity("uuid", args, 0)?;
    Ok(Value::from(uuid::Uuid::new_v4().to_string()))
}

fn print(args: &[Value]) -> Result<Value, FuncError> {
    bounded("print", gtmpl::funcs::print(args)?)
}

fn println(args: &[Value]) -> Result<Value, FuncError> {
    bounded("println", gtmpl::funcs::println(args)?)
}

fn urlquery(args: &[Value]) -> Result<Value, FuncError> {
    bounded("urlquery", gtmpl::funcs::urlquery(args)?)
}

/// Go's `index`, whose error would show the whole value.
fn index(args: &[Value]) -> Result<Value, FuncError> {
    gtmpl::funcs::index(args).map_err(|_| fail("index: no such key or element"))
}

fn bounded(name: &str, v: Value) -> Result<Value, FuncError> {
    match v {
        Value::String(s) => value(name, s),
        v => Ok(v),
    }
}

/// Digits of a printf width or precision, at most [`MAX_N`].
fn digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Option<usize>, FuncError> {
    let mut n: Option<usize> = None;
    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
        chars.next();
        let next = n
            .unwrap_or(0)
            .checked_mul(10)
            .and_then(|v| v.checked_add(d as usize))
            .filter(|&v| v <= MAX_N)
            .ok_or_else(|| fail(format!("printf: a width or precision is larger than {MAX_N}")))?;
        n = Some(next);
    }
    Ok(n)
}

/// A whole number's sign and magnitude.
fn whole(v: &Value) -> Option<(bool, u64)> {
    let Value::Number(n) = v else { return None };
    n.as_i64().map(|i| (i < 0, i.unsigned_abs())).or_else(|| n.as_u64().map(|u| (false, u)))
}

/// Go's `fmt.Sprintf` for the verbs a name needs (see the module's doc).
fn printf(args: &[Value]) -> Result<Value, FuncError> {
    let Some((Value::String(format), values)) = args.split_first() else {
        return Err(fail("printf: the first argument must be the format string"));
    };
    let mut out = String::new();
    let mut used = 0usize;
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut minus, mut zero, mut plus) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => minus = true,
                '0' => zero = true,
                '+' => plus = true,
                _ => break,
            }
            chars.next();
        }
        let width = digits(&mut chars)?.unwrap_or(0);
        let precision = if chars.peek() == Some(&'.') {
            chars.next();
            Some(digits(&mut chars)?.unwrap_or(0))
        } else {
            None
        };
        let verb = chars.next().ok_or_else(|| fail("printf: the format ends inside a verb"))?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        if !matches!(verb, 's' | 'v' | 'd' | 'x' | 'X') {
            return Err(fail(format!("printf: %{verb} is not supported (%s, %v, %d, %x, %X and %% are)")));
        }
        let arg = values.get(used).ok_or_else(|| fail(format!("printf: no value for verb %{verb}")))?;
        used += 1;
        let (body, numeric) = match (verb, arg, whole(arg)) {
            ('s' | 'v', Value::String(s), _) => {
                (precision.map_or(s.clone(), |p| s.chars().take(p).collect::<String>()), false)
            }
            ('s' | 'v', Value::Bool(b), _) => (b.to_string(), false),
            ('s' | 'v' | 'd', _, Some((negative, magnitude))) => {
                let mut d = magnitude.to_string();
                if let Some(p) = precision
                    && d.len() < p
                {
                    d = format!("{}{d}", "0".repeat(p - d.len()));
                }
                let sign = match (negative, plus) {
                    (true, _) => "-",
                    (false, true) => "+",
                    (false, false) => "",
                };
                (format!("{sign}{d}"), precision.is_none())
            }
            ('s' | 'v', Value::Number(n), None) => (n.to_string(), false),
            ('x' | 'X', Value::String(s), _) => {
                let bytes = &s.as_bytes()[..precision.unwrap_or(usize::MAX).min(s.len())];
                let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                (if verb == 'X' { h.to_uppercase() } else { h }, false)
            }
            ('x' | 'X', _, Some((negative, magnitude))) => {
                let h = if verb == 'X' { format!("{magnitude:X}") } else { format!("{magnitude:x}") };
                (format!("{}{h}", if negative { "-" } else { "" }), true)
            }
            _ => {
                return Err(fail(format!(
                    "printf: %{verb} cannot format value {used} (%s and %v take strings, numbers and booleans; %d and %x whole numbers; %x strings too)"
                )));
            }
        };
        let pad = width.saturating_sub(body.chars().count());
        if minus {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && numeric {
            // Zeros go after the sign.
            let (sign, rest) = body.split_at(usize::from(body.starts_with(['-', '+'])));
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(rest);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
        if out.len() > MAX_VALUE {
            return Err(fail(format!("printf gave more than {MAX_VALUE} bytes")));
        }
    }
    if used < values.len() {
        return Err(fail(format!("printf: {} values for {used} verbs", values.len())));
    }
    Ok(Value::from(out))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// `t` (UTC) as Go's `Time.Format(layout)` writes it. The layout
/// elements known: `2006` `06` (year), `01` `1` `Jan` `January`
/// (month), `02` `2` `_2` (day), `002` `__2` (day of the year), `Mon`
/// `Monday`, `15` `03` `3` (hour), `04` `4` (minute), `05` `5` (second),
/// `PM` `pm`, fractions of a second after `.` or `,` (`.000`, `.999`,
/// up to 9 digits), and the zone: `MST` (`UTC`), `Z07:00` `Z0700` `Z07`
/// `Z07:00:00` `Z070000` (`Z`), `-07:00` `-0700` `-07` `-07:00:00`
/// `-070000` (`+00:00`, ...). Anything else is copied as is.
pub fn go_time(layout: &str, t: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut rest = layout;
    let hour12 = match t.hour() % 12 {
        0 => 12,
        h => h,
    };
    while let Some(c) = rest.chars().next() {
        let starts = |p: &str| rest.starts_with(p);
        let (element, len) = match c {
            'J' if starts("January") => (MONTHS[t.month0() as usize].to_string(), 7),
            'J' if starts("Jan") => (MONTHS[t.month0() as usize][..3].to_string(), 3),
            'M' if starts("Monday") => (DAYS[t.weekday().num_days_from_monday() as usize].to_string(), 6),
            'M' if starts("Mon") => (DAYS[t.weekday().num_days_from_monday() as usize][..3].to_string(), 3),
            'M' if starts("MST") => ("UTC".to_string(), 3),
            '0' if starts("01") => (format!("{:02}", t.month()), 2),
            '0' if starts("02") => (format!("{:02}", t.day()), 2),
            '0' if starts("03") => (format!("{hour12:02}"), 2),
            '0' if starts("04") => (format!("{:02}", t.minute()), 2),
            '0' if starts("05") => (format!("{:02}", t.second()), 2),
            '0' if starts("06") => (format!("{:02}", t.year().rem_euclid(100)), 2),
            '0' if starts("002") => (format!("{:03}", t.ordinal()), 3),
            '1' if starts("15") => (format!("{:02}", t.hour()), 2),
            '1' => (t.month().to_string(), 1),
            '2' if starts("2006") => (format!("{:04}", t.year()), 4),
            '2' => (t.day().to_string(), 1),
            '_' if starts("_2006") => ("_".to_string(), 1),
            '_' if starts("__2") => (format!("{:>3}", t.ordinal()), 3),
            '_' if starts("_2") => (format!("{:>2}", t.day()), 2),
            '3' => (hour12.to_string(), 1),
            '4' => (t.minute().to_string(), 1),
            '5' => (t.second().to_string(), 1),
            'P' if starts("PM") => ((if t.hour() >= 12 { "PM" } else { "AM" }).to_string(), 2),
            'p' if starts("pm") => ((if t.hour() >= 12 { "pm" } else { "am" }).to_string(), 2),
            'Z' | '-' => {
                let zone = ["070000", "07:00:00", "0700", "07:00", "07"].into_iter().find(|z| rest[1..].starts_with(z));
                match zone {
                    Some(z) if c == 'Z' => ("Z".to_string(), 1 + z.len()),
                    Some(z) => (format!("+{}", z.replace('7', "0")), 1 + z.len()),
                    None => (c.to_string(), 1),
                }
            }
            '.' | ',' if rest[1..].starts_with(['0', '9']) => {
                let digit = rest[1..].chars().next().unwrap_or('0');
                let run = rest[1..].chars().take_while(|&d| d == digit).count();
                if rest[1 + run..].starts_with(|d: char| d.is_ascii_digit()) {
                    (c.to_string(), 1)
                } else {
                    let nanos = format!("{:09}", t.timestamp_subsec_nanos().min(999_999_999));
                    let frac = &nanos[..run.min(9)];
                    let frac = if digit == '9' { frac.trim_end_matches('0') } else { frac };
                    (if frac.is_empty() { String::new() } else { format!("{c}{frac}") }, 1 + run)
                }
            }
            c => (c.to_string(), c.len_utf8()),
        };
        out.push_str(&element);
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vault's default template for PostgreSQL.
    const VAULT_POSTGRES_DEFAULT: &str = r#"{{ printf "v-%s-%s-%s-%s" (.DisplayName | truncate 8) (.RoleName | truncate 8) (random 20) (unix_time) | truncate 63 }}"#;

    fn ok(template: &str) -> String {
        render(template, "token-with-display-name", "my_custom_database_role")
            .unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    fn err(template: &str) -> String {
        render(template, "token-with-display-name", "my_custom_database_role")
            .err()
            .unwrap_or_else(|| panic!("{template}: rendered"))
    }

    fn is_alnum(s: &str) -> bool {
        s.chars().all(|c| c.is_ascii_alphanumeric())
    }

    #[test]
    fn vaults_default_template_gives_the_engines_own_shape() {
        let now = Utc::now().timestamp();
        let name = render(VAULT_POSTGRES_DEFAULT, "token", "readonly").unwrap();
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 5, "{name}");
        assert_eq!(&parts[..3], ["v", "token", "readonly"]);
        assert!(parts[3].len() == 20 && is_alnum(parts[3]), "{name}");
        let t: i64 = parts[4].parse().unwrap();
        assert!((now..now + 5).contains(&t), "{name}");
        // The same shape as the engine's own naming.
        let (own, _) = crate::pg::new_user("readonly", "token");
        assert_eq!(own.split('-').count(), 5, "{own}");
        assert_eq!(own.split('-').take(3).collect::<Vec<_>>(), ["v", "token", "readonly"]);
        // Long names are cut to 8, and the whole to 63.
        let long = render(VAULT_POSTGRES_DEFAULT, "token-with-display-name", "my_custom_database_role").unwrap();
        assert!(long.starts_with("v-token-wi-my_custo-"), "{long}");
        assert!(long.len() <= 63);
        // Vault's example of truncating (docs: "Truncating to maximum length").
        let v = ok(
            r#"{{printf "v_%s_%s_%s_%s" (.DisplayName | truncate 8) (.RoleName | truncate 8) (random 20) (unix_time) | truncate 45}}"#,
        );
        assert!(v.starts_with("v_token-wi_my_custo_") && v.len() == 45, "{v}");
    }

    #[test]
    fn pipelines_and_fields() {
        assert_eq!(ok("{{.DisplayName}}_{{.RoleName}}"), "token-with-display-name_my_custom_database_role");
        assert_eq!(ok("{{ .DisplayName | replace \"-\" \"_\" | uppercase | truncate 10 }}"), "TOKEN_WITH");
        assert_eq!(ok("{{ truncate 3 .RoleName }}"), "my_", "called, not piped");
        assert_eq!(ok("{{ $r := .RoleName | truncate 5 }}{{ $r }}-{{ $r | uppercase }}"), "my_cu-MY_CU");
        assert_eq!(ok("{{ if eq .RoleName \"my_custom_database_role\" }}yes{{ else }}no{{ end }}"), "yes");
        assert_eq!(ok("{{ with .RoleName }}{{ . | truncate 2 }}{{ end }}"), "my");
        assert_eq!(ok("a{{/* a comment */}}b {{- \" c\" -}} d"), "ab cd");
        // Vault's example of custom functions, with a fixed time below.
        assert_eq!(
            ok(r#"FOO_{{.DisplayName | replace "-" "_" | uppercase}}_{{.RoleName | replace "-" "_" | uppercase}}"#),
            "FOO_TOKEN_WITH_DISPLAY_NAME_MY_CUSTOM_DATABASE_ROLE"
        );
        // The display name is passed through as given.
        assert_eq!(render("{{.DisplayName}}", "Some User@x", "r").unwrap(), "Some User@x");
    }

    #[test]
    fn each_function() {
        let r = ok("{{ random 30 }}");
        assert!(r.len() == 30 && is_alnum(&r), "{r}");
        assert_ne!(ok("{{ random 30 }}"), r);
        assert_eq!(ok("x{{ random 0 }}"), "x");
        assert_eq!(ok("{{ \"abcdef\" | truncate 3 }}"), "abc");
        assert_eq!(ok("{{ \"ab\" | truncate 3 }}"), "ab");
        assert_eq!(ok("{{ \"aé\" | truncate 2 }}"), "a", "cut at a character boundary");
        // Vault's documented example.
        assert_eq!(ok("{{ \"abcdefghijklmnopqrstuvwxyz\" | truncate_sha256 20 }}"), "abcdefghijkl872808ff");
        assert_eq!(ok("{{ \"short\" | truncate_sha256 20 }}"), "short");
        assert_eq!(ok("{{ \"MiXeD\" | uppercase }}"), "MIXED");
        assert_eq!(ok("{{ \"MiXeD\" | lowercase }}"), "mixed");
        assert_eq!(ok("{{ \"a-b-c\" | replace \"-\" \"__\" }}"), "a__b__c");
        assert_eq!(
            ok("{{ \"ab\" | replace \"\" \"_\" }}"),
            "_a_b_",
            "an empty OLD matches between characters, as in Go"
        );
        assert_eq!(
            ok("{{ \"abc\" | sha256 | truncate 63 }}"),
            &"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"[..63]
        );
        assert_eq!(ok("{{ \"hello\" | base64 }}"), "aGVsbG8=");
        let now = Utc::now();
        let t: i64 = ok("{{ unix_time }}").parse().unwrap();
        assert!((now.timestamp()..now.timestamp() + 5).contains(&t));
        let ms: i64 = ok("{{ unix_time_millis }}").parse().unwrap();
        assert!((now.timestamp_millis()..now.timestamp_millis() + 5000).contains(&ms));
        let u = ok("{{ uuid }}");
        assert!(uuid::Uuid::parse_str(&u).is_ok() && u.len() == 36, "{u}");
        let ts = ok("{{ timestamp \"2006-01-02T15:04:05Z07:00\" }}");
        let parsed = DateTime::parse_from_rfc3339(&ts).unwrap();
        assert!((parsed.timestamp() - now.timestamp()).abs() < 5 && ts.ends_with('Z'), "{ts}");
        assert_eq!(ok("{{ printf \"%s-%d-%v\" \"a\" 42 true }}"), "a-42-true");
        assert_eq!(
            ok("{{ printf \"%5s|%-4s|%.2s|%05d|%+d|%x|%X|%%\" \"ab\" \"c\" \"xyz\" -42 7 \"hi\" 255 }}"),
            "   ab|c   |xy|-0042|+7|6869|FF|%"
        );
        assert_eq!(ok("{{ print \"a\" \"b\" }}"), "ab");
        assert_eq!(ok("{{ \"a b\" | urlquery }}"), "a%20b");
        assert_eq!(ok("{{ len .RoleName }}"), "23");
    }

    #[test]
    fn go_time_layouts() {
        // Vault's docs' example time: 2009-02-13 23:31:30 UTC.
        let t = DateTime::from_timestamp(1_234_567_890, 123_456_000).unwrap();
        assert_eq!(go_time("2006-01-02T15:04:05Z07:00", t), "2009-02-13T23:31:30Z");
        assert_eq!(go_time("2006-01-02T15:04:05-07:00", t), "2009-02-13T23:31:30+00:00");
        assert_eq!(go_time("20060102150405", t), "20090213233130");
        assert_eq!(go_time("2006_01_02T15_04_05Z", t), "2009_02_13T23_31_30Z");
        assert_eq!(go_time("Mon Jan _2 15:04:05 MST 2006", t), "Fri Feb 13 23:31:30 UTC 2009");
        assert_eq!(go_time("Monday, January 2, 06 3:4:5 PM pm", t), "Friday, February 13, 09 11:31:30 PM pm");
        assert_eq!(go_time("15:04:05.000", t), "23:31:30.123");
        assert_eq!(go_time("15:04:05.999999999", t), "23:31:30.123456");
        assert_eq!(go_time("05.000000-0700", t), "30.123456+0000");
        assert_eq!(go_time("002 __2 _2006", t), "044  44 _2009");
        assert_eq!(go_time("x.0y", t), "x.1y");
        assert_eq!(go_time("v.01", t), "v.02", "a run of zeros followed by a digit is not a fraction (01: the month)");
        let on_the_second = DateTime::from_timestamp(1_234_567_890, 0).unwrap();
        assert_eq!(go_time("05.999", on_the_second), "30");
        assert_eq!(go_time("03PM é", DateTime::from_timestamp(1_234_483_200, 0).unwrap()), "12AM é");
    }

    #[test]
    fn bad_templates_are_refused_at_write() {
        for (template, why) in [
            ("", "empty name"),
            ("{{ nope 3 }}", "function nope not defined"),
            ("{{ \"unterminated }}", "does not parse"),
            ("{{ .Missing }}", "no field .Missing: the fields are .DisplayName and .RoleName"),
            ("{{ truncate 0 .RoleName }}", "0 is out of range"),
            ("{{ .RoleName | truncate -1 }}", "-1 is out of range"),
            ("{{ .RoleName | truncate \"8\" }}", "must be a whole number"),
            ("{{ truncate_sha256 8 .RoleName }}", "out of range: give 9"),
            ("{{ random }}", "wrong number of args for random: want 1 got 0"),
            ("{{ printf \"%s %s\" \"a\" }}", "no value for verb %s"),
            ("{{ printf \"%s\" \"a\" \"b\" }}", "2 values for 1 verbs"),
            ("{{ printf \"%d\" \"a\" }}", "%d cannot format value 1"),
            ("{{ printf \"%q\" \"a\" }}", "%q is not supported"),
            ("{{ printf \"%*d\" 5 1 }}", "%* is not supported"),
            ("{{ printf \"%[1]s\" \"a\" }}", "%[ is not supported"),
            ("{{ range . }}x{{ end }}", "\"range\" is not taken"),
            ("{{ define \"x\" }}a{{ end }}{{ template \"x\" }}", "\"define\" is not taken"),
            ("{{ block \"x\" . }}a{{ end }}", "\"block\" is not taken"),
            ("{{ \"a\" }}{{ \" }}{{template \"x\"}} \" }}", "\"template\" is not taken"),
            ("{{ . }}", "double quote"),
            ("{{ print \"a'b\" }}", "single quote"),
            ("{{ index . \"x\" }}", "index: no such key or element"),
            ("{{ printf \"%s\" (index . \"RoleName\") }}{{ .RoleName.X }}", "only maps and objects have fields"),
            (VAULT_POSTGRES_DEFAULT.replace("| truncate 63 ", "").as_str(), ""),
        ] {
            match validate(template) {
                Err(EngineError::InvalidInput(m)) => {
                    assert!(m.starts_with("username_template: ") && m.contains(why), "{template}: {m}");
                    assert!(!m.contains('\n') && !m.contains("String("), "one line, no Rust dump: {m}");
                }
                Err(e) => panic!("{template}: {e}"),
                Ok(()) => assert!(why.is_empty(), "{template}: taken"),
            }
        }
        // Words that only contain a keyword are not refused.
        assert_eq!(ok("orange_{{ \"ranger\" }}_blocks"), "orange_ranger_blocks");
        assert!(validate(VAULT_POSTGRES_DEFAULT).is_ok());
    }

    #[test]
    fn names_the_sql_cannot_take_are_refused_at_issue() {
        let t = "v_{{ .DisplayName }}_{{ random 4 }}";
        assert!(validate(t).is_ok(), "fine for the sample caller");
        for (display, why) in [
            ("a\"b", "double quote"),
            ("a'b", "single quote"),
            ("a\\b", "backslash"),
            ("a$$b", "dollar sign"),
            ("a\0b", "U+0000"),
            ("a\nb", "U+000A"),
            ("a\u{7f}b", "U+007F"),
            (&"x".repeat(60), "of 67 bytes"),
        ] {
            match generate("app", t, display, "r") {
                Err(EngineError::InvalidInput(m)) => {
                    assert!(m.contains(why) && m.contains("config/app") && m.contains("no user was created"), "{m}");
                    assert!(!m.contains('\n') && !m.contains('\0'), "{m:?}");
                }
                other => panic!("{display:?}: {:?}", other.map_err(|e| e.to_string())),
            }
        }
        // 63 bytes is the most.
        assert_eq!(generate("app", "{{ .DisplayName }}", &"x".repeat(63), "r").unwrap().len(), 63);
        assert!(generate("app", "{{ .DisplayName }}", &"x".repeat(64), "r").is_err());
        // A long display name cut by the template is fine.
        assert!(
            generate("app", VAULT_POSTGRES_DEFAULT, &"y".repeat(10_000), "r").unwrap().starts_with("v-yyyyyyyy-r-")
        );
    }

    #[test]
    fn limits_are_kept_and_enforced() {
        // The template's length.
        let pad = |n: usize| format!("{{{{/*{}*/}}}}x", " ".repeat(n - 9));
        assert_eq!(pad(MAX_TEMPLATE).len(), MAX_TEMPLATE);
        assert_eq!(render(&pad(MAX_TEMPLATE), "t", "r").unwrap(), "x");
        assert!(err_of(&pad(MAX_TEMPLATE + 1)).contains("at most 4096"));
        // random N and truncate N.
        assert_eq!(ok("{{ random 1024 | truncate 5 }}").len(), 5);
        assert!(err("{{ random 1025 | truncate 5 }}").contains("1025 is out of range: give 0 to 1024"));
        assert_eq!(ok("{{ .RoleName | truncate 1024 }}"), "my_custom_database_role");
        assert!(err("{{ .RoleName | truncate 1025 }}").contains("1025 is out of range"));
        let huge = err("{{ .RoleName | truncate 99999999999999999999 }}");
        assert!(huge.contains("does not parse: a number is too large"), "{huge}");
        assert_eq!(ok("{{ .RoleName | truncate_sha256 1024 }}"), "my_custom_database_role");
        assert!(err("{{ .RoleName | truncate_sha256 1025 }}").contains("out of range"));
        // printf widths.
        assert_eq!(ok("{{ printf \"%1024s\" \"a\" | truncate 3 }}"), "   ");
        assert!(err("{{ printf \"%1025s\" \"a\" | truncate 3 }}").contains("larger than 1024"));
        assert!(err("{{ printf \"%.99999999999999999999s\" \"a\" }}").contains("larger than 1024"));
        // Each value and the output: growth is stopped at 4096 bytes.
        assert_eq!(ok("{{ random 1024 | base64 | base64 | truncate 4 }}").len(), 4, "1824 bytes");
        assert!(
            err("{{ random 1024 | base64 | base64 | base64 | base64 | base64 | base64 }}").contains("more than 4096")
        );
        assert!(
            err("{{ random 100 | replace \"\" \"0123456789012345678901234567890123456789\" }}")
                .contains("more than 4096")
        );
        assert_eq!(
            ok("{{ random 60 | replace \"\" \"0123456789012345678901234567890123456789\" | truncate 2 }}").len(),
            2
        );
        let x = "{{ $a := random 1024 }}{{ $a := printf \"%s%s\" $a $a }}{{ $a := printf \"%s%s\" $a $a }}";
        assert!(ok(&format!("{x}{{{{ $a | truncate 3 }}}}")).len() == 3, "4096 bytes");
        assert!(err(&format!("{x}{{{{ $a := printf \"%s%s\" $a $a }}}}")).contains("printf gave more than 4096"));
        let out = format!("{x}{{{{ $a }}}}{{{{ $a }}}}");
        assert!(err(&out).contains("output is longer than 4096"), "{}", err(&out));
        // Actions and parentheses, which nest.
        let ifs = |n: usize| format!("{}x{}", "{{ if 1 }}".repeat(n / 2), "{{ end }}".repeat(n / 2));
        assert_eq!(ok(&ifs(MAX_ACTIONS)), "x");
        assert!(err(&ifs(MAX_ACTIONS + 2)).contains("66 actions"));
        let parens = |n: usize| format!("{{{{ {}\"x\"{} }}}}", "(print ".repeat(n), ")".repeat(n));
        assert_eq!(ok(&parens(MAX_PARENS)), "x");
        assert!(err(&parens(MAX_PARENS + 1)).contains("33 parentheses"));
    }

    fn err_of(template: &str) -> String {
        render(template, "t", "r").err().unwrap_or_default()
    }
}
