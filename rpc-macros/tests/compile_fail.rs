//! Every error the macro reports, each with the message and span a user sees.

#[test]
fn unsupported_shapes_are_spanned_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
