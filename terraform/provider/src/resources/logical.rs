//! Engine objects through the gateway's Logical API (`<mount>/<kind>/<name>`),
//! as `keybridge read|write|delete` reach them: the calls and the paths the
//! database and PKI resources share.

use std::collections::BTreeMap;

use keybridge_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::diag::{self, Diags};
use crate::gateway::{Gateway, not_found};
use crate::value::{Obj, ObjExt, Val};

pub type Data = BTreeMap<String, Zeroizing<String>>;

fn request(path: &str, data: Data) -> pb::LogicalRequest {
    pb::LogicalRequest { path: path.into(), data: data.iter().map(|(k, v)| (k.clone(), v.to_string())).collect() }
}

/// An engine path's fields; `None` when it does not exist.
pub async fn read_path(gw: &Gateway, path: &str, what: &str) -> Result<Option<BTreeMap<String, String>>, Diags> {
    let req = pb::LogicalRequest { path: path.into(), data: Default::default() };
    match gw.logical().read(gw.req(req)).await {
        Ok(r) => Ok(Some(r.into_inner().data.into_iter().collect())),
        Err(s) if not_found(&s) => Ok(None),
        Err(s) => Err(diag::gateway(&format!("read the {what}"), &s, None)),
    }
}

pub async fn write_path(gw: &Gateway, path: &str, d: Data, what: &str) -> Result<(), Diags> {
    gw.logical()
        .write(gw.req(request(path, d)))
        .await
        .map(|_| ())
        .map_err(|s| diag::gateway(&format!("write the {what}"), &s, None))
}

pub async fn delete_path(gw: &Gateway, path: &str, what: &str) -> Result<(), Diags> {
    let req = pb::LogicalRequest { path: path.into(), data: Default::default() };
    super::deleted(gw.logical().delete(gw.req(req)).await, &format!("delete the {what}"))
}

/// Creating over an existing object is refused, never an overwrite.
pub async fn refuse_existing(gw: &Gateway, path: &str, what: &str) -> Result<(), Diags> {
    match read_path(gw, path, what).await? {
        Some(_) => Err(super::already_exists("name", what)),
        None => Ok(()),
    }
}

pub fn backend(o: &Obj) -> String {
    o.get_str("backend").unwrap_or_default().trim_matches('/').to_string()
}

pub fn object_path(o: &Obj, kind: &str) -> String {
    format!("{}/{kind}/{}", backend(o), o.get_str("name").unwrap_or_default())
}

/// `<backend>/<kind>/<name>` as `terraform import` takes it.
pub fn import_path(id: &str, kind: &str, help: &str) -> Result<Obj, Diags> {
    let sep = format!("/{kind}/");
    match id.trim_matches('/').rsplit_once(&sep) {
        Some((b, n)) if !b.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok([("backend".to_string(), Val::str(b)), ("name".to_string(), Val::str(n))].into())
        }
        _ => Err(Diags::error("Invalid import ID", format!("Give {help}."))),
    }
}
