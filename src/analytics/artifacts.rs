//! What a stored model version's bytes are: a small bundle of named files (the serialised
//! classifier and, for the logistic success model, its `.tflite` exports), sealed with
//! AES-256-GCM under `security.model_key` before it reaches the store. The store only ever
//! sees ciphertext; the key never leaves the process (its `Debug` is redacted).
//!
//! ```text
//! stored  = nonce (12) ‖ AES-256-GCM(bundle) ‖ tag (16)        (models::export::crypto)
//! bundle  = "MMB1" ‖ count u32 LE ‖ count × entry
//! entry   = name length u16 LE ‖ name (UTF-8) ‖ data length u32 LE ‖ data
//! ```
//!
//! Entry names: [`CLASSIFIER`] (the JSON the registry loads) and the export variants' file
//! names ([`Variant::file_name`]). Which exports a version has, with each file's sha256, size
//! and export metadata, is also in the version's metadata (`exports`), so listing versions
//! and answering `GET /v1/models/{name}/latest` never decrypt anything.

use momentum_models::export::{self, CryptoError, ModelKey, ModelMetadata, Variant};
use serde::{Deserialize, Serialize};

/// Entry holding the serialised classifier.
pub const CLASSIFIER: &str = "classifier.json";

const MAGIC: &[u8; 4] = b"MMB1";
/// Most entries a bundle may declare (it has at most three; this bounds a damaged header).
const MAX_ENTRIES: usize = 16;

/// Why stored model bytes could not be produced or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArtifactError {
    /// No `security.model_key` is configured.
    #[error(
        "security.model_key is not set: model versions are stored encrypted with AES-256-GCM; \
         set 64 hex digits (32 bytes) in MOMENTUM__SECURITY__MODEL_KEY, e.g. from `openssl rand -hex 32`"
    )]
    MissingKey,
    /// Wrong key or damaged ciphertext.
    #[error("stored model cannot be decrypted: {0}")]
    Crypto(#[from] CryptoError),
    /// Decrypted bytes that are not a bundle.
    #[error("stored model bundle is malformed: {0}")]
    Malformed(String),
    /// The bundle lacks an entry.
    #[error("stored model has no {0}")]
    Missing(String),
}

/// One exported file of a version, as its metadata lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub variant: Variant,
    /// Entry name in the bundle (and the download's file name).
    pub file: String,
    /// Hex sha256 and size of the plain file.
    pub sha256: String,
    pub size: u64,
    /// The export's metadata: feature order, standardisation, golden vectors, ...
    pub metadata: ModelMetadata,
}

/// Named files of one version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bundle {
    entries: Vec<(String, Vec<u8>)>,
}

impl Bundle {
    /// Adds (or replaces) the entry `name`.
    pub fn insert(&mut self, name: &str, data: Vec<u8>) {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = data,
            None => self.entries.push((name.to_string(), data)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
    }

    /// The entry `name`, or [`ArtifactError::Missing`].
    pub fn require(&self, name: &str) -> Result<&[u8], ArtifactError> {
        self.get(name)
            .ok_or_else(|| ArtifactError::Missing(name.to_string()))
    }

    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self
            .entries
            .iter()
            .map(|(n, d)| 6 + n.len() + d.len())
            .sum();
        let mut out = Vec::with_capacity(8 + size);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (name, data) in &self.entries {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Bundle, ArtifactError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(ArtifactError::Malformed("no MMB1 header".into()));
        }
        let count = r.u32()? as usize;
        if count > MAX_ENTRIES {
            return Err(ArtifactError::Malformed(format!("{count} entries")));
        }
        let mut bundle = Bundle::default();
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| ArtifactError::Malformed("entry name is not UTF-8".into()))?
                .to_string();
            let len = r.u32()? as usize;
            let data = r.take(len)?.to_vec();
            bundle.entries.push((name, data));
        }
        if r.at != bytes.len() {
            return Err(ArtifactError::Malformed("trailing bytes".into()));
        }
        Ok(bundle)
    }

    /// Encrypts the bundle for the store.
    pub fn seal(&self, key: Option<&ModelKey>) -> Result<Vec<u8>, ArtifactError> {
        let key = key.ok_or(ArtifactError::MissingKey)?;
        Ok(export::encrypt(key, &self.encode())?)
    }

    /// Decrypts stored bytes.
    pub fn open(key: Option<&ModelKey>, stored: &[u8]) -> Result<Bundle, ArtifactError> {
        let key = key.ok_or(ArtifactError::MissingKey)?;
        Bundle::decode(&export::decrypt(key, stored)?)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ArtifactError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| ArtifactError::Malformed("truncated".into()))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, ArtifactError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ArtifactError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        let mut b = Bundle::default();
        b.insert(CLASSIFIER, br#"{"logistic":{}}"#.to_vec());
        b.insert("model.tflite", vec![0, 1, 2, 255]);
        b
    }

    #[test]
    fn bundles_round_trip_and_replace_entries() {
        let mut b = sample();
        assert_eq!(Bundle::decode(&b.encode()).expect("decodes"), b);
        b.insert("model.tflite", vec![9]);
        assert_eq!(b.get("model.tflite"), Some(&[9u8][..]));
        assert_eq!(b.entries.len(), 2);
        assert_eq!(
            b.require("nope"),
            Err(ArtifactError::Missing("nope".into()))
        );
    }

    #[test]
    fn damaged_bundles_are_refused_not_panicked_on() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(Bundle::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Bundle::decode(&extra).is_err());
        let mut huge = bytes;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Bundle::decode(&huge).is_err());
    }

    #[test]
    fn sealed_bytes_are_ciphertext_and_need_the_right_key() {
        let key = ModelKey::generate();
        let b = sample();
        let sealed = b.seal(Some(&key)).expect("seals");
        let plain = b.encode();
        assert!(
            !sealed.windows(plain.len()).any(|w| w == plain.as_slice()),
            "the plain bundle must not appear in the stored bytes"
        );
        assert!(!sealed.windows(4).any(|w| w == MAGIC));
        assert_eq!(Bundle::open(Some(&key), &sealed).expect("opens"), b);
        assert!(matches!(
            Bundle::open(Some(&ModelKey::generate()), &sealed),
            Err(ArtifactError::Crypto(CryptoError::Authentication))
        ));
        assert_eq!(b.seal(None), Err(ArtifactError::MissingKey));
        assert_eq!(Bundle::open(None, &sealed), Err(ArtifactError::MissingKey));
        assert!(ArtifactError::MissingKey
            .to_string()
            .contains("MOMENTUM__SECURITY__MODEL_KEY"));
    }
}
