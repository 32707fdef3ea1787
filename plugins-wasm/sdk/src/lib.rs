//! Write a Keybridge secret engine in Rust.
//!
//! Implement [`Engine`] (and [`Rotate`] if the reconciler may rotate your
//! credentials), then export it with [`export_engine!`] or
//! [`export_rotating_engine!`], and build with
//! `cargo build --release --target wasm32-wasip2`. The result is a
//! WebAssembly component for `keybridge plugin register`.
//!
//! ```ignore
//! use keybridge_plugin_sdk::*;
//!
//! struct Hello;
//!
//! impl Engine for Hello {
//!     fn describe() -> EngineInfo {
//!         info("hello", "0.1.0", "Says hello", vec![path("greet/{name}", "Greets", &[Operation::Read], vec![])])
//!     }
//!     fn handle(_ctx: Context, req: Request) -> Result<Response, Error> {
//!         let name = param(&req, "name")?;
//!         Ok(respond([("greeting", format!("hello, {name}"))]))
//!     }
//! }
//!
//! export_engine!(Hello);
//! ```
//!
//! The host grants nothing else: no files, no environment, no sockets, and
//! HTTP ([`http`]) only to the hosts in the mount's `allowed_hosts`.

pub mod http;

#[doc(hidden)]
pub mod bindings {
    /// World `engine`, from keybridge-plugin-bindings.
    pub use keybridge_plugin_bindings as engine;

    pub mod rotating {
        wit_bindgen::generate!({
            path: "../wit",
            world: "rotating-engine",
            with: {
                "keybridge:engine/types@0.1.0": keybridge_plugin_bindings::keybridge::engine::types,
                "keybridge:engine/host@0.1.0": keybridge_plugin_bindings::keybridge::engine::host,
                "keybridge:engine/storage@0.1.0": keybridge_plugin_bindings::keybridge::engine::storage,
            },
            pub_export_macro: true,
            export_macro_name: "export_rotating_world",
            default_bindings_module: "keybridge_plugin_sdk::bindings::rotating",
            type_section_suffix: "rotating",
        });
    }
}

pub use bindings::engine::keybridge::engine::host::Level;
pub use bindings::engine::keybridge::engine::types::{
    Context, EngineInfo, Error, Field, FieldKind, LeaseInfo, LeaseRequest, LeaseTerms, Operation, Params, PathInfo,
    Request, Response,
};

/// A secret engine. Every method runs in a fresh instance: keep state in
/// [`storage`], not in statics.
pub trait Engine {
    /// The paths this engine serves. Must not use storage or the network.
    fn describe() -> EngineInfo;

    /// Checks the mount's config (the keys the host does not read itself).
    fn validate_config(_config: Params) -> Result<(), Error> {
        Ok(())
    }

    /// Whether something exists at the request's path, for paths that
    /// declare `existence_check`.
    fn exists(_ctx: Context, _req: Request) -> Result<bool, Error> {
        Ok(false)
    }

    fn handle(ctx: Context, req: Request) -> Result<Response, Error>;

    /// Extends a lease; the default refuses (leases are then not renewable).
    fn renew(_ctx: Context, lease: LeaseInfo) -> Result<LeaseTerms, Error> {
        Err(Error::Unsupported(format!("leases of {} cannot be renewed", lease.path)))
    }

    /// Ends the credential behind a lease. Must be idempotent.
    fn revoke(_ctx: Context, _lease: LeaseInfo) -> Result<(), Error> {
        Ok(())
    }
}

/// An engine whose credentials the reconciler can rotate: `rotate` issues a
/// new credential while the current one stays valid, and returns a lease
/// through which the old one is revoked after the grace period.
pub trait Rotate: Engine {
    fn rotate(ctx: Context, path: String, params: Params) -> Result<Response, Error>;
}

#[doc(hidden)]
pub struct Exported<T>(core::marker::PhantomData<T>);

/// Sends a panic's message to the host's log, so that the error the caller
/// gets ("plugin trapped: ...") can say what went wrong.
fn panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|p| log(Level::Error, &p.to_string())));
    });
}

macro_rules! impl_logical {
    ($guest:path) => {
        impl<T: Engine> $guest for Exported<T> {
            fn describe() -> EngineInfo {
                panic_hook();
                T::describe()
            }
            fn validate_config(config: Params) -> Result<(), Error> {
                panic_hook();
                T::validate_config(config)
            }
            fn exists(ctx: Context, req: Request) -> Result<bool, Error> {
                panic_hook();
                T::exists(ctx, req)
            }
            fn handle(ctx: Context, req: Request) -> Result<Response, Error> {
                panic_hook();
                T::handle(ctx, req)
            }
            fn renew(ctx: Context, lease: LeaseInfo) -> Result<LeaseTerms, Error> {
                panic_hook();
                T::renew(ctx, lease)
            }
            fn revoke(ctx: Context, lease: LeaseInfo) -> Result<(), Error> {
                panic_hook();
                T::revoke(ctx, lease)
            }
        }
    };
}

impl_logical!(bindings::engine::exports::keybridge::engine::logical::Guest);
impl_logical!(bindings::rotating::exports::keybridge::engine::logical::Guest);

impl<T: Rotate> bindings::rotating::exports::keybridge::engine::rotation::Guest for Exported<T> {
    fn rotate(ctx: Context, path: String, params: Params) -> Result<Response, Error> {
        panic_hook();
        T::rotate(ctx, path, params)
    }
}

/// Exports `$t: Engine` as a component of world `engine`.
#[macro_export]
macro_rules! export_engine {
    ($t:ty) => {
        type __KeybridgeEngine = $crate::Exported<$t>;
        $crate::bindings::engine::export_engine_world!(__KeybridgeEngine with_types_in $crate::bindings::engine);
    };
}

/// Exports `$t: Engine + Rotate` as a component of world `rotating-engine`.
#[macro_export]
macro_rules! export_rotating_engine {
    ($t:ty) => {
        type __KeybridgeEngine = $crate::Exported<$t>;
        $crate::bindings::rotating::export_rotating_world!(__KeybridgeEngine with_types_in $crate::bindings::rotating);
    };
}

// ----- describing -----------------------------------------------------------

pub fn info(name: &str, version: &str, description: &str, paths: Vec<PathInfo>) -> EngineInfo {
    EngineInfo {
        name: name.into(),
        version: version.into(),
        description: description.into(),
        paths,
        config_keys: Vec::new(),
    }
}

/// A path pattern (`creds/{role}`) with its operations and fields.
pub fn path(pattern: &str, synopsis: &str, operations: &[Operation], fields: Vec<Field>) -> PathInfo {
    PathInfo {
        pattern: pattern.into(),
        synopsis: synopsis.into(),
        description: String::new(),
        operations: operations.to_vec(),
        fields,
        existence_check: false,
    }
}

pub fn field(name: &str, kind: FieldKind, description: &str) -> Field {
    Field { name: name.into(), kind, description: description.into(), required: false, default_value: None }
}

pub fn required(mut f: Field) -> Field {
    f.required = true;
    f
}

pub fn default(mut f: Field, value: &str) -> Field {
    f.default_value = Some(value.into());
    f
}

// ----- requests and responses -------------------------------------------------

/// A parameter (or `{name}` segment) the request must have.
pub fn param<'a>(req: &'a Request, name: &str) -> Result<&'a str, Error> {
    opt_param(req, name).ok_or_else(|| Error::InvalidInput(format!("missing parameter {name:?}")))
}

pub fn opt_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    lookup(&req.params, name)
}

pub fn lookup<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A parameter as a number (the host already checked `int` and `duration`
/// fields, so this fails only for fields declared as strings).
pub fn int_param(req: &Request, name: &str) -> Result<Option<u64>, Error> {
    opt_param(req, name)
        .map(|v| v.parse::<u64>().map_err(|_| Error::InvalidInput(format!("parameter {name:?}: expected a number"))))
        .transpose()
}

pub fn respond<K: Into<String>, V: Into<String>>(data: impl IntoIterator<Item = (K, V)>) -> Response {
    Response { data: data.into_iter().map(|(k, v)| (k.into(), v.into())).collect(), lease: None, warnings: Vec::new() }
}

/// Attaches a lease: the host records it and calls `revoke` with `internal`
/// when it ends.
pub fn with_lease<K: Into<String>, V: Into<String>>(
    mut r: Response,
    ttl: u64,
    max_ttl: u64,
    renewable: bool,
    internal: impl IntoIterator<Item = (K, V)>,
) -> Response {
    r.lease = Some(LeaseRequest {
        terms: LeaseTerms { ttl, max_ttl, renewable },
        internal: internal.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
    });
    r
}

/// A JSON response to a `list`: `keys` holds the names.
pub fn list_response(keys: Vec<String>) -> Response {
    respond([("keys", serde_json::to_string(&keys).unwrap_or_default())])
}

// ----- host --------------------------------------------------------------------

/// Logs through the gateway (with the mount and request id). Never log
/// secret values.
pub fn log(level: Level, message: &str) {
    bindings::engine::keybridge::engine::host::log(level, message);
}

/// Unix time in milliseconds.
pub fn now_millis() -> u64 {
    bindings::engine::keybridge::engine::host::now_millis()
}

pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// Secure random bytes from the host.
pub fn random_bytes(len: u32) -> Vec<u8> {
    bindings::engine::keybridge::engine::host::random_bytes(len)
}

/// A uniformly random number below `n` (rejection sampling, no bias).
pub fn random_below(n: u32) -> u32 {
    assert!(n > 0);
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let b = random_bytes(4);
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if v < zone {
            return v % n;
        }
    }
}

/// The mount's own encrypted storage.
pub mod storage {
    use super::Error;
    use crate::bindings::engine::keybridge::engine::storage as s;

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
        s::get(key).map_err(Error::Internal)
    }

    pub fn put(key: &str, value: &[u8]) -> Result<(), Error> {
        s::put(key, value).map_err(Error::Internal)
    }

    pub fn delete(key: &str) -> Result<(), Error> {
        s::delete(key).map_err(Error::Internal)
    }

    pub fn list(prefix: &str) -> Result<Vec<String>, Error> {
        s::list(prefix).map_err(Error::Internal)
    }

    /// A JSON value stored at `key`.
    pub fn get_json(key: &str) -> Result<Option<serde_json::Value>, Error> {
        get(key)?
            .map(|b| {
                serde_json::from_slice(&b).map_err(|e| Error::Internal(format!("stored {key:?} is not JSON: {e}")))
            })
            .transpose()
    }

    pub fn put_json(key: &str, v: &serde_json::Value) -> Result<(), Error> {
        put(key, v.to_string().as_bytes())
    }
}
