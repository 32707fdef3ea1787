//! Schemas as the provider declares them, and their protocol form.

use crate::tfplugin6 as tf;
use crate::value::{Obj, Val};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ty {
    Str,
    Bool,
    Num,
    MapStr,
    ListStr,
}

impl Ty {
    fn json(self) -> &'static [u8] {
        match self {
            Ty::Str => br#""string""#,
            Ty::Bool => br#""bool""#,
            Ty::Num => br#""number""#,
            Ty::MapStr => br#"["map","string"]"#,
            Ty::ListStr => br#"["list","string"]"#,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Required,
    Optional,
    Computed,
    /// Optional; when left out the provider supplies the value.
    OptionalComputed,
}

#[derive(Clone, Debug)]
pub struct Attr {
    pub name: &'static str,
    pub ty: Ty,
    pub mode: Mode,
    pub sensitive: bool,
    pub write_only: bool,
    pub description: &'static str,
}

pub const fn attr(name: &'static str, ty: Ty, mode: Mode, description: &'static str) -> Attr {
    Attr { name, ty, mode, sensitive: false, write_only: false, description }
}

impl Attr {
    pub const fn sensitive(mut self) -> Attr {
        self.sensitive = true;
        self
    }

    pub const fn write_only(mut self) -> Attr {
        self.write_only = true;
        self
    }

    pub fn computed(&self) -> bool {
        matches!(self.mode, Mode::Computed | Mode::OptionalComputed)
    }
}

pub struct Schema {
    pub version: i64,
    pub description: &'static str,
    pub attrs: Vec<Attr>,
}

impl Schema {
    pub fn to_proto(&self) -> tf::Schema {
        tf::Schema {
            version: self.version,
            block: Some(tf::schema::Block {
                version: self.version,
                description: self.description.into(),
                description_kind: tf::StringKind::Markdown as i32,
                attributes: self
                    .attrs
                    .iter()
                    .map(|a| tf::schema::Attribute {
                        name: a.name.into(),
                        r#type: a.ty.json().to_vec(),
                        description: a.description.into(),
                        description_kind: tf::StringKind::Markdown as i32,
                        required: a.mode == Mode::Required,
                        optional: matches!(a.mode, Mode::Optional | Mode::OptionalComputed),
                        computed: a.computed(),
                        sensitive: a.sensitive,
                        write_only: a.write_only,
                        deprecated: false,
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// Every attribute of the schema present (null when missing), nothing
    /// else: the shape Terraform decodes.
    pub fn normalize(&self, mut obj: Obj) -> Obj {
        self.attrs.iter().map(|a| (a.name.to_string(), obj.remove(a.name).unwrap_or(Val::Null))).collect()
    }

    /// As [`Schema::normalize`], with write-only attributes null: the form of
    /// every plan and state (write-only values are never stored).
    pub fn stored(&self, mut obj: Obj) -> Obj {
        self.attrs
            .iter()
            .map(|a| {
                let v = obj.remove(a.name).filter(|_| !a.write_only).unwrap_or(Val::Null);
                (a.name.to_string(), v)
            })
            .collect()
    }
}

/// A resource's identity: string attributes that name it.
pub struct Identity {
    pub attrs: &'static [(&'static str, &'static str)],
}

impl Identity {
    pub fn to_proto(&self) -> tf::ResourceIdentitySchema {
        tf::ResourceIdentitySchema {
            version: 0,
            identity_attributes: self
                .attrs
                .iter()
                .map(|(name, description)| tf::resource_identity_schema::IdentityAttribute {
                    name: (*name).into(),
                    r#type: Ty::Str.json().to_vec(),
                    required_for_import: true,
                    optional_for_import: false,
                    description: (*description).into(),
                })
                .collect(),
        }
    }

    /// The identity of a state; `None` while part of it is unknown.
    pub fn of(&self, state: &Obj) -> Option<Obj> {
        let mut out = Obj::new();
        for (name, _) in self.attrs {
            match state.get(*name) {
                Some(v @ Val::Str(_)) => {
                    out.insert((*name).into(), v.clone());
                }
                _ => return None,
            }
        }
        Some(out)
    }

    pub fn data(&self, state: &Obj) -> Option<tf::ResourceIdentityData> {
        self.of(state).map(|o| tf::ResourceIdentityData { identity_data: Some(crate::value::encode_obj(Some(&o))) })
    }
}
