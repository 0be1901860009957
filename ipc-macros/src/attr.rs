//! The `#[message(...)]` container attribute, and the `#[serde(...)]` attributes that enter the
//! fingerprint.
//!
//! ```text
//! #[message(name = "billing.GetQuote", version = 2, crate = "::shmlink")]
//! ```
//!
//! Every key is optional and may appear once, across all `#[message]` attributes of the type.
//! Values are checked for their kind here (a string for `name` and `crate`, a `u32` literal for
//! `version`); rules about the values themselves (a non-empty name) live in `valid.rs`.

use syn::meta::ParseNestedMeta;
use syn::{Attribute, Error, Expr, ExprLit, Lit, LitInt, LitStr, Path, Result};

/// The parsed `#[message(...)]` keys of one type.
#[derive(Default)]
pub(crate) struct Attrs {
    /// `name = "..."`: the stable name, with its literal for error spans.
    pub(crate) name: Option<LitStr>,
    /// `version = N`: the value and its literal.
    pub(crate) version: Option<(u32, LitInt)>,
    /// `crate = "path"`: where the expansion finds `shmlink`.
    pub(crate) krate: Option<Path>,
}

/// The keys `#[message(...)]` accepts, for error messages.
const EXPECTED: &str = "expected `name`, `version` or `crate`";

/// Parses every `#[message(...)]` among `attrs`. Errors of all attributes are combined, so one
/// compile reports every mistake.
pub(crate) fn get(attrs: &[Attribute]) -> Result<Attrs> {
    let mut out = Attrs::default();
    let mut errors: Option<Error> = None;
    for attr in attrs.iter().filter(|a| is_message(a)) {
        if let Err(err) = attr.parse_nested_meta(|meta| parse_key(&mut out, &meta)) {
            match &mut errors {
                Some(all) => all.combine(err),
                None => errors = Some(err),
            }
        }
    }
    match errors {
        Some(err) => Err(err),
        None => Ok(out),
    }
}

fn parse_key(out: &mut Attrs, meta: &ParseNestedMeta<'_>) -> Result<()> {
    let path = &meta.path;
    if path.is_ident("name") {
        let lit = string_value(meta, "name", "#[message(name = \"billing.GetQuote\")]")?;
        set_once(&mut out.name, lit, path, "name")
    } else if path.is_ident("version") {
        let version = version_value(meta)?;
        set_once(&mut out.version, version, path, "version")
    } else if path.is_ident("crate") {
        let lit = string_value(meta, "crate", "#[message(crate = \"::shmlink\")]")?;
        let krate = lit
            .parse::<Path>()
            .map_err(|_| Error::new_spanned(&lit, "`crate` must be a path, like \"::shmlink\""))?;
        set_once(&mut out.krate, krate, path, "crate")
    } else {
        let key: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        Err(Error::new_spanned(
            path,
            format!("unknown #[message] key `{}`; {EXPECTED}", key.join("::")),
        ))
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, path: &Path, key: &str) -> Result<()> {
    if slot.is_some() {
        return Err(Error::new_spanned(
            path,
            format!("duplicate #[message] key `{key}`; give it once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// The value after `key =`, which must be a string literal.
fn string_value(meta: &ParseNestedMeta<'_>, key: &str, example: &str) -> Result<LitStr> {
    match meta.value()?.parse::<Expr>()? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit),
        other => Err(Error::new_spanned(
            other,
            format!("`{key}` must be a string literal, like {example}"),
        )),
    }
}

/// The value after `version =`, which must be an integer literal that fits a `u32`.
fn version_value(meta: &ParseNestedMeta<'_>) -> Result<(u32, LitInt)> {
    const MSG: &str = "`version` must be an integer literal from 0 to 4294967295, like \
                       #[message(version = 2)]";
    match meta.value()?.parse::<Expr>()? {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) if matches!(lit.suffix(), "" | "u32") => match lit.base10_parse::<u32>() {
            Ok(value) => Ok((value, lit)),
            Err(_) => Err(Error::new_spanned(lit, MSG)),
        },
        other => Err(Error::new_spanned(other, MSG)),
    }
}

/// Whether `attr` is a `#[message...]` attribute.
pub(crate) fn is_message(attr: &Attribute) -> bool {
    attr.path().is_ident("message")
}

/// The `#[serde...]` attributes among `attrs`: they can change the wire shape, so their tokens
/// enter the fingerprint.
pub(crate) fn serde(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .collect()
}
