//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the `migrations/`
//! folder at compile time, and Cargo would not otherwise know that the crate depends on it.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
