//! The derive input, read into the few things the expansion needs: structs and enums, their
//! fields and variants, and for each the `#[serde]` attributes that enter the fingerprint.
//! Unions are refused here; every other rule lives in `valid.rs`.

use crate::attr::{self, Attrs};
use quote::quote;
use syn::{Attribute, Data, DeriveInput, Error, Fields, Generics, Ident, Result, Type};

/// A type `#[derive(Message)]` accepts.
pub(crate) enum Input<'a> {
    /// A struct of any style.
    Struct(Struct<'a>),
    /// An enum, whatever its variants.
    Enum(Enum<'a>),
}

/// A struct: named fields, a tuple, or a unit.
pub(crate) struct Struct<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: Attrs,
    pub(crate) serde: Vec<&'a Attribute>,
    pub(crate) style: Style,
    pub(crate) fields: Vec<Field<'a>>,
}

/// An enum and its variants, in declaration order (the order fixes the wire tags).
pub(crate) struct Enum<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) attrs: Attrs,
    pub(crate) serde: Vec<&'a Attribute>,
    pub(crate) variants: Vec<Variant<'a>>,
}

/// One enum variant.
pub(crate) struct Variant<'a> {
    pub(crate) original: &'a syn::Variant,
    pub(crate) ident: &'a Ident,
    pub(crate) serde: Vec<&'a Attribute>,
    pub(crate) style: Style,
    pub(crate) fields: Vec<Field<'a>>,
}

/// One field of a struct or a variant.
pub(crate) struct Field<'a> {
    pub(crate) original: &'a syn::Field,
    /// The field's identifier, or its index for tuple fields.
    pub(crate) name: String,
    pub(crate) ty: &'a Type,
    pub(crate) serde: Vec<&'a Attribute>,
}

/// How fields are written.
#[derive(Clone, Copy)]
pub(crate) enum Style {
    /// `{ a: A, b: B }`
    Named,
    /// `(A, B)`
    Tuple,
    /// no fields at all
    Unit,
}

impl<'a> Input<'a> {
    /// Reads `node`, refusing unions.
    pub(crate) fn from_syn(node: &'a DeriveInput) -> Result<Self> {
        match &node.data {
            Data::Struct(data) => {
                let (style, fields) = read_fields(&data.fields);
                Ok(Input::Struct(Struct {
                    original: node,
                    attrs: attr::get(&node.attrs)?,
                    serde: attr::serde(&node.attrs),
                    style,
                    fields,
                }))
            }
            Data::Enum(data) => Ok(Input::Enum(Enum {
                original: node,
                attrs: attr::get(&node.attrs)?,
                serde: attr::serde(&node.attrs),
                variants: data.variants.iter().map(Variant::from_syn).collect(),
            })),
            Data::Union(data) => {
                let (union_token, ident) = (data.union_token, &node.ident);
                Err(Error::new_spanned(
                    quote!(#union_token #ident),
                    "Message cannot be derived for a union: serde has no data model for \
                     unions; use a struct or an enum",
                ))
            }
        }
    }

    /// The whole derive input.
    pub(crate) fn original(&self) -> &'a DeriveInput {
        match self {
            Input::Struct(s) => s.original,
            Input::Enum(e) => e.original,
        }
    }

    /// The parsed `#[message(...)]` keys.
    pub(crate) fn attrs(&self) -> &Attrs {
        match self {
            Input::Struct(s) => &s.attrs,
            Input::Enum(e) => &e.attrs,
        }
    }

    /// The type's generics.
    pub(crate) fn generics(&self) -> &'a Generics {
        &self.original().generics
    }

    /// Every field of the type, across all variants.
    pub(crate) fn all_fields(&self) -> Box<dyn Iterator<Item = &Field<'a>> + '_> {
        match self {
            Input::Struct(s) => Box::new(s.fields.iter()),
            Input::Enum(e) => Box::new(e.variants.iter().flat_map(|v| v.fields.iter())),
        }
    }
}

impl<'a> Variant<'a> {
    fn from_syn(node: &'a syn::Variant) -> Self {
        let (style, fields) = read_fields(&node.fields);
        Variant {
            original: node,
            ident: &node.ident,
            serde: attr::serde(&node.attrs),
            style,
            fields,
        }
    }
}

fn read_fields(fields: &Fields) -> (Style, Vec<Field<'_>>) {
    let style = match fields {
        Fields::Named(_) => Style::Named,
        Fields::Unnamed(_) => Style::Tuple,
        Fields::Unit => Style::Unit,
    };
    let fields = fields
        .iter()
        .enumerate()
        .map(|(i, field)| Field {
            original: field,
            name: field
                .ident
                .as_ref()
                .map_or_else(|| i.to_string(), ToString::to_string),
            ty: &field.ty,
            serde: attr::serde(&field.attrs),
        })
        .collect();
    (style, fields)
}
