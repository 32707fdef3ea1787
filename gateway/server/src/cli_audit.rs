//! `keybridge audit ...`: devices, HMACs, export of the verification key,
//! verification of log files (through the server or offline), watching.

use std::path::PathBuf;

use clap::Subcommand;
use keybridge_core::audit::VerificationKey;
use keybridge_core::audit::chain::Verifier;
use keybridge_proto::v1 as pb;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use zeroize::Zeroizing;

use crate::cli::{Client, Output, done, parse_pairs, print_json, read_stdin, time};
use crate::error::{Error, exit};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// `audit enable file file_path=/var/log/keybridge/audit.log [fsync=true]`,
    /// `audit enable socket address=127.0.0.1:9090 [socket_type=tcp|unix]`,
    /// `audit enable stream` (for `audit watch`).
    Enable {
        /// The device type: `file`, `socket` or `stream`.
        kind: String,
        /// The device's options as key=value (`file_path=/var/log/keybridge/audit.log`).
        options: Vec<String>,
        /// The device's name (default: the type, e.g. `file/`).
        #[arg(long)]
        path: Option<String>,
        /// A free-text description of the device.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the enabled audit devices with their options.
    List,
    /// Disable an audit device; its chain key is deleted, so export it first to verify its files later.
    Disable {
        /// The device's name, e.g. `file/`.
        path: String,
    },
    /// The HMAC a device writes for INPUT (`-`: read it from stdin).
    Hash {
        /// The device's name, e.g. `file/`.
        path: String,
        /// The value to hash, as it was sent, or `-` to read it from stdin.
        input: String,
    },
    /// Print a device's verification key and checkpoint (JSON), to verify
    /// its files offline. It can also forge records: keep it like a root token.
    ExportKey {
        /// The device's name, e.g. `file/`.
        path: String,
    },
    /// Verify log files, given in order (a rotated file before its
    /// successor). Through the server by default; offline with --key.
    /// Exits 0 if intact, 1 with the first problem otherwise.
    Verify {
        /// The device's log files, oldest first: `audit.log.1 audit.log`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The device the files belong to (default: the only file device).
        #[arg(long)]
        device: Option<String>,
        /// A key file from `audit export-key`: verify without a server.
        #[arg(long = "key")]
        key_file: Option<PathBuf>,
        /// On a store several nodes share: the node that wrote the files
        /// (each keeps its own chain; `operator members` lists them).
        /// Default: the node answering.
        #[arg(long = "node", conflicts_with = "key_file")]
        node: Option<String>,
    },
    /// Print a stream device's records as they are written (JSON lines).
    Watch {
        /// The stream device's name, e.g. `stream/`.
        path: String,
    },
}

fn device_json(d: &pb::AuditDevice) -> Value {
    json!({
        "path": d.path, "type": d.r#type, "description": d.description,
        "options": d.options.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "created_time": time(&d.created_time),
    })
}

pub async fn audit(c: &Client, cmd: AuditCommand) -> Result<u8, Error> {
    let json = c.json();
    match cmd {
        AuditCommand::Enable { kind, options, path, description } => {
            let options = parse_pairs(&options, "audit option")?;
            let path = path.unwrap_or_else(|| kind.clone());
            let d = c
                .audit()
                .enable(c.req(pb::EnableAuditRequest {
                    path,
                    r#type: kind,
                    description,
                    options: options.into_iter().collect(),
                }))
                .await?
                .into_inner();
            if json {
                print_json(&device_json(&d));
            } else {
                println!("Success! Enabled the {} audit device at: {}", d.r#type, d.path);
            }
        }
        AuditCommand::List => {
            let r = c.audit().list(c.req(pb::ListAuditRequest {})).await?.into_inner();
            if json {
                print_json(&json!(r.devices.iter().map(device_json).collect::<Vec<_>>()));
            } else if r.devices.is_empty() {
                println!("No audit devices are enabled.");
            } else {
                let w = r.devices.iter().map(|d| d.path.len()).max().unwrap_or(4).max(4);
                println!("{:w$}    {:8}    Options", "Path", "Type");
                println!("{:w$}    {:8}    -------", "----", "----");
                for d in &r.devices {
                    let mut opts: Vec<String> = d.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    opts.sort();
                    println!("{:w$}    {:8}    {}", d.path, d.r#type, opts.join(" "));
                }
            }
        }
        AuditCommand::Disable { path } => {
            c.audit().disable(c.req(pb::DisableAuditRequest { path: path.clone() })).await?;
            done(json, &format!("Success! Disabled the audit device at: {path}"));
        }
        AuditCommand::Hash { path, input } => {
            let input = if input == "-" { read_stdin()? } else { Zeroizing::new(input.into_bytes()) };
            let r = c.audit().hash(c.req(pb::AuditHashRequest { path, input: input.to_vec() })).await?.into_inner();
            if json {
                print_json(&json!({ "hash": r.hash }));
            } else {
                println!("{}", r.hash);
            }
        }
        AuditCommand::ExportKey { path } => {
            let k = c.audit().export_key(c.req(pb::ExportAuditKeyRequest { path })).await?.into_inner();
            let key = VerificationKey {
                device: k.device.clone(),
                key: k.key.clone(),
                checkpoint_seq: k.checkpoint_seq,
                checkpoint_chain: k.checkpoint_chain.clone(),
                segment_start: k.segment_start,
            };
            println!("{}", serde_json::to_string_pretty(&key).unwrap_or_default());
        }
        AuditCommand::Verify { files, device, key_file: None, node } => {
            let device = match device {
                Some(d) => d,
                None => {
                    let r = c.audit().list(c.req(pb::ListAuditRequest {})).await?.into_inner();
                    let files: Vec<_> = r.devices.iter().filter(|d| d.r#type == "file").collect();
                    match files.as_slice() {
                        [one] => one.path.clone(),
                        [] => return Err(Error::Usage("no file audit device is enabled; give --device".into())),
                        _ => return Err(Error::Usage("several file audit devices are enabled; give --device".into())),
                    }
                }
            };
            // The position before the files are read: anything the server
            // recorded up to here must be in them.
            let cp = c
                .audit()
                .checkpoint(c.req(pb::AuditCheckpointRequest {
                    path: device.clone(),
                    node_id: node.clone().unwrap_or_default(),
                }))
                .await?
                .into_inner();
            let mut chunks = Vec::new();
            for (i, f) in files.iter().enumerate() {
                let data = std::fs::read(f).map_err(|e| Error::Read { path: f.display().to_string(), source: e })?;
                // An empty file still sends one chunk, which names it.
                let parts: Vec<&[u8]> = if data.is_empty() { vec![&[]] } else { data.chunks(1 << 20).collect() };
                for (j, part) in parts.into_iter().enumerate() {
                    chunks.push(pb::VerifyAuditChunk {
                        device: if i == 0 && j == 0 { device.clone() } else { String::new() },
                        file_name: if j == 0 { f.display().to_string() } else { String::new() },
                        data: part.to_vec(),
                        checkpoint_seq: cp.seq,
                        node_id: if i == 0 && j == 0 { node.clone().unwrap_or_default() } else { String::new() },
                    });
                }
            }
            let r = c.audit().verify(c.req(tokio_stream::iter(chunks))).await?.into_inner();
            return Ok(report(
                c.json(),
                r.intact,
                r.records,
                r.first_seq,
                r.last_seq,
                &r.problem,
                &r.notes,
                Some(r.checkpoint_seq),
            ));
        }
        AuditCommand::Verify { files, key_file: Some(key), .. } => {
            return verify_offline(&files, &key, if json { Output::Json } else { Output::Table });
        }
        AuditCommand::Watch { path } => {
            let mut stream = c.audit().watch(c.req(pb::WatchAuditRequest { path })).await?.into_inner();
            while let Some(rec) = stream.next().await {
                println!("{}", rec?.line);
            }
        }
    }
    Ok(exit::OK)
}

#[allow(clippy::too_many_arguments)]
fn report(
    json: bool,
    intact: bool,
    records: u64,
    first: u64,
    last: u64,
    problem: &str,
    notes: &[String],
    checkpoint: Option<u64>,
) -> u8 {
    if json {
        print_json(&json!({
            "intact": intact, "records": records, "first_seq": first, "last_seq": last,
            "problem": if intact { Value::Null } else { problem.into() }, "notes": notes,
            "checkpoint_seq": checkpoint,
        }));
    } else {
        if intact {
            println!("Intact: {records} records verified (records {first} to {last}).");
        } else {
            println!("TAMPERED: {problem}");
            println!("({records} records verified before it.)");
        }
        for n in notes {
            println!("Note: {n}");
        }
    }
    if intact { exit::OK } else { exit::ERROR }
}

/// `audit verify --key KEY.json FILE...`: no server needed.
pub fn verify_offline(files: &[PathBuf], key_file: &PathBuf, output: Output) -> Result<u8, Error> {
    let text = Zeroizing::new(
        std::fs::read(key_file).map_err(|e| Error::Read { path: key_file.display().to_string(), source: e })?,
    );
    let key: VerificationKey = serde_json::from_slice(&text).map_err(|e| {
        Error::Usage(format!("{} is not a key from `keybridge audit export-key`: {e}", key_file.display()))
    })?;
    let key_bytes =
        key.key_bytes().ok_or_else(|| Error::Usage(format!("{}: the key is not hex", key_file.display())))?;
    let checkpoint = key.checkpoint();
    let mut v = Verifier::new(&key_bytes);
    for f in files {
        let data = std::fs::read(f).map_err(|e| Error::Read { path: f.display().to_string(), source: e })?;
        v.start_file(&f.display().to_string());
        v.feed(&data);
    }
    let r = v.finish(Some(&checkpoint));
    Ok(report(
        output == Output::Json,
        r.problem.is_none(),
        r.records,
        r.first_seq,
        r.last_seq,
        r.problem.as_deref().unwrap_or(""),
        &r.notes,
        Some(key.checkpoint_seq),
    ))
}
