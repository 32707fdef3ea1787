//! `keybridge_policy`: an ACL policy in Vault's HCL syntax.

use async_trait::async_trait;
use keybridge_proto::v1 as pb;

use super::{Caps, Private, Resource};
use crate::diag::{self, Diags};
use crate::gateway::{Gateway, not_found};
use crate::schema::{Identity, Mode, Schema, Ty, attr};
use crate::value::{Obj, ObjExt, Val};

pub struct Policy;

#[async_trait]
impl Resource for Policy {
    fn name(&self) -> &'static str {
        "keybridge_policy"
    }

    fn schema(&self) -> Schema {
        Schema {
            version: 0,
            description: "An ACL policy in Vault's HCL policy syntax (`path \"...\" { capabilities = [...] }`).",
            attrs: vec![
                attr("name", Ty::Str, Mode::Required, "The policy's name. Changing it replaces the policy."),
                attr("policy", Ty::Str, Mode::Required, "The policy document (HCL)."),
            ],
            blocks: vec![],
        }
    }

    fn identity(&self) -> Identity {
        Identity { attrs: &[("name", "The policy's name.")] }
    }

    fn replace_on(&self) -> &'static [&'static str] {
        &["name"]
    }

    fn validate(&self, config: &Obj, _caps: Caps, diags: &mut Diags) {
        super::check_segment(config, "name", "policy name", diags);
        if config.get_str("name") == Some("root") {
            diags.push_error(
                "The root policy cannot be managed",
                "`root` is built in; choose another name.",
                Some(diag::path("name")),
            );
        }
        if let (Some(name), Some(text)) = (config.get_str("name"), config.get_str("policy"))
            && let Err(e) = keybridge_policy::parse_policy(name, text)
        {
            diags.push_error("Invalid policy document", e.to_string(), Some(diag::path("policy")));
        }
    }

    fn import_id_help(&self) -> &'static str {
        "the policy name: `app-service`"
    }

    fn import(&self, id: &str) -> Result<Obj, Diags> {
        Ok([("name".to_string(), Val::str(id))].into())
    }

    async fn read(&self, gw: &Gateway, prior: &Obj) -> Result<Option<Obj>, Diags> {
        let name = prior.get_str("name").unwrap_or_default().to_string();
        match gw.policies().get(gw.req(pb::GetPolicyRequest { name: name.clone() })).await {
            Ok(doc) => {
                let doc = doc.into_inner();
                Ok(Some([("name".into(), Val::str(name)), ("policy".into(), Val::str(doc.policy))].into()))
            }
            Err(s) if not_found(&s) => Ok(None),
            Err(s) => Err(diag::gateway("read the policy", &s, None)),
        }
    }

    async fn create(&self, gw: &Gateway, planned: &Obj, _config: &Obj) -> Result<Private, Diags> {
        if self.read(gw, planned).await?.is_some() {
            return Err(super::already_exists("name", "Policy"));
        }
        self.put(gw, planned).await?;
        Ok(Private::new())
    }

    async fn update(&self, gw: &Gateway, _: &Obj, planned: &Obj, _: &Obj, private: &Private) -> Result<Private, Diags> {
        self.put(gw, planned).await?;
        Ok(private.clone())
    }

    async fn delete(&self, gw: &Gateway, prior: &Obj) -> Result<(), Diags> {
        let name = prior.get_str("name").unwrap_or_default().to_string();
        super::deleted(gw.policies().delete(gw.req(pb::DeletePolicyRequest { name })).await, "delete the policy")
    }
}

impl Policy {
    async fn put(&self, gw: &Gateway, planned: &Obj) -> Result<(), Diags> {
        let req = pb::PutPolicyRequest {
            name: planned.get_str("name").unwrap_or_default().into(),
            policy: planned.get_str("policy").unwrap_or_default().into(),
        };
        gw.policies().put(gw.req(req)).await.map_err(|s| diag::gateway("write the policy", &s, Some("policy")))?;
        Ok(())
    }
}
