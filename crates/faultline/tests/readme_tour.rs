//! The README's tour compiles: `examples/readme_tour.rs` is its Rust blocks, in order (Cargo
//! builds examples with the tests), and this test fails when the two drift apart.
//! `FAULTLINE_WRITE_README=1 cargo test -p faultline-queue --test readme_tour` (`make readme`)
//! rewrites the example from the README.

const HEADER: &str =
    "//! The README's tour, block by block, as written there (generated: `make readme`; the\n\
//! test `readme_tour` checks that they agree). It compiles with the tests; run it with\n\
//! `DATABASE_URL=postgres://… cargo run -p faultline-queue --example readme_tour`.\n\
// The tour's other steps are functions that its `main` does not call.\n\
#![allow(dead_code)]\n\n";

/// The ```rust blocks between the tour's heading and the next section.
fn tour(readme: &str) -> String {
    let start = readme
        .find("## A tour for Rust users")
        .expect("README.md has its tour");
    let rest = &readme[start + 3..];
    let tour = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut lines = tour.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```rust" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    assert!(
        blocks.len() >= 4,
        "the tour's Rust blocks: {}",
        blocks.len()
    );
    format!("{HEADER}{}\n", blocks.join("\n\n"))
}

#[test]
fn the_readme_tour_is_the_compiled_example() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let readme = std::fs::read_to_string(format!("{root}README.md")).unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/readme_tour.rs");
    let expected = tour(&readme);
    if std::env::var_os("FAULTLINE_WRITE_README").is_some() {
        std::fs::write(example, &expected).unwrap();
        return;
    }
    let actual = std::fs::read_to_string(example).unwrap_or_default();
    assert!(
        actual == expected,
        "examples/readme_tour.rs is not README.md's tour: run `make readme`"
    );
}
