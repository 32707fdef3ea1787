//! Misbehaves on purpose, one way per path (all reads):
//! `ok` answers, `sleep/{ms}` spins that long then answers, `alloc/{mb}`
//! allocates that much then answers, `loop` spins
//! forever, `memory` allocates without end,
//! `recurse` recurses without end, `trap` panics, `huge` answers 8 MiB,
//! `call/{host}` fetches `http://{host}/` (say `evil.example` or an
//! allow-listed `127.0.0.1:PORT` that never answers), `file` reads
//! /etc/passwd, `env` reads the environment, `storage` writes and reads
//! back its storage, `remember` reports what an earlier call left in its
//! globals, low memory and high memory, then leaves marks there.

use keybridge_plugin_sdk::*;

struct Hostile;

const PATHS: &[&str] = &[
    "ok",
    "sleep/{ms}",
    "alloc/{mb}",
    "loop",
    "memory",
    "recurse",
    "trap",
    "huge",
    "call/{host}",
    "file",
    "env",
    "storage",
    "remember",
];

/// Calls this instance has served (1 in a fresh instance).
static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// A mark in the data segment, near the start of linear memory.
static LOW: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

impl Engine for Hostile {
    fn describe() -> EngineInfo {
        info(
            "hostile",
            "0.1.0",
            "Misbehaves on purpose",
            PATHS.iter().map(|p| path(p, "misbehaves", &[Operation::Read], vec![])).collect(),
        )
    }

    fn handle(_ctx: Context, req: Request) -> Result<Response, Error> {
        match req.pattern.as_str() {
            "ok" => Ok(respond([("answer", "42")])),
            "sleep/{ms}" => {
                let ms: u64 = param(&req, "ms")?.parse().map_err(|_| Error::InvalidInput("ms: a number".into()))?;
                let until = now_millis() + ms;
                while now_millis() < until {
                    std::hint::spin_loop();
                }
                Ok(respond([("slept", ms.to_string())]))
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc/{mb}" => {
                let mb: usize = param(&req, "mb")?.parse().map_err(|_| Error::InvalidInput("mb: a number".into()))?;
                let block = std::hint::black_box(vec![7u8; mb << 20]);
                Ok(respond([("allocated_mb", (block.len() >> 20).to_string())]))
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => Ok(respond([("depth", recurse(0).to_string())])),
            "trap" => panic!("the hostile plugin panics on purpose"),
            "huge" => Ok(respond([("blob", "x".repeat(8 << 20))])),
            "call/{host}" => {
                let host = param(&req, "host")?;
                match http::send("GET", &format!("http://{host}/"), &[], b"") {
                    Ok(r) => Ok(respond([("status", r.status.to_string())])),
                    Err(e) => Err(Error::Unavailable(format!("the request failed: {e}"))),
                }
            }
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(s) => Ok(respond([("stolen", s)])),
                Err(e) => Err(Error::Denied(format!("could not open /etc/passwd: {e}"))),
            },
            "env" => Ok(respond([("vars", std::env::vars().count().to_string())])),
            "storage" => {
                storage::put("probe", b"value")?;
                let back = storage::get("probe")?.unwrap_or_default();
                Ok(respond([("read_back", String::from_utf8_lossy(&back).into_owned())]))
            }
            "remember" => {
                let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let low = LOW.swap(0xab, std::sync::atomic::Ordering::SeqCst);
                // Zeroed memory the allocator takes from fresh pages, well
                // past what the host keeps resident between calls.
                let mut high = vec![0u8; 8 << 20];
                let last = high.len() - 1;
                let seen = (high[4096], high[last]);
                high[4096] = 0xcd;
                high[last] = 0xef;
                std::hint::black_box(&high);
                Ok(respond([
                    ("calls", calls.to_string()),
                    ("low", low.to_string()),
                    ("high", format!("{},{}", seen.0, seen.1)),
                ]))
            }
            other => Err(Error::NotFound(format!("no such path {other}"))),
        }
    }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 16]);
    recurse(pad[3] + 1) + pad[5]
}

export_engine!(Hostile);
