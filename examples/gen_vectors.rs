//! Regenerate `bundles/vectors/*.cbor` and their `*.json` twins:
//! `cargo run --example gen_vectors`. The golden test fails if the committed files differ.

#[path = "../tests/common/vectors.rs"]
mod vectors;

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/vectors");
    std::fs::create_dir_all(&dir)?;
    for (name, desc, vb) in vectors::all() {
        std::fs::write(dir.join(format!("{name}.cbor")), vb.raw())?;
        let twin = vectors::twin(name, desc, vb.bundle());
        let text = serde_json::to_string_pretty(&twin).map_err(std::io::Error::other)? + "\n";
        std::fs::write(dir.join(format!("{name}.json")), text)?;
        println!("{name}: {} bytes", vb.raw().len());
        if name == "payment" {
            let id = mycelium::adu::market::payment_id(vb.bundle().payload());
            println!("  payment ID {}", hex::encode(id));
        }
    }
    let founder = vectors::carol().node_id().to_string();
    let guild = mycelium::adu::market::Guild::id(&founder, &vectors::guild_body().name);
    println!("  guild ID {guild}");
    Ok(())
}
