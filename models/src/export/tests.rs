use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::crypto::{encrypt_with_nonce, KEY_LEN, NONCE_LEN, TAG_LEN};
use super::quant::{quantize_symmetric, HybridGraph};
use super::*;
use crate::features::FEATURE_COUNT;
use crate::predict::logistic::LogisticParams;
use tract_tflite::tflite::{self as schema, BuiltinOperator, TensorType};

/// A model fitted on synthetic rows with realistic feature scales.
fn model() -> LogisticRegression {
    let mut rng = StdRng::seed_from_u64(7);
    let rows: Vec<Vec<f64>> = (0..400)
        .map(|_| {
            vec![
                rng.gen_range(0.0..1.0),
                rng.gen_range(0.0..30.0),
                rng.gen_range(0.0..8.0),
                rng.gen_range(-1.0..1.0),
                rng.gen_range(0.0..365.0),
                rng.gen_range(0.0..30.0),
                rng.gen_range(0.0..6.0),
                rng.gen_range(0.0..14.0),
                rng.gen_range(0.0..20.0),
                rng.gen_range(0.0..1.0),
            ]
        })
        .collect();
    let labels: Vec<bool> = rows
        .iter()
        .map(|r| r[0] * 2.0 + r[9] * 2.0 - r[5] / 10.0 + rng.gen_range(-1.0..1.0) > 1.0)
        .collect();
    LogisticRegression::fit(&rows, &labels, &LogisticParams::default()).unwrap()
}

#[test]
fn float32_file_has_the_documented_graph() {
    let m = model();
    let bytes = write_tflite(&m, Variant::Float32, "test").unwrap();
    assert_eq!(&bytes[4..8], b"TFL3");
    let summary = check_tflite(&bytes).unwrap();
    assert_eq!(summary.n_features, FEATURE_COUNT);
    assert_eq!(summary.input_name, "features");
    assert_eq!(summary.output_name, "probability");
    assert_eq!(summary.operators, [41, 18, 9, 14]);
    assert!(!summary.int8_weights);

    let root = schema::root_as_model(&bytes).unwrap();
    assert_eq!(root.version(), 3);
    let codes: Vec<(i8, i32, i32)> = root
        .operator_codes()
        .unwrap()
        .iter()
        .map(|c| (c.deprecated_builtin_code(), c.builtin_code().0, c.version()))
        .collect();
    assert_eq!(codes, [(41, 41, 1), (18, 18, 1), (9, 9, 1), (14, 14, 1)]);
    let graph = root.subgraphs().unwrap().get(0);
    let tensors = graph.tensors().unwrap();
    let weights = tensors.get(5);
    assert_eq!(weights.type_(), TensorType::FLOAT32);
    let data = root
        .buffers()
        .unwrap()
        .get(weights.buffer() as usize)
        .data();
    let stored: Vec<f32> = data
        .unwrap()
        .bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let expected: Vec<f32> = m.weights.iter().map(|&w| w as f32).collect();
    assert_eq!(stored, expected);
    let signature = root.signature_defs().unwrap().get(0);
    assert_eq!(signature.signature_key(), Some("serving_default"));
}

#[test]
fn int8_file_uses_the_hybrid_fully_connected() {
    let m = model();
    let bytes = write_tflite(&m, Variant::Int8DynamicRange, "test").unwrap();
    let summary = check_tflite(&bytes).unwrap();
    assert!(summary.int8_weights);
    let root = schema::root_as_model(&bytes).unwrap();
    let fc = root
        .operator_codes()
        .unwrap()
        .iter()
        .find(|c| c.builtin_code() == BuiltinOperator::FULLY_CONNECTED)
        .unwrap();
    assert_eq!(fc.version(), 3);
    let weights = root.subgraphs().unwrap().get(0).tensors().unwrap().get(5);
    assert_eq!(weights.type_(), TensorType::INT8);
    let q = weights.quantization().unwrap();
    assert_eq!(q.zero_point().unwrap().get(0), 0);
    assert!(q.scale().unwrap().get(0) > 0.0);
}

#[test]
fn symmetric_quantisation_matches_tflite_rules() {
    let q = quantize_symmetric(&[0.5, -1.27, 0.0, 1.0]);
    assert!((q.scale - 0.01).abs() < 1e-7);
    assert_eq!(q.values, [50, -127, 0, 100]);
    let zeros = quantize_symmetric(&[0.0, 0.0]);
    assert_eq!((zeros.values, zeros.scale), (vec![0, 0], 1.0));
}

#[test]
fn int8_emulation_stays_within_its_tolerance_in_the_training_range() {
    let m = model();
    let graph = HybridGraph::new(&m).unwrap();
    let s = &m.standardizer;
    let mut rng = StdRng::seed_from_u64(3);
    let mut worst = 0.0f64;
    for _ in 0..2000 {
        let x: Vec<f32> = (0..FEATURE_COUNT)
            .map(|j| (s.mean[j] + s.std[j] * rng.gen_range(-2.5..2.5)) as f32)
            .collect();
        let exact = m.predict_proba(&x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
        worst = worst.max((f64::from(graph.predict(&x)) - exact).abs());
    }
    assert!(worst < 1e-2, "int8 error {worst}");
    assert!(worst > 0.0, "quantisation must show some error");
}

#[test]
fn export_builds_consistent_metadata_with_golden_vectors() {
    let m = model();
    let mut options = ExportOptions::new("success", 4, Variant::Float32);
    options.extra_golden_rows = vec![vec![0.5; FEATURE_COUNT]];
    options.training_window = Some(TrainingWindow {
        from_ms: 1,
        to_ms: 2,
    });
    let exported = export(&m, &options).unwrap();
    let md = &exported.metadata;
    assert_eq!(md.golden.len(), 9);
    assert_eq!(md.sha256, sha256_hex(&exported.bytes));
    assert_eq!(md.size, exported.bytes.len() as u64);
    assert_eq!(md.golden_tolerance, 1e-5);
    assert_eq!(md.feature_names[0], "completion_rate");
    // The first golden vector is the mean: the probability is sigmoid(bias).
    let p0 = crate::predict::logistic::sigmoid(m.bias);
    assert!((md.golden[0].probability - p0).abs() < 1e-6);
    md.check_file(&exported.bytes).unwrap();

    let json = md.to_json();
    let back = ModelMetadata::from_json(json.as_bytes()).unwrap();
    assert_eq!(&back, md);
    // Same version, same file and golden rows; another version, another file.
    let again = export(&m, &options).unwrap();
    assert_eq!(
        (&again.bytes, &again.metadata.golden),
        (&exported.bytes, &md.golden)
    );
    options.version = 5;
    assert_ne!(export(&m, &options).unwrap().metadata.sha256, md.sha256);

    let mut damaged = exported.bytes.clone();
    damaged[40] ^= 1;
    let err = md.check_file(&damaged).unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(md.check_file(&damaged[1..]).is_err());

    let int8 = export(
        &m,
        &ExportOptions::new("success", 4, Variant::Int8DynamicRange),
    )
    .unwrap();
    assert_eq!(int8.metadata.variant, Variant::Int8DynamicRange);
    assert_eq!(int8.metadata.golden_tolerance, 1e-2);
}

#[test]
fn export_refuses_models_it_cannot_express() {
    let mut m = model();
    let mut options = ExportOptions::new("success", 1, Variant::Float32);
    options.feature_names.pop();
    assert!(matches!(
        export(&m, &options),
        Err(ExportError::InvalidModel { .. })
    ));
    m.weights[0] = f64::NAN;
    assert!(matches!(
        write_tflite(&m, Variant::Float32, "test"),
        Err(ExportError::InvalidModel { .. })
    ));
}

#[test]
fn metadata_rejects_inconsistent_documents() {
    let m = model();
    let md = export(&m, &ExportOptions::new("success", 1, Variant::Float32))
        .unwrap()
        .metadata;
    let mut bad = md.clone();
    bad.golden.clear();
    assert!(bad.check_consistency().is_err());
    let mut bad = md.clone();
    bad.golden[0].input.pop();
    assert!(bad.check_consistency().is_err());
    let mut bad = md.clone();
    bad.sha256 = "xyz".into();
    assert!(bad.check_consistency().is_err());
    assert!(ModelMetadata::from_json(b"{not json").is_err());
}

#[test]
fn check_tflite_refuses_damaged_files() {
    let bytes = write_tflite(&model(), Variant::Float32, "test").unwrap();
    assert!(check_tflite(&bytes[..bytes.len() / 2]).is_err());
    assert!(check_tflite(b"").is_err());
    let mut wrong_id = bytes.clone();
    wrong_id[4..8].copy_from_slice(b"ONNX");
    assert!(check_tflite(&wrong_id)
        .unwrap_err()
        .to_string()
        .contains("TFL3"));
    // Every single-byte corruption is either refused or still a structurally valid graph.
    for i in (8..bytes.len()).step_by(7) {
        let mut damaged = bytes.clone();
        damaged[i] = damaged[i].wrapping_add(0x55);
        if let Ok(summary) = check_tflite(&damaged) {
            assert!(summary.n_features > 0);
        }
    }
}

#[test]
fn aes_gcm_round_trip_and_failures() {
    let key = ModelKey::generate();
    let plain = b"TFL3 model bytes".to_vec();
    let sealed = encrypt(&key, &plain).unwrap();
    assert_eq!(sealed.len(), NONCE_LEN + plain.len() + TAG_LEN);
    assert_eq!(decrypt(&key, &sealed).unwrap(), plain);
    // Random nonces: two encryptions differ.
    assert_ne!(encrypt(&key, &plain).unwrap(), sealed);

    let other = ModelKey::generate();
    assert_eq!(decrypt(&other, &sealed), Err(CryptoError::Authentication));
    let mut tampered = sealed.clone();
    tampered[NONCE_LEN + 2] ^= 1;
    assert_eq!(decrypt(&key, &tampered), Err(CryptoError::Authentication));
    assert_eq!(
        decrypt(&key, &sealed[..10]),
        Err(CryptoError::TooShort { len: 10 })
    );
}

#[test]
fn model_keys_parse_from_hex_and_never_print() {
    let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    let key = ModelKey::from_hex(&format!(" {hex}\n")).unwrap();
    assert_eq!(format!("{key:?}"), "ModelKey(<redacted>)");
    assert_eq!(ModelKey::from_hex("abc"), Err(CryptoError::KeyFormat));
    assert_eq!(
        ModelKey::from_hex(&"zz".repeat(KEY_LEN)),
        Err(CryptoError::KeyFormat)
    );
    assert_eq!(
        ModelKey::from_bytes(&[1; 16]),
        Err(CryptoError::KeyLength { len: 16 })
    );
    // A fixed vector: same key, nonce and plaintext give the same bytes on both sides.
    let a = encrypt_with_nonce(&key, [7; NONCE_LEN], b"x").unwrap();
    let b = encrypt_with_nonce(&ModelKey::from_hex(hex).unwrap(), [7; NONCE_LEN], b"x").unwrap();
    assert_eq!(a, b);
    assert_eq!(decrypt(&key, &a).unwrap(), b"x");
}
