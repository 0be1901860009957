//! The fingerprint: a canonical description of the type's shape (its "shape string"), hashed
//! with FNV-1a 64 while the macro expands.
//!
//! The shape string is a sequence of atoms `label=<byte length>:<text>;`. The length prefix makes
//! the encoding unambiguous whatever the text holds (types such as `[u8; 4]` contain `;`). In
//! order:
//!
//! ```text
//! shmlink.message=1:1;           format version of this description (bump to change it)
//! kind=6:struct;                 or kind=4:enum;
//! name=8:GetQuote;               the effective NAME (the `name` key, else the identifier)
//! version=1:0;                   the VERSION
//! generics=1:1; type=1:T;        type parameters by name; const parameters as
//!                                const=1:N; type=5:usize;
//! attrs=1:0;                     the count of container #[serde] attributes, then attr=...; each
//! -- a struct: --
//! style=5:named;                 named, tuple or unit
//! fields=1:1;                    the count, then per field:
//! field=3:sku; type=6:String; attrs=1:0;
//! -- an enum: --
//! variants=1:2;                  the count, then per variant:
//! variant=4:Tick; attrs=1:0; style=4:unit; fields=1:0;
//! ```
//!
//! Token lists (types, attributes) are written token by token, separated by one space, groups
//! with their delimiters: `Vec<u8>` and `Vec < u8 >` both give `Vec < u8 >`. Tokens are
//! rendered one at a time (identifier, punctuation character, literal as written), never through
//! the compiler's pretty-printer, whose spacing may change between compiler versions. No span,
//! file path or module path enters the description.
//!
//! The hash is FNV-1a 64 over the UTF-8 bytes, the same function as
//! `ipc_tokio::message::fingerprint_of`, so a hand-written impl can reproduce a derived value.
//! For generic types the expansion then mixes in each parameter (see `expand.rs`).

use crate::ast::{Field, Input, Style};
use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use std::fmt::Write as _;
use syn::{Attribute, GenericParam};

/// Bumped whenever the description below changes, so old and new fingerprints never collide.
const FORMAT: &str = "1";

/// The canonical description of `input`'s shape, given its effective name and version.
pub(crate) fn shape(input: &Input<'_>, name: &str, version: u32) -> String {
    let mut s = Shape::default();
    s.atom("shmlink.message", FORMAT);
    s.atom(
        "kind",
        match input {
            Input::Struct(_) => "struct",
            Input::Enum(_) => "enum",
        },
    );
    s.atom("name", name);
    s.atom("version", &version.to_string());

    let params = &input.generics().params;
    let described = params
        .iter()
        .filter(|p| !matches!(p, GenericParam::Lifetime(_)));
    s.atom("generics", &described.clone().count().to_string());
    for param in described {
        match param {
            GenericParam::Type(t) => s.atom("type", &t.ident.to_string()),
            GenericParam::Const(c) => {
                s.atom("const", &c.ident.to_string());
                s.atom("type", &canonical(c.ty.to_token_stream()));
            }
            GenericParam::Lifetime(_) => {}
        }
    }

    match input {
        Input::Struct(st) => {
            s.attrs(&st.serde);
            s.fields(st.style, &st.fields);
        }
        Input::Enum(en) => {
            s.attrs(&en.serde);
            s.atom("variants", &en.variants.len().to_string());
            for variant in &en.variants {
                s.atom("variant", &variant.ident.to_string());
                s.attrs(&variant.serde);
                s.fields(variant.style, &variant.fields);
            }
        }
    }
    s.0
}

/// FNV-1a 64 of `text`'s UTF-8 bytes.
pub(crate) fn fnv1a(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    text.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The shape string under construction.
#[derive(Default)]
struct Shape(String);

impl Shape {
    fn atom(&mut self, label: &str, text: &str) {
        // Writing to a String cannot fail.
        let _ = write!(self.0, "{label}={}:{text};", text.len());
    }

    fn attrs(&mut self, attrs: &[&Attribute]) {
        self.atom("attrs", &attrs.len().to_string());
        for attr in attrs {
            self.atom("attr", &canonical(attr.meta.to_token_stream()));
        }
    }

    fn fields(&mut self, style: Style, fields: &[Field<'_>]) {
        self.atom(
            "style",
            match style {
                Style::Named => "named",
                Style::Tuple => "tuple",
                Style::Unit => "unit",
            },
        );
        self.atom("fields", &fields.len().to_string());
        for field in fields {
            self.atom("field", &field.name);
            self.atom("type", &canonical(field.ty.to_token_stream()));
            self.attrs(&field.serde);
        }
    }
}

/// `tokens` one by one, separated by single spaces.
fn canonical(tokens: TokenStream) -> String {
    let mut out = String::new();
    write_tokens(tokens, &mut out);
    out
}

fn write_tokens(tokens: TokenStream, out: &mut String) {
    for tree in tokens {
        match tree {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    // Invisible groups (from macro_rules fragments) are transparent.
                    Delimiter::None => ("", ""),
                };
                word(out, open);
                write_tokens(group.stream(), out);
                word(out, close);
            }
            TokenTree::Ident(ident) => word(out, &ident.to_string()),
            TokenTree::Punct(punct) => word(out, punct.as_char().encode_utf8(&mut [0; 4])),
            TokenTree::Literal(lit) => word(out, &lit.to_string()),
        }
    }
}

fn word(out: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::DeriveInput;

    fn shape_of(src: &str) -> String {
        let node: DeriveInput = syn::parse_str(src).expect("test input parses");
        let input = Input::from_syn(&node).expect("test input is accepted");
        shape(&input, &node.ident.to_string(), 0)
    }

    #[test]
    fn fnv1a_matches_published_vectors() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn struct_shape_is_exact() {
        assert_eq!(
            shape_of("struct GetQuote { sku: String }"),
            "shmlink.message=1:1;kind=6:struct;name=8:GetQuote;version=1:0;generics=1:0;\
             attrs=1:0;style=5:named;fields=1:1;field=3:sku;type=6:String;attrs=1:0;"
        );
    }

    #[test]
    fn enum_shape_is_exact() {
        assert_eq!(
            shape_of(
                "#[serde(rename_all = \"snake_case\")] \
                 enum E<T, const N: usize> { A, B(T), C { #[serde(skip)] x: [u8; N] } }"
            ),
            "shmlink.message=1:1;kind=4:enum;name=1:E;version=1:0;generics=1:2;type=1:T;\
             const=1:N;type=5:usize;attrs=1:1;attr=35:serde ( rename_all = \"snake_case\" );\
             variants=1:3;\
             variant=1:A;attrs=1:0;style=4:unit;fields=1:0;\
             variant=1:B;attrs=1:0;style=5:tuple;fields=1:1;field=1:0;type=1:T;attrs=1:0;\
             variant=1:C;attrs=1:0;style=5:named;fields=1:1;field=1:x;type=10:[ u8 ; N ];\
             attrs=1:1;attr=14:serde ( skip );"
        );
    }

    #[test]
    fn whitespace_and_doc_comments_do_not_matter() {
        let a = shape_of("struct S { a: Vec<Option<u8>>, b: (u8,u16) }");
        let b = shape_of(
            "/// docs\n#[derive(Clone)]\nstruct S {\n  /// more docs\n  a : Vec < Option < u8 > > ,\n  b: ( u8 , u16 ),\n}",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn shape_changes_with_what_matters() {
        let base = shape_of("struct S { a: u32, b: String }");
        for changed in [
            "struct S { a: u64, b: String }", // retyped
            "struct S { x: u32, b: String }", // renamed
            "struct S { b: String, a: u32 }", // reordered
            "struct T { a: u32, b: String }", // type renamed
            "struct S(u32, String);",         // style
            "enum S { a(u32), b(String) }",   // kind
            "#[serde(deny_unknown_fields)] struct S { a: u32, b: String }",
            "struct S { #[serde(rename = \"A\")] a: u32, b: String }",
            "struct S<T> { a: u32, b: String, t: T }",
        ] {
            assert_ne!(shape_of(changed), base, "{changed}");
        }
    }
}
