//! Runtime behaviour of `#[derive(Message)]`: names, versions and fingerprints.
//!
//! Fingerprints are asserted as literal values: the same definition must give the same value in
//! every build, on every machine, with every compiler. If one of these literals has to change,
//! the fingerprint algorithm changed and every deployed peer becomes incompatible: bump the
//! format version in `ipc-macros/src/fingerprint.rs` and say so in the changelog.

// The test types exist for their fingerprints; their fields are never read.
#![allow(dead_code)]

use ipc_macros::Message;
use ipc_tokio::message::{Bincode, Codec, Message, fingerprint_of, mix_fingerprint};
use serde::{Deserialize, Serialize};

// ===== fixed values =====

#[derive(Message, Serialize, Deserialize)]
struct GetQuote {
    sku: String,
}

/// The shape string of `GetQuote`, as documented in `ipc-macros/src/fingerprint.rs`.
const GET_QUOTE_SHAPE: &str = "shmlink.message=1:1;kind=6:struct;name=8:GetQuote;version=1:0;\
     generics=1:0;attrs=1:0;style=5:named;fields=1:1;field=3:sku;type=6:String;attrs=1:0;";

#[test]
fn fingerprint_is_a_fixed_value() {
    assert_eq!(GetQuote::NAME, "GetQuote");
    assert_eq!(GetQuote::VERSION, 0);
    assert_eq!(GetQuote::FINGERPRINT, 0x935a_804d_2d0d_3cdd);
    // The same value from the runtime's independent implementation of the hash.
    assert_eq!(GetQuote::FINGERPRINT, fingerprint_of(GET_QUOTE_SHAPE));
}

#[derive(Message, Serialize, Deserialize)]
#[message(name = "demo.Shapes", version = 7)]
#[serde(rename_all = "snake_case")]
enum Shapes {
    Empty,
    Circle(f64),
    Rect { w: u32, h: u32 },
}

const SHAPES_SHAPE: &str = "shmlink.message=1:1;kind=4:enum;name=11:demo.Shapes;version=1:7;\
     generics=1:0;attrs=1:1;attr=35:serde ( rename_all = \"snake_case\" );variants=1:3;\
     variant=5:Empty;attrs=1:0;style=4:unit;fields=1:0;\
     variant=6:Circle;attrs=1:0;style=5:tuple;fields=1:1;field=1:0;type=3:f64;attrs=1:0;\
     variant=4:Rect;attrs=1:0;style=5:named;fields=1:2;field=1:w;type=3:u32;attrs=1:0;\
     field=1:h;type=3:u32;attrs=1:0;";

#[test]
fn enum_fingerprint_is_a_fixed_value() {
    assert_eq!(Shapes::NAME, "demo.Shapes");
    assert_eq!(Shapes::VERSION, 7);
    assert_eq!(Shapes::FINGERPRINT, 0x9413_7f81_6452_851a);
    assert_eq!(Shapes::FINGERPRINT, fingerprint_of(SHAPES_SHAPE));
}

// ===== what changes the fingerprint, and what does not =====

/// One definition of `S` per module, so every variant keeps the same type name.
mod base {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct S {
        a: u32,
        b: String,
    }
}

mod same_in_another_module {
    use super::*;
    /// Docs, other derives and layout do not enter the fingerprint.
    #[derive(Message, Serialize, Deserialize, Clone, Debug)]
    pub(super) struct S {
        /// The a.
        a: u32,
        b: String,
    }
}

mod explicit_version_zero {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    #[message(version = 0)]
    pub(super) struct S {
        a: u32,
        b: String,
    }
}

mod field_renamed {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct S {
        x: u32,
        b: String,
    }
}

mod field_retyped {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct S {
        a: u64,
        b: String,
    }
}

mod fields_reordered {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct S {
        b: String,
        a: u32,
    }
}

mod versioned {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    #[message(version = 1)]
    pub(super) struct S {
        a: u32,
        b: String,
    }
}

mod serde_renamed {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct S {
        #[serde(rename = "A")]
        a: u32,
        b: String,
    }
}

mod serde_skipped {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct S {
        a: u32,
        #[serde(skip)]
        b: String,
    }
}

mod tuple_style {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct S(u32, String);
}

#[test]
fn layout_docs_and_module_do_not_change_the_fingerprint() {
    assert_eq!(base::S::FINGERPRINT, same_in_another_module::S::FINGERPRINT);
    assert_eq!(base::S::FINGERPRINT, explicit_version_zero::S::FINGERPRINT);
}

#[test]
fn every_shape_change_changes_the_fingerprint() {
    let all = [
        ("base", base::S::FINGERPRINT),
        ("field renamed", field_renamed::S::FINGERPRINT),
        ("field retyped", field_retyped::S::FINGERPRINT),
        ("fields reordered", fields_reordered::S::FINGERPRINT),
        ("version 1", versioned::S::FINGERPRINT),
        ("serde rename", serde_renamed::S::FINGERPRINT),
        ("serde skip", serde_skipped::S::FINGERPRINT),
        ("tuple style", tuple_style::S::FINGERPRINT),
    ];
    for (i, (what, fp)) in all.iter().enumerate() {
        for (other, other_fp) in &all[i + 1..] {
            assert_ne!(fp, other_fp, "{what} and {other} share a fingerprint");
        }
    }
    assert_eq!(versioned::S::VERSION, 1);
}

mod enum_base {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) enum E {
        A,
        B(u32),
        C { x: String },
    }
}

mod enum_variant_renamed {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) enum E {
        A,
        Bee(u32),
        C { x: String },
    }
}

mod enum_variants_reordered {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) enum E {
        B(u32),
        A,
        C { x: String },
    }
}

mod enum_variant_field_renamed {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) enum E {
        A,
        B(u32),
        C { y: String },
    }
}

mod enum_variant_added {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) enum E {
        A,
        B(u32),
        C { x: String },
        D,
    }
}

mod struct_not_enum {
    use super::*;
    #[derive(Message, Serialize, Deserialize)]
    pub(super) struct E;
}

#[test]
fn every_enum_change_changes_the_fingerprint() {
    let all = [
        enum_base::E::FINGERPRINT,
        enum_variant_renamed::E::FINGERPRINT,
        enum_variants_reordered::E::FINGERPRINT,
        enum_variant_field_renamed::E::FINGERPRINT,
        enum_variant_added::E::FINGERPRINT,
        struct_not_enum::E::FINGERPRINT,
    ];
    for (i, fp) in all.iter().enumerate() {
        assert!(!all[i + 1..].contains(fp), "entry {i} collides");
    }
}

// ===== names =====

#[derive(Message, Serialize, Deserialize)]
#[message(name = "billing.GetQuote")]
struct NamedQuote {
    sku: String,
}

mod renamed_type_same_name {
    use super::*;
    /// The Rust type was renamed but kept its wire name: still compatible.
    #[derive(Message, Serialize, Deserialize)]
    #[message(name = "billing.GetQuote")]
    pub(super) struct QuoteRequest {
        sku: String,
    }
}

#[test]
fn name_override() {
    assert_eq!(NamedQuote::NAME, "billing.GetQuote");
    assert_ne!(NamedQuote::FINGERPRINT, GetQuote::FINGERPRINT);
    assert_eq!(
        NamedQuote::FINGERPRINT,
        renamed_type_same_name::QuoteRequest::FINGERPRINT
    );
}

// ===== generics =====

#[derive(Message, Serialize, Deserialize, Debug, PartialEq, Clone, Default)]
struct Tick(u64);

#[derive(Message, Serialize, Deserialize, Debug, PartialEq, Clone, Default)]
struct Stamp(u64);

#[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
struct Batch<T> {
    items: Vec<T>,
}

#[derive(Message, Serialize, Deserialize)]
struct Pair<A, B>(A, B);

#[derive(Message, Serialize, Deserialize)]
struct Bounded<T: Clone>
where
    T: Default,
{
    value: T,
}

#[derive(Message, Serialize, Deserialize)]
struct Channel<const ID: u32> {
    value: u64,
}

#[test]
fn generic_fingerprint_depends_on_the_parameter() {
    assert_ne!(Tick::FINGERPRINT, Stamp::FINGERPRINT);
    assert_ne!(<Batch<Tick>>::FINGERPRINT, <Batch<Stamp>>::FINGERPRINT);
    assert_ne!(
        <Batch<Tick>>::FINGERPRINT,
        <Batch<Batch<Tick>>>::FINGERPRINT
    );
    assert_eq!(<Batch<Tick>>::NAME, "Batch");

    let shape = "shmlink.message=1:1;kind=6:struct;name=5:Batch;version=1:0;generics=1:1;\
                 type=1:T;attrs=1:0;style=5:named;fields=1:1;field=5:items;type=9:Vec < T >;\
                 attrs=1:0;";
    assert_eq!(
        <Batch<Tick>>::FINGERPRINT,
        mix_fingerprint(fingerprint_of(shape), Tick::FINGERPRINT)
    );

    // Parameters are mixed in order.
    assert_ne!(
        <Pair<Tick, Stamp>>::FINGERPRINT,
        <Pair<Stamp, Tick>>::FINGERPRINT
    );
    assert_ne!(
        <Pair<Tick, Tick>>::FINGERPRINT,
        <Pair<Stamp, Stamp>>::FINGERPRINT
    );

    // Bounds and where clauses are kept.
    assert_ne!(<Bounded<Tick>>::FINGERPRINT, <Bounded<Stamp>>::FINGERPRINT);

    // Const parameters mix in their value.
    assert_ne!(<Channel<1>>::FINGERPRINT, <Channel<2>>::FINGERPRINT);
    assert_eq!(<Channel<1>>::FINGERPRINT, <Channel<1>>::FINGERPRINT);
}

// ===== styles and round trips =====

#[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
struct Unit;

#[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
struct Newtype(String);

#[derive(Message, Serialize, Deserialize, Debug, PartialEq)]
enum Event {
    Started,
    Moved(i32, i32),
    Renamed { from: String, to: String },
    Ticked(Batch<Tick>),
}

fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: &M) {
    let mut buf = vec![0u8; Bincode::encoded_len(msg).unwrap()];
    Bincode::encode_into(msg, &mut buf).unwrap();
    assert_eq!(&Bincode::decode::<M>(&buf).unwrap(), msg);
}

#[test]
fn all_styles_derive_and_round_trip() {
    round_trip(&Unit);
    round_trip(&Newtype("n".to_owned()));
    round_trip(&Tick(9));
    round_trip(&Batch {
        items: vec![Tick(1), Tick(2)],
    });
    round_trip(&Event::Started);
    round_trip(&Event::Moved(-1, 1));
    round_trip(&Event::Renamed {
        from: "a".to_owned(),
        to: "b".to_owned(),
    });
    round_trip(&Event::Ticked(Batch {
        items: vec![Tick(3)],
    }));

    let all = [
        Unit::FINGERPRINT,
        Newtype::FINGERPRINT,
        Tick::FINGERPRINT,
        Event::FINGERPRINT,
    ];
    for (i, fp) in all.iter().enumerate() {
        assert!(!all[i + 1..].contains(fp));
    }
}

// ===== crate path override =====

mod reexport {
    pub(crate) use shmlink as sl;
}

#[derive(Message, Serialize, Deserialize)]
#[message(crate = "crate::reexport::sl")]
struct ThroughReexport {
    value: u8,
}

#[derive(Message, Serialize, Deserialize)]
#[message(crate = "::shmlink", name = "ThroughReexport")]
struct ExplicitDefaultCrate {
    value: u8,
}

#[test]
fn crate_override_does_not_change_the_fingerprint() {
    assert_eq!(ThroughReexport::NAME, "ThroughReexport");
    assert_eq!(
        ThroughReexport::FINGERPRINT,
        ExplicitDefaultCrate::FINGERPRINT
    );
}
