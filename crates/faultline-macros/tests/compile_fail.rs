//! A bad `#[job(...)]` attribute is a compile error that names the attribute.

#[test]
fn bad_job_attributes_are_compile_errors_naming_them() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
