//! Open a store, remember a user's variation, read it back.
//!
//! Run: cargo run --example quickstart

use ussdb::{CampaignUserMap, Store};

fn main() -> ussdb::Result<()> {
    let dir = std::env::temp_dir().join("ussdb-quickstart");
    let store = Store::open(&dir)?;

    store.set(&CampaignUserMap::new(
        "user-42",
        "checkout-test",
        "Variation-1",
    ))?;

    match store.get("user-42", "checkout-test")? {
        Some(map) => println!("user-42 sees {} in checkout-test", map.variation_name),
        None => println!("user-42 has no variation yet"),
    }
    println!("{} mapping(s) in {}", store.stats().mappings, dir.display());
    Ok(())
}
