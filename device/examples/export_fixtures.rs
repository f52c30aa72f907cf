//! Writes the demo model's exports and check data for `tools/litert_check.py`:
//!
//! ```text
//! cargo run -p momentum-device --example export_fixtures -- DIR
//! ```
//!
//! DIR gets `model.tflite` + `model.json` (float32), `model_int8.tflite` + `model_int8.json`
//! (int8 dynamic range) and `check.json`: 500 raw feature rows of synthetic users with the
//! probabilities the Rust model gives for them (`{"inputs": [[f32; 10]], "expected": [f64]}`).

use std::path::PathBuf;

use momentum_device::fixtures;
use momentum_models::export::Variant;
use serde_json::json;

fn main() {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: export_fixtures DIR");
        std::process::exit(2);
    };
    if let Err(e) = write(&dir) {
        eprintln!("export_fixtures: {e}");
        std::process::exit(1);
    }
}

fn write(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let model = fixtures::demo_model();
    for variant in [Variant::Float32, Variant::Int8DynamicRange] {
        let exported = fixtures::demo_export(&model, 1, variant);
        let file = variant.file_name();
        std::fs::write(dir.join(file), &exported.bytes)?;
        std::fs::write(
            dir.join(file.replace(".tflite", ".json")),
            exported.metadata.to_json(),
        )?;
        println!(
            "{file}: {} bytes, sha256 {}, {} golden vectors",
            exported.bytes.len(),
            exported.metadata.sha256,
            exported.metadata.golden.len()
        );
    }
    let rows = fixtures::check_rows(&model, 500, 7);
    let inputs: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| r.iter().map(|&v| v as f32).collect())
        .collect();
    let expected: Vec<f64> = inputs
        .iter()
        .map(|x| model.predict_proba(&x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()))
        .collect();
    let check = json!({"inputs": inputs, "expected": expected});
    std::fs::write(dir.join("check.json"), check.to_string())?;
    println!("check.json: {} rows", inputs.len());
    Ok(())
}
