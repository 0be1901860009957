//! Compile-fail tests: every misuse of `#[derive(Message)]` is a spanned compile error.
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p ipc-macros --test ui`,
//! then read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
