//! `username_template`: Vault's username templates, so a Vault
//! connection's setting ports as written.
//!
//! A template is Go `text/template`, parsed and run by the `gotmpl` crate
//! (a port of Go's `text/template`: no unsafe code, no threads, a lexer
//! that always advances or fails), with the fields `.DisplayName` (the
//! caller's display name, sanitized as Vault's token store does: every
//! character outside `[a-zA-Z0-9-]` becomes `-`) and `.RoleName`, Vault's
//! functions (`random`, `truncate`, `truncate_sha256`, `uppercase`,
//! `lowercase`, `replace`, `sha256`, `base64`, `unix_time`,
//! `unix_time_millis`, `timestamp`, `uuid`) and Go's builtins (`printf`,
//! `print`, `println`, `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `and`, `or`,
//! `not`, `len`, `index`, `slice`, `html`, `js`, `urlquery`, `if`, `with`,
//! pipelines, variables, ...).
//!
//! Differences from Vault, all on the side of refusing:
//! - The words `range`, `define`, `template` and `block` are refused
//!   anywhere in a template (a name needs no loop or sub-template; they
//!   would let a template run or recurse without bound), and so is `call`.
//! - A function no template could call is refused when the template is
//!   written, even in a branch the sample caller does not take.
//! - Limits: a template of at most [`MAX_TEMPLATE`] bytes, [`MAX_ACTIONS`]
//!   `{{`, [`MAX_PARENS`] `(`; `random N`, `truncate N`,
//!   `truncate_sha256 N` and printf widths at most [`MAX_N`]; every
//!   function's result and the whole output at most [`MAX_VALUE`] bytes.
//! - `printf` is the engine's own (gotmpl's is Go's, but bounds widths only
//!   at 65,535 each): it takes `%s`, `%v`, `%d`, `%x`, `%X` and `%%`, with
//!   the flags `-`, `0` and `+`, a width and a precision written as digits;
//!   a wrong type or count of values is an error (Go would print
//!   `%!s(...)`).
//! - `index` of a key or element that is not there is an error (Go gives
//!   the zero value, which prints as `<no value>`).
//! - `truncate N` keeps at most N bytes, cut at a character boundary (Go
//!   cuts bytes, and can split a character).
//! - `timestamp` formats the time in UTC; see [`go_time`] for the layout
//!   elements it knows.
//! - The result must be 1 to 63 bytes of printable ASCII (space to `~`)
//!   with no `"`, `'`, `\` or `$`: it is filled into the role's SQL, quoted
//!   there by the statements' writer, so those characters could end the
//!   quoting (`$` ends dollar quoting), and no control, format or
//!   direction character (U+202E) can hide what a name is.
//! - A template written to a connection must make a new name each time:
//!   one that gives one name for one caller and role at several times (no
//!   `random`, no time) is refused, since a second credential would be
//!   the same user as the first.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeDelta, Timelike, Utc};
use gotmpl::parse::{Expr, ListNode, Node, Parser, PipeNode};
use gotmpl::{FuncMap, MissingKey, Template, TemplateError, Value, ValueFunc};
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
/// one deeper, and the parser and executor walk the tree recursively.
pub const MAX_ACTIONS: usize = 64;
/// How many `(` a template may have (parenthesised pipelines nest).
pub const MAX_PARENS: usize = 32;
/// PostgreSQL's longest name (NAMEDATALEN - 1), in bytes.
pub const MAX_NAME: usize = 63;
/// How many times [`validate`] renders a template, at instants 1.001 s
/// apart, looking for two different names.
const UNIQUENESS_TRIES: u32 = 4;

/// Checks a template being written to `config/<name>`: within the
/// limits, it parses, it renders a valid name for a sample caller
/// (`token`) and role (`role`), and not the same name every time.
pub fn validate(template: &str) -> Result<(), EngineError> {
    let bad = |e: String| EngineError::InvalidInput(format!("username_template: {e}"));
    let now = Utc::now();
    let first = render_at(template, "token", "role", now).map_err(bad)?;
    for i in 1..UNIQUENESS_TRIES {
        let later = now + TimeDelta::milliseconds(1001 * i64::from(i));
        if render_at(template, "token", "role", later).map_err(bad)? != first {
            return Ok(());
        }
    }
    Err(bad(format!(
        "it gives the same name (\"{first}\") each time for one caller and role, so a second credential would be the first one's user: make each name new, e.g. with {{{{ random 20 }}}} (or unix_time_millis, uuid)"
    )))
}

/// A new user's name from connection `connection`'s template, for the
/// caller whose display name is `display_name` (sanitized first, see
/// [`sanitize_display_name`]).
pub fn generate(connection: &str, template: &str, display_name: &str, role: &str) -> Result<String, EngineError> {
    render(template, &sanitize_display_name(display_name), role).map_err(|e| {
        EngineError::InvalidInput(format!(
            "username_template of config/{connection}, for role {role:?}: {e}; no user was created (fix the template with a write to config/{connection})"
        ))
    })
}

/// A display name as Vault's token store keeps it (`displayNameSanitize`):
/// every character outside `[a-zA-Z0-9-]` becomes `-`.
pub fn sanitize_display_name(display_name: &str) -> String {
    display_name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect()
}

/// The template's output for these fields (as given), checked to be a
/// valid name.
pub fn render(template: &str, display_name: &str, role: &str) -> Result<String, String> {
    render_at(template, display_name, role, Utc::now())
}

/// [`render`] with the clock of `unix_time`, `unix_time_millis` and
/// `timestamp` at `now`.
fn render_at(template: &str, display_name: &str, role: &str, now: DateTime<Utc>) -> Result<String, String> {
    limits(template)?;
    let name = catch_unwind(AssertUnwindSafe(|| evaluate(template, display_name, role, now)))
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

/// Whether `c` may be in a generated name: printable ASCII, and none of
/// the characters that could end the quoting the name is filled into.
fn name_char(c: char) -> bool {
    matches!(c, ' '..='~') && !matches!(c, '"' | '\'' | '\\' | '$')
}

/// PostgreSQL takes the name, no quoting in the role's statements can be
/// ended by it, and nothing in it is invisible or reorders what is shown.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the template gave an empty name".into());
    }
    if let Some(c) = name.chars().find(|&c| !name_char(c)) {
        let what = match c {
            '"' => "a double quote".to_string(),
            '\'' => "a single quote".to_string(),
            '\\' => "a backslash".to_string(),
            '$' => "a dollar sign".to_string(),
            c if c.is_control() => format!("the control character U+{:04X}", u32::from(c)),
            c => format!("the character U+{:04X}", u32::from(c)),
        };
        return Err(format!(
            "the template gave a name with {what}: names take printable ASCII (space to ~) but \", ', \\ and $ (they are filled into the role's SQL); use replace or truncate in the template"
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
#[derive(Default)]
struct Capped {
    out: String,
    over: bool,
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.out.len().saturating_add(s.len()) > MAX_VALUE {
            self.over = true;
            return Err(std::fmt::Error);
        }
        self.out.push_str(s);
        Ok(())
    }
}

/// A template function of the engine's.
type Func = fn(&[Value]) -> gotmpl::Result<Value>;

/// Vault's functions, and Go's builtins with bounded output, by name; the
/// clock functions read `now`.
fn funcs(now: DateTime<Utc>) -> FuncMap {
    let fixed: [(&str, Func); 14] = [
        ("random", random),
        ("truncate", truncate),
        ("truncate_sha256", truncate_sha256),
        ("uppercase", uppercase),
        ("lowercase", lowercase),
        ("replace", replace),
        ("sha256", sha256),
        ("base64", base64),
        ("uuid", uuid),
        ("printf", printf),
        ("print", print),
        ("println", println),
        ("index", index),
        ("urlquery", urlquery),
    ];
    let mut m = FuncMap::new();
    for (name, f) in fixed {
        m.insert(name.into(), Arc::new(f) as ValueFunc);
    }
    m.insert("html".into(), Arc::new(html));
    m.insert("js".into(), Arc::new(js));
    m.insert("unix_time".into(), Arc::new(move |args: &[Value]| unix_time(args, now)));
    m.insert("unix_time_millis".into(), Arc::new(move |args: &[Value]| unix_time_millis(args, now)));
    m.insert("timestamp".into(), Arc::new(move |args: &[Value]| timestamp(args, now)));
    m
}

/// gotmpl's builtins a template may call as they are (none can grow a
/// value: comparisons, logic, `len` and `slice`). `call` is not among them:
/// the fields hold no functions.
const BUILTINS: [&str; 11] = ["eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "slice"];

fn known_function(name: &str, ours: &FuncMap) -> bool {
    BUILTINS.contains(&name) || ours.contains_key(name)
}

/// Every function the tree calls is known, and it has no loop or
/// sub-template.
fn check_tree(list: &ListNode, ours: &FuncMap) -> Result<(), String> {
    for node in &list.nodes {
        match node {
            Node::List(l) => check_tree(l, ours)?,
            Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
            Node::Action(a) => check_pipe(&a.pipe, ours)?,
            Node::If(b) | Node::With(b) => {
                check_pipe(&b.pipe, ours)?;
                check_tree(&b.body, ours)?;
                if let Some(e) = &b.else_body {
                    check_tree(e, ours)?;
                }
            }
            Node::Range(_) | Node::Template(_) | Node::Define(_) => {
                return Err("no range, define, template or block: a user name needs no loop or sub-template".into());
            }
        }
    }
    Ok(())
}

fn check_pipe(pipe: &PipeNode, ours: &FuncMap) -> Result<(), String> {
    pipe.commands.iter().flat_map(|c| &c.args).try_for_each(|e| check_expr(e, ours))
}

fn check_expr(e: &Expr, ours: &FuncMap) -> Result<(), String> {
    match e {
        Expr::Identifier(_, name) if !known_function(name, ours) => Err(format!(
            "function {name} not defined (Vault's: random, truncate, truncate_sha256, uppercase, lowercase, replace, sha256, base64, unix_time, unix_time_millis, timestamp, uuid; Go's: printf, print, println, eq, ne, lt, le, gt, ge, and, or, not, len, index, slice, html, js, urlquery)"
        )),
        Expr::Pipe(_, p) => check_pipe(p, ours),
        Expr::Chain(_, inner, _) => check_expr(inner, ours),
        _ => Ok(()),
    }
}

/// gotmpl's parser stops, without an error, at an `{{ end }}` or `{{ else }}`
/// outside any `if` or `with`, dropping the rest of the template, and
/// takes an `if` or `with` the template ends inside (Go refuses both).
/// Parsed again with an action of its own appended, the template must end
/// with that action, at the top.
fn parsed_to_the_end(template: &str) -> Result<(), String> {
    let sentinel = format!("kb-end-{}", uuid::Uuid::new_v4());
    let probe = format!("{template}{{{{ \"{sentinel}\" }}}}");
    let stray = || {
        "the template does not parse: each if and with needs its end, and no end or else may stand outside one"
            .to_string()
    };
    let (tree, _) = Parser::new(&probe, "{{", "}}").and_then(|p| p.parse()).map_err(|_| stray())?;
    let last = match tree.nodes.last() {
        Some(Node::Action(a)) => a.pipe.commands.as_slice(),
        _ => &[],
    };
    match last {
        [command] if matches!(command.args.as_slice(), [Expr::String(_, s)] if **s == *sentinel) => Ok(()),
        _ => Err(stray()),
    }
}

/// A parse error on one line, with its place, and the parser's token
/// names in words.
fn parse_error(e: &TemplateError) -> String {
    match e {
        TemplateError::Parse { line, col, message, .. } | TemplateError::Lex { line, col, message, .. } => {
            let at = if *line == 0 { String::new() } else { format!(" (line {line}, column {col})") };
            let message = if message.starts_with("template nesting depth") {
                "the template nests too deeply".to_string()
            } else {
                readable(message)
            };
            format!("the template does not parse: {}{at}", one_line(&message))
        }
        e => format!("the template does not parse: {}", one_line(&e.to_string())),
    }
}

/// gotmpl's token kinds (as its messages print them) in words.
fn readable(message: &str) -> String {
    const KINDS: [(&str, &str); 31] = [
        ("LeftDelim", "{{"),
        ("RightDelim", "}}"),
        ("LeftTrimDelim", "{{-"),
        ("RightTrimDelim", "-}}"),
        ("Dot", "."),
        ("Field", "a field"),
        ("Variable", "a variable"),
        ("Identifier", "a function name"),
        ("String", "a string"),
        ("Number", "a number"),
        ("Bool", "true or false"),
        ("Nil", "nil"),
        ("Char", "a character"),
        ("Pipe", "|"),
        ("Comma", ","),
        ("Assign", "="),
        ("Declare", ":="),
        ("LeftParen", "("),
        ("RightParen", ")"),
        ("If", "if"),
        ("Else", "else"),
        ("End", "end"),
        ("Range", "range"),
        ("With", "with"),
        ("Define", "define"),
        ("Template", "template"),
        ("Block", "block"),
        ("Break", "break"),
        ("Continue", "continue"),
        ("Eof", "the end of the template"),
        ("Text", "text"),
    ];
    // The token's text, as Rust quotes it: the place says where.
    let mut message = message.to_string();
    while let Some(start) = message.find(" (\"") {
        match message[start + 3..].find("\")").map(|end| start + 3 + end + 2) {
            Some(end) => message.replace_range(start..end, ""),
            None => break,
        }
    }
    let mut out = String::with_capacity(message.len());
    for (i, word) in message.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let (bare, tail) = match word.strip_suffix([',', ':']) {
            Some(bare) => (bare, &word[bare.len()..]),
            None => (word, ""),
        };
        match KINDS.iter().find(|(k, _)| *k == bare) {
            Some((_, words)) => {
                out.push_str(words);
                out.push_str(tail);
            }
            None => out.push_str(word),
        }
    }
    out
}

/// An execution error on one line, without Rust's dumps.
fn exec_error(e: &TemplateError, over: bool) -> String {
    let m = match e {
        _ if over => format!("the template's output is longer than {MAX_VALUE} bytes"),
        TemplateError::MissingKey { key } => {
            format!("no field .{key}: the fields are .DisplayName and .RoleName")
        }
        TemplateError::Exec(m) => m.clone(),
        TemplateError::UndefinedFunction(name) => format!("function {name} not defined"),
        TemplateError::FuncPanic { name, .. } => format!("{name} failed"),
        TemplateError::RecursionLimit => "the template nests too deeply".into(),
        TemplateError::RangeIterLimit => "the template loops too long".into(),
        e => e.to_string(),
    };
    format!("the template failed: {}", one_line(&m))
}

fn evaluate(template: &str, display_name: &str, role: &str, now: DateTime<Utc>) -> Result<String, String> {
    let ours = funcs(now);
    let (tree, defines) = Parser::new(template, "{{", "}}").and_then(|p| p.parse()).map_err(|e| parse_error(&e))?;
    if !defines.is_empty() {
        return Err("the template does not parse: no define or block: a user name needs no sub-template".into());
    }
    parsed_to_the_end(template)?;
    check_tree(&tree, &ours).map_err(|m| format!("the template does not parse: {m}"))?;
    let t = Template::new("")
        .missing_key(MissingKey::Error)
        // No range is taken (above); a bound all the same.
        .max_range_iters(u64::try_from(MAX_VALUE).unwrap_or(u64::MAX))
        .funcs(ours)
        .parse(template)
        .map_err(|e| parse_error(&e))?;
    let data = Value::from(BTreeMap::from([
        ("DisplayName".to_string(), Value::from(display_name)),
        ("RoleName".to_string(), Value::from(role)),
    ]));
    let mut out = Capped::default();
    t.execute_fmt(&mut out, &data).map_err(|e| exec_error(&e, out.over))?;
    Ok(out.out)
}

/// A message on one line, of bounded length.
fn one_line(m: &str) -> String {
    let mut s: String = m.chars().map(|c| if c.is_control() { ' ' } else { c }).take(300).collect();
    if m.chars().count() > 300 {
        s.push_str("...");
    }
    s
}

fn fail(m: impl Into<String>) -> TemplateError {
    TemplateError::Exec(m.into())
}

fn arity(name: &str, args: &[Value], n: usize) -> gotmpl::Result<()> {
    if args.len() == n {
        Ok(())
    } else {
        Err(fail(format!("wrong number of args for {name}: want {n} got {}", args.len())))
    }
}

fn text<'a>(name: &str, args: &'a [Value], i: usize) -> gotmpl::Result<&'a str> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(fail(format!("{name}: argument {} must be a string", i + 1))),
    }
}

/// A count argument within `min..=MAX_N`.
fn count(name: &str, args: &[Value], i: usize, min: usize) -> gotmpl::Result<usize> {
    let out_of_range = |n: &dyn std::fmt::Display| fail(format!("{name}: {n} is out of range: give {min} to {MAX_N}"));
    match args.get(i) {
        Some(Value::Int(n)) => {
            usize::try_from(*n).ok().filter(|n| (min..=MAX_N).contains(n)).ok_or_else(|| out_of_range(n))
        }
        Some(Value::Uint(n)) => {
            usize::try_from(*n).ok().filter(|n| (min..=MAX_N).contains(n)).ok_or_else(|| out_of_range(n))
        }
        _ => Err(fail(format!("{name}: argument {} must be a whole number", i + 1))),
    }
}

/// A function's result, at most [`MAX_VALUE`] bytes.
fn value(name: &str, s: String) -> gotmpl::Result<Value> {
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

fn random(args: &[Value]) -> gotmpl::Result<Value> {
    arity("random", args, 1)?;
    let n = count("random", args, 0, 0)?;
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    Ok(Value::from((0..n).map(|_| char::from(BASE62[rng.gen_range(0..BASE62.len())])).collect::<String>()))
}

fn truncate(args: &[Value]) -> gotmpl::Result<Value> {
    arity("truncate", args, 2)?;
    let n = count("truncate", args, 0, 1)?;
    Ok(Value::from(cut(text("truncate", args, 1)?, n)))
}

fn hex_sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().fold(String::with_capacity(64), |mut h, b| {
        let _ = write!(h, "{b:02x}");
        h
    })
}

/// Vault's: longer than `n`, the last 8 of `n` bytes become the first 8
/// hex digits of the SHA-256 of what was cut off.
fn truncate_sha256(args: &[Value]) -> gotmpl::Result<Value> {
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

fn uppercase(args: &[Value]) -> gotmpl::Result<Value> {
    arity("uppercase", args, 1)?;
    value("uppercase", text("uppercase", args, 0)?.to_uppercase())
}

fn lowercase(args: &[Value]) -> gotmpl::Result<Value> {
    arity("lowercase", args, 1)?;
    value("lowercase", text("lowercase", args, 0)?.to_lowercase())
}

/// `replace OLD NEW`: every OLD in the piped value becomes NEW (an empty
/// OLD matches between characters, as in Go).
fn replace(args: &[Value]) -> gotmpl::Result<Value> {
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

fn sha256(args: &[Value]) -> gotmpl::Result<Value> {
    arity("sha256", args, 1)?;
    Ok(Value::from(hex_sha256(text("sha256", args, 0)?)))
}

fn base64(args: &[Value]) -> gotmpl::Result<Value> {
    use base64::Engine;
    arity("base64", args, 1)?;
    let s = text("base64", args, 0)?;
    if s.len() > MAX_VALUE / 4 * 3 {
        return Err(fail(format!("base64 would give more than {MAX_VALUE} bytes")));
    }
    value("base64", base64::engine::general_purpose::STANDARD.encode(s))
}

fn unix_time(args: &[Value], now: DateTime<Utc>) -> gotmpl::Result<Value> {
    arity("unix_time", args, 0)?;
    Ok(Value::from(now.timestamp().to_string()))
}

fn unix_time_millis(args: &[Value], now: DateTime<Utc>) -> gotmpl::Result<Value> {
    arity("unix_time_millis", args, 0)?;
    Ok(Value::from(now.timestamp_millis().to_string()))
}

fn timestamp(args: &[Value], now: DateTime<Utc>) -> gotmpl::Result<Value> {
    arity("timestamp", args, 1)?;
    let layout = text("timestamp", args, 0)?;
    if layout.len() > MAX_N {
        return Err(fail(format!("timestamp: the layout is longer than {MAX_N} bytes")));
    }
    value("timestamp", go_time(layout, now))
}

fn uuid(args: &[Value]) -> gotmpl::Result<Value> {
    arity("uuid", args, 0)?;
    Ok(Value::from(uuid::Uuid::new_v4().to_string()))
}

/// Go's `fmt.Sprint` (a space between two operands when neither is a
/// string), or `fmt.Sprintln` (a space between every two, and a newline),
/// at most [`MAX_VALUE`] bytes.
fn sprint(name: &str, args: &[Value], line: bool) -> gotmpl::Result<String> {
    let mut out = Capped::default();
    for (i, arg) in args.iter().enumerate() {
        let spaced =
            line || !matches!((&args[i.saturating_sub(1)], arg), (Value::String(_), _) | (_, Value::String(_)));
        if i > 0 && spaced {
            out.write_str(" ").map_err(|_| fail(format!("{name} gave more than {MAX_VALUE} bytes")))?;
        }
        write!(out, "{arg}").map_err(|_| fail(format!("{name} gave more than {MAX_VALUE} bytes")))?;
    }
    if line {
        out.write_str("\n").map_err(|_| fail(format!("{name} gave more than {MAX_VALUE} bytes")))?;
    }
    Ok(out.out)
}

fn print(args: &[Value]) -> gotmpl::Result<Value> {
    Ok(Value::from(sprint("print", args, false)?))
}

fn println(args: &[Value]) -> gotmpl::Result<Value> {
    Ok(Value::from(sprint("println", args, true)?))
}

/// The text Go's escapers take: one string as it is, else `fmt.Sprint`.
fn escaper_input(name: &str, args: &[Value]) -> gotmpl::Result<String> {
    match args {
        [Value::String(s)] => Ok(s.to_string()),
        args => sprint(name, args, false),
    }
}

fn urlquery(args: &[Value]) -> gotmpl::Result<Value> {
    value("urlquery", gotmpl::url_encode(&escaper_input("urlquery", args)?))
}

fn html(args: &[Value]) -> gotmpl::Result<Value> {
    value("html", gotmpl::html_escape(&escaper_input("html", args)?))
}

fn js(args: &[Value]) -> gotmpl::Result<Value> {
    value("js", gotmpl::js_escape(&escaper_input("js", args)?))
}

/// Go's `index`, except that a key or element that is not there is an
/// error (Go gives the zero value, printed `<no value>`).
fn index(args: &[Value]) -> gotmpl::Result<Value> {
    let Some((first, keys)) = args.split_first().filter(|(_, keys)| !keys.is_empty()) else {
        return Err(fail("index: give a value and at least one key or index"));
    };
    let missing = || fail("index: no such key or element");
    keys.iter().try_fold(first.clone(), |v, key| match (&v, key) {
        (Value::Map(m), Value::String(k)) => m.get(k.as_ref()).cloned().ok_or_else(missing),
        (Value::String(_) | Value::List(_) | Value::Map(_), _) => v.index(key).map_err(|_| missing()),
        _ => Err(missing()),
    })
}

/// Digits of a printf width or precision, at most [`MAX_N`].
fn digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> gotmpl::Result<Option<usize>> {
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
    match v {
        Value::Int(i) => Some((*i < 0, i.unsigned_abs())),
        Value::Uint(u) => Some((false, *u)),
        _ => None,
    }
}

/// Go's `fmt.Sprintf` for the verbs a name needs (see the module's doc).
fn printf(args: &[Value]) -> gotmpl::Result<Value> {
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
                (precision.map_or(s.to_string(), |p| s.chars().take(p).collect::<String>()), false)
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
            ('s' | 'v', Value::Float(f), _) => (f.to_string(), false),
            ('x' | 'X', Value::String(s), _) => {
                let bytes = &s.as_bytes()[..precision.unwrap_or(usize::MAX).min(s.len())];
                let h = bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut h, b| {
                    let _ = write!(h, "{b:02x}");
                    h
                });
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
        // render takes the display name as given; generate sanitizes it
        // first, as Vault's token store does.
        assert_eq!(render("{{.DisplayName}}", "Some User@x", "r").unwrap(), "Some User@x");
        assert_eq!(generate("app", "{{.DisplayName}}", "Some User@x", "r").unwrap(), "Some-User-x");
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
        assert_eq!(ok("{{ \"a b&c\" | urlquery }}"), "a+b%26c", "Go's url.QueryEscape");
        assert_eq!(ok("{{ \"<a>\" | html | truncate 9 }}"), "&lt;a&gt;");
        assert_eq!(ok("{{ js \"a=b\" | replace \"\\\\\" \"_\" }}"), "a_u003Db");
        assert_eq!(ok("{{ print 1 2 \"a\" 3 }}"), "1 2a3", "Go's Sprint spacing");
        assert_eq!(ok("{{ println \"a\" 1 | truncate 3 }}"), "a 1");
        assert_eq!(ok("{{ slice .RoleName 3 9 }}"), "custom");
        assert_eq!(ok("{{ index .RoleName 0 }}"), "109");
        assert_eq!(ok("{{ if and (ne .RoleName \"x\") (not false) (lt 1 2) }}y{{ end }}"), "y");
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
            ("{{ . }}", "gives the same name (\"map[DisplayName:token RoleName:role]\") each time"),
            ("{{ .RoleName }}_x", "gives the same name (\"role_x\") each time"),
            ("{{ timestamp \"2006\" }}", "gives the same name"),
            ("{{ call .RoleName }}", "function call not defined"),
            ("{{ if eq .RoleName \"x\" }}{{ nope }}{{ end }}{{ random 8 }}", "function nope not defined"),
            ("{{ .RoleName | truncate 3 | nope }}", "function nope not defined"),
            ("{{ (nope) }}", "function nope not defined"),
            ("{{ print \"a'b\" }}", "single quote"),
            ("{{ index . \"x\" }}", "index: no such key or element"),
            ("{{ printf \"%s\" (index . \"RoleName\") }}{{ .RoleName.X }}", "can't evaluate field X in type string"),
            ("{{ .RoleName ", "does not parse: unclosed action"),
            ("{{ end }}", "does not parse: each if and with needs its end"),
            ("a{{ random 8 }}{{ end }}b", "no end or else may stand outside one"),
            ("a{{ random 8 }}{{ else }}b", "no end or else may stand outside one"),
            ("{{ if 1 }}{{ random 8 }}{{ end }}{{ end }}", "no end or else may stand outside one"),
            ("{{ if 1 }}x{{ random 8 }}", "does not parse: each if and with needs its end"),
            ("{{ with .RoleName }}{{ random 8 }}{{ else }}", "each if and with needs its end"),
            ("{{ print (1 }}", "does not parse: expected ), got }}"),
            (VAULT_POSTGRES_DEFAULT.replace("| truncate 63 ", "").as_str(), ""),
        ] {
            match validate(template) {
                Err(EngineError::InvalidInput(m)) => {
                    assert!(m.starts_with("username_template: ") && m.contains(why), "{template}: {m}");
                    assert!(
                        !m.contains('\n') && !m.contains("String(") && !m.contains("Eof") && !m.contains("RightParen"),
                        "one line, no Rust dump: {m}"
                    );
                }
                Err(e) => panic!("{template}: {e}"),
                Ok(()) => assert!(why.is_empty(), "{template}: taken"),
            }
        }
        // Words that only contain a keyword are not refused.
        assert_eq!(ok("orange_{{ \"ranger\" }}_blocks"), "orange_ranger_blocks");
        assert!(validate(VAULT_POSTGRES_DEFAULT).is_ok());
        // A random or time part makes each name new.
        for t in [
            "{{ .RoleName }}_{{ random 8 }}",
            "{{ .RoleName }}_{{ unix_time }}",
            "u_{{ uuid }}",
            "{{ unix_time_millis }}",
        ] {
            assert!(validate(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn names_the_sql_cannot_take_are_refused_at_issue() {
        let t = "v_{{ .DisplayName }}_{{ random 4 }}";
        assert!(validate(t).is_ok(), "fine for the sample caller");
        // What a template may still give from its own text or the role
        // name: refused, whatever the display name.
        for (display, why) in [
            ("a\"b", "double quote"),
            ("a'b", "single quote"),
            ("a\\b", "backslash"),
            ("a$$b", "dollar sign"),
            ("a\0b", "the control character U+0000"),
            ("a\nb", "the control character U+000A"),
            ("a\u{7f}b", "the control character U+007F"),
            ("a\u{202E}b", "the character U+202E"),
            ("a\u{200B}b", "the character U+200B"),
            ("caf\u{e9}", "the character U+00E9"),
            (&"x".repeat(60), "of 67 bytes"),
        ] {
            let m = render(t, display, "r").err().unwrap_or_else(|| panic!("{display:?}: rendered"));
            assert!(m.contains(why), "{display:?}: {m}");
            assert!(!m.contains('\n') && !m.contains('\0') && !m.contains('\u{202E}'), "{m:?}");
            let m = render("v_{{ .RoleName }}_{{ random 4 }}", "t", display).unwrap_err();
            assert!(m.contains(why), "as the role name {display:?}: {m}");
        }
        // The caller's display name is sanitized before the template sees
        // it: every character outside [a-zA-Z0-9-] becomes -.
        for (display, sanitized) in [
            ("a\"b", "a-b"),
            ("a'b", "a-b"),
            ("a\\b", "a-b"),
            ("a$$b", "a--b"),
            ("a\0b", "a-b"),
            ("a\u{202E}b", "a-b"),
            ("caf\u{e9}", "caf-"),
            ("Ops Team_1", "Ops-Team-1"),
        ] {
            let name = generate("app", t, display, "r").unwrap_or_else(|e| panic!("{display:?}: {e}"));
            assert!(name.starts_with(&format!("v_{sanitized}_")) && name.len() == 3 + sanitized.len() + 4, "{name}");
        }
        assert_eq!(sanitize_display_name("token-Root_1 é"), "token-Root-1--");
        match generate("app", t, &"x".repeat(60), "r") {
            Err(EngineError::InvalidInput(m)) => {
                assert!(
                    m.contains("of 67 bytes") && m.contains("config/app") && m.contains("no user was created"),
                    "{m}"
                );
            }
            other => panic!("{:?}", other.map_err(|e| e.to_string())),
        }
        // 63 bytes is the most.
        assert_eq!(generate("app", "{{ .DisplayName }}", &"x".repeat(63), "r").unwrap().len(), 63);
        assert!(generate("app", "{{ .DisplayName }}", &"x".repeat(64), "r").is_err());
        // A long display name cut by the template is fine.
        assert!(
            generate("app", VAULT_POSTGRES_DEFAULT, &"y".repeat(10_000), "r").unwrap().starts_with("v-yyyyyyyy-r-")
        );
    }

    /// gtmpl's lexer looped forever on these (and ran on a thread of its
    /// own per parse): each must be refused, at once.
    #[test]
    fn malformed_templates_fail_promptly() {
        let cases = [
            "{{ ",
            "{{",
            "{{ .RoleName ",
            "{{\t",
            "{{ ( ",
            "{{ 1\u{e9}}}",
            "{{ \u{e9}",
            "{{ \"unterminated",
            "{{ \"unterminated\\",
            "{{ `raw unterminated",
            "{{ 'x",
            "{{ /* comment",
            "{{ - }}",
            "{{ .RoleName | }}",
            "{{ $x := }}",
            "{{ 0x }}",
            "{{ 1e }}",
            "{{- ",
            "x {{ -",
        ];
        for template in cases {
            let (tx, rx) = std::sync::mpsc::channel();
            let t = template.to_string();
            std::thread::spawn(move || {
                let _ = tx.send(validate(&t).map_err(|e| e.to_string()));
            });
            match rx.recv_timeout(std::time::Duration::from_secs(5)) {
                Ok(Err(m)) => {
                    assert!(m.starts_with("username_template: the template "), "{template:?}: {m}");
                    assert!(!m.contains('\n'), "{template:?}: {m}");
                }
                Ok(Ok(())) => panic!("{template:?}: taken"),
                Err(_) => panic!("{template:?}: no answer in 5 s (the lexer hangs)"),
            }
        }
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
        assert!(huge.contains("does not parse: decimal integer literal overflows"), "{huge}");
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
