//! The rules a derive input must follow beyond its syntax. Every broken rule becomes a
//! `syn::Error` spanned on the offending tokens; all of them are reported in one compile.

use crate::ast::Input;
use crate::attr;
use syn::{Error, GenericParam, Result};

impl Input<'_> {
    /// Checks the rules:
    ///
    /// - `name`, when given, is not empty (nor only whitespace): it identifies the message on
    ///   the wire and in errors.
    /// - No lifetime parameters: a `Message` is `DeserializeOwned + 'static`, it owns its data.
    /// - `#[message(...)]` appears on the type only, never on a variant or a field (where it
    ///   would be silently meaningless).
    pub(crate) fn validate(&self) -> Result<()> {
        let mut errors = Errors::default();

        if let Some(name) = &self.attrs().name
            && name.value().trim().is_empty()
        {
            errors.push(Error::new_spanned(
                name,
                "`name` must not be empty: it identifies the message to both ends",
            ));
        }

        for param in &self.generics().params {
            if let GenericParam::Lifetime(lifetime) = param {
                errors.push(Error::new_spanned(
                    lifetime,
                    "a Message owns its data (it is `DeserializeOwned + 'static`), so it cannot \
                     have lifetime parameters; use owned types such as `String` or `Vec<u8>`",
                ));
            }
        }

        if let Input::Enum(e) = self {
            for variant in &e.variants {
                for a in variant
                    .original
                    .attrs
                    .iter()
                    .filter(|a| attr::is_message(a))
                {
                    errors.push(Error::new_spanned(
                        a,
                        "#[message(...)] belongs on the type, not on a variant",
                    ));
                }
            }
        }
        for field in self.all_fields() {
            for a in field.original.attrs.iter().filter(|a| attr::is_message(a)) {
                errors.push(Error::new_spanned(
                    a,
                    "#[message(...)] belongs on the type, not on a field",
                ));
            }
        }

        errors.finish()
    }
}

/// Errors collected so they can be reported together.
#[derive(Default)]
struct Errors(Option<Error>);

impl Errors {
    fn push(&mut self, err: Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn finish(self) -> Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
