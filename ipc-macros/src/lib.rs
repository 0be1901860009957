//! `#[derive(Message)]` for shmlink.
//!
//! The derive implements `shmlink::Message` (defined in `ipc_tokio::message`): a stable name and
//! a 64-bit fingerprint of the type's definition, computed here at expansion time. The trait's
//! documentation, section "Deriving", describes the `#[message(...)]` attribute and what the
//! fingerprint covers. Layout, after thiserror-impl: `ast` reads the input, `attr` its
//! attributes, `valid` rejects misuse with spanned errors, `fingerprint` describes and hashes
//! the shape, `expand` writes the impl.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ast;
mod attr;
mod expand;
mod fingerprint;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `shmlink::Message`: a stable `NAME`, a `VERSION` and a compile-time `FINGERPRINT` of
/// the type's shape.
///
/// Container attribute, every key optional and at most once:
/// `#[message(name = "billing.GetQuote", version = 2, crate = "::shmlink")]`.
/// Each type parameter gets a `T: Message` bound, and its fingerprint is mixed in.
#[proc_macro_derive(Message, attributes(message))]
pub fn derive_message(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
