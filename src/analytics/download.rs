//! Model files on their way to devices: finding a version's export and sealing its bytes for
//! transfer. The live versions' exports are in memory ([`super::registry`]), so a device that
//! is up to date (`304`) costs no store read; the stored bundle is read, opened with the model
//! key, checked against the export's sha256 and (with `security.model_download = "encrypted"`)
//! encrypted under the device key only when the file is sent.

use momentum_models::export::{encrypt, sha256_hex, ModelKey, Variant};
use momentum_models::training::ModelKind;

use super::artifacts::{Bundle, ExportInfo};
use super::registry::VersionMetadata;
use super::Analytics;
use crate::error::Error;

/// How a file leaves the server.
pub enum Sealing {
    /// As stored (the transport is TLS).
    Plain,
    /// AES-256-GCM under the device key: `nonce ‖ ciphertext ‖ tag`.
    Encrypted(ModelKey),
}

/// A version's export, found; its bundle is read when the file is sent.
pub struct Download {
    pub kind: ModelKind,
    pub version: u64,
    pub info: ExportInfo,
    /// The stored bundle, when finding the export already read it.
    stored: Option<Vec<u8>>,
}

/// The export of `variant` among a version's `exports`, or `404`.
pub fn find_export<'a>(
    exports: &'a [ExportInfo],
    name: &str,
    version: u64,
    variant: Variant,
) -> Result<&'a ExportInfo, Error> {
    exports
        .iter()
        .find(|e| e.variant == variant)
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "model {name:?} version {version} has no {} .tflite export (only logistic-regression versions are exported)",
                variant.as_str()
            ),
        })
}

impl Analytics {
    async fn stored_version(
        &self,
        kind: ModelKind,
        version: u64,
    ) -> Result<(serde_json::Value, Vec<u8>), Error> {
        let name = kind.name();
        let (row, stored) = self
            .shared
            .store
            .model_version(name, version)
            .await?
            .ok_or_else(|| Error::NotFound {
                message: format!("model {name:?} has no version {version}"),
            })?;
        Ok((row.metadata, stored))
    }

    /// Finds the `variant` export of a model version (from memory for the live version).
    pub async fn find_download(
        &self,
        kind: ModelKind,
        version: u64,
        variant: Variant,
    ) -> Result<Download, Error> {
        let name = kind.name();
        if let Some(live) = self.live(kind).filter(|m| m.version == version) {
            let info = find_export(&live.exports, name, version, variant)?.clone();
            return Ok(Download {
                kind,
                version,
                info,
                stored: None,
            });
        }
        let (metadata, stored) = self.stored_version(kind, version).await?;
        let meta: VersionMetadata =
            serde_json::from_value(metadata).map_err(|source| Error::Json {
                what: format!("metadata of {name} v{version}"),
                source,
            })?;
        let info = find_export(&meta.exports, name, version, variant)?.clone();
        Ok(Download {
            kind,
            version,
            info,
            stored: Some(stored),
        })
    }

    /// The file of `download`, checked against its sha256 and sealed as `sealing` says.
    pub async fn seal(&self, download: Download, sealing: &Sealing) -> Result<Vec<u8>, Error> {
        let Download {
            kind,
            version,
            info,
            stored,
        } = download;
        let what = || format!("model {} v{version}", kind.name());
        let stored = match stored {
            Some(stored) => stored,
            None => self.stored_version(kind, version).await?.1,
        };
        let bundle = Bundle::open(self.shared.config.model_key.as_ref(), &stored)
            .map_err(|e| Error::failed(what(), e))?;
        let file = bundle
            .require(&info.file)
            .map_err(|e| Error::failed(what(), e))?;
        if sha256_hex(file) != info.sha256 {
            return Err(Error::Internal {
                message: format!(
                    "{}: the stored {} does not match its sha256",
                    what(),
                    info.file
                ),
            });
        }
        match sealing {
            Sealing::Plain => Ok(file.to_vec()),
            Sealing::Encrypted(key) => {
                encrypt(key, file).map_err(|e| Error::failed(format!("encrypting {}", what()), e))
            }
        }
    }
}
