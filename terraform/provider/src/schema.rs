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

    fn to_proto(&self) -> tf::schema::Attribute {
        tf::schema::Attribute {
            name: self.name.into(),
            r#type: self.ty.json().to_vec(),
            description: self.description.into(),
            description_kind: tf::StringKind::Markdown as i32,
            required: self.mode == Mode::Required,
            optional: matches!(self.mode, Mode::Optional | Mode::OptionalComputed),
            computed: self.computed(),
            sensitive: self.sensitive,
            write_only: self.write_only,
            deprecated: false,
        }
    }
}

pub struct Schema {
    pub version: i64,
    pub description: &'static str,
    pub attrs: Vec<Attr>,
    /// Nested blocks (`postgresql { ... }`), each at most once.
    pub blocks: Vec<Block>,
}

/// A nested block written at most once (`postgresql { ... }`), as SDKv2
/// providers declare it (a list of at most one object), so references such
/// as `x.postgresql[0].username` port unchanged. Its attributes are plain
/// arguments: none is computed.
pub struct Block {
    pub name: &'static str,
    pub description: &'static str,
    pub attrs: Vec<Attr>,
}

impl Block {
    fn to_proto(&self) -> tf::schema::NestedBlock {
        tf::schema::NestedBlock {
            type_name: self.name.into(),
            block: Some(tf::schema::Block {
                version: 0,
                description: self.description.into(),
                description_kind: tf::StringKind::Markdown as i32,
                attributes: self.attrs.iter().map(Attr::to_proto).collect(),
                ..Default::default()
            }),
            nesting: tf::schema::nested_block::NestingMode::List as i32,
            min_items: 0,
            max_items: 1,
        }
    }

    /// The block's value in the shape Terraform decodes: a list of at most
    /// one object with every attribute present; write-only ones null when
    /// `stored`.
    fn shape(&self, v: Option<Val>, stored: bool) -> Val {
        let items = match v {
            Some(Val::List(items)) => items,
            _ => Vec::new(),
        };
        Val::List(
            items
                .into_iter()
                .map(|item| match item {
                    Val::Map(mut m) => Val::Map(
                        self.attrs
                            .iter()
                            .map(|a| {
                                let v = m.remove(a.name).filter(|_| !(stored && a.write_only)).unwrap_or(Val::Null);
                                (a.name.to_string(), v)
                            })
                            .collect(),
                    ),
                    other => other,
                })
                .collect(),
        )
    }
}

impl Schema {
    pub fn to_proto(&self) -> tf::Schema {
        tf::Schema {
            version: self.version,
            block: Some(tf::schema::Block {
                version: self.version,
                description: self.description.into(),
                description_kind: tf::StringKind::Markdown as i32,
                attributes: self.attrs.iter().map(Attr::to_proto).collect(),
                block_types: self.blocks.iter().map(Block::to_proto).collect(),
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
        let mut out: Obj =
            self.attrs.iter().map(|a| (a.name.to_string(), obj.remove(a.name).unwrap_or(Val::Null))).collect();
        for b in &self.blocks {
            out.insert(b.name.into(), b.shape(obj.remove(b.name), false));
        }
        out
    }

    /// As [`Schema::normalize`], with write-only attributes null: the form of
    /// every plan and state (write-only values are never stored).
    pub fn stored(&self, mut obj: Obj) -> Obj {
        let mut out: Obj = self
            .attrs
            .iter()
            .map(|a| {
                let v = obj.remove(a.name).filter(|_| !a.write_only).unwrap_or(Val::Null);
                (a.name.to_string(), v)
            })
            .collect();
        for b in &self.blocks {
            out.insert(b.name.into(), b.shape(obj.remove(b.name), true));
        }
        out
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
