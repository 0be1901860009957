//! Writes the `Message` impl.
//!
//! ```text
//! const _: () = {
//!     #[automatically_derived]
//!     impl<T> ::shmlink::__private::Message for Batch<T>
//!     where
//!         T: ::shmlink::__private::Message,
//!     {
//!         const NAME: &'static str = "Batch";
//!         const VERSION: u32 = 0u32;
//!         const FINGERPRINT: u64 = ::shmlink::__private::mix_fingerprint(
//!             0x…u64, // FNV-1a 64 of the shape string
//!             <T as ::shmlink::__private::Message>::FINGERPRINT,
//!         );
//!     }
//! };
//! ```
//!
//! The anonymous `const _` keeps every name the expansion uses out of the caller's namespace
//! (serde's pattern); all paths go through the hidden `__private` module of the crate named by
//! `#[message(crate = "...")]`, `::shmlink` by default.

use crate::ast::Input;
use crate::fingerprint;
use proc_macro2::{Literal, TokenStream};
use quote::quote;
use syn::{DeriveInput, GenericParam, Path, Result, parse_quote};

/// Parses, validates and expands one `#[derive(Message)]`.
pub(crate) fn derive(node: &DeriveInput) -> Result<TokenStream> {
    let input = Input::from_syn(node)?;
    input.validate()?;
    Ok(impl_message(&input))
}

fn impl_message(input: &Input<'_>) -> TokenStream {
    let node = input.original();
    let attrs = input.attrs();
    let krate: Path = attrs
        .krate
        .clone()
        .unwrap_or_else(|| parse_quote!(::shmlink));
    let private = quote!(#krate::__private);

    let name = attrs
        .name
        .as_ref()
        .map_or_else(|| node.ident.to_string(), syn::LitStr::value);
    let version = attrs.version.as_ref().map_or(0, |(v, _)| *v);
    let base = fingerprint::fnv1a(&fingerprint::shape(input, &name, version));

    // Each type parameter must be a Message itself; its fingerprint, and each const
    // parameter's value, are mixed in declaration order.
    let mut generics = node.generics.clone();
    let base = Literal::u64_suffixed(base);
    let mut fp = quote!(#base);
    for param in &node.generics.params {
        match param {
            GenericParam::Type(t) => {
                let ident = &t.ident;
                generics
                    .make_where_clause()
                    .predicates
                    .push(parse_quote!(#ident: #private::Message));
                fp = quote!(#private::mix_fingerprint(
                    #fp,
                    <#ident as #private::Message>::FINGERPRINT
                ));
            }
            GenericParam::Const(c) => {
                let ident = &c.ident;
                fp = quote!(#private::mix_fingerprint(#fp, #ident as u64));
            }
            GenericParam::Lifetime(_) => {} // refused by validate()
        }
    }

    let ident = &node.ident;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let name = Literal::string(&name);
    let version = Literal::u32_suffixed(version);
    quote! {
        #[allow(non_upper_case_globals, unused_qualifications)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #private::Message for #ident #ty_generics #where_clause {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                const FINGERPRINT: u64 = #fp;
            }
        };
    }
}
