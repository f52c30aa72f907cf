//! Talking to the Momentum server: which version is the latest, and downloading it.
//!
//! The HTTP client is a trait ([`HttpClient`]) with a tiny blocking implementation on `ureq`
//! (plain HTTP; TLS is the host's business on a phone), so tests drive the update logic with a
//! fake. The protocol:
//!
//! - `GET {base}/v1/models/{name}/latest` → `200 {"version", "sha256", "size", "metadata",
//!   "encrypted"?}` where `metadata` is the export's [`ModelMetadata`] and `sha256`/`size`
//!   describe the plain `.tflite` file.
//! - `GET {base}/v1/models/{name}/versions/{v}/model.tflite` with `If-None-Match: <etag>` when
//!   the device holds a file with that tag → `304` (nothing to download) or `200` with the bytes
//!   and an `ETag`. The body is `nonce ‖ ciphertext ‖ tag` (AES-256-GCM) when `latest` said
//!   `"encrypted": true` or the response carries `X-Model-Encryption: aes-256-gcm`.
//!
//! Every request carries `X-Model-Version: <version serving on the device>` (or `none`), so
//! the server can count the versions in the field.

use std::time::Duration;

use momentum_models::export::ModelMetadata;
use serde::Deserialize;

use crate::DeviceError;

pub use momentum_models::protocol::{ENCRYPTION_AES_GCM, ENCRYPTION_HEADER, MODEL_VERSION_HEADER};

/// One HTTP response, headers with lower-case names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP GET.
pub trait HttpClient: Send + Sync {
    /// GETs `url` with extra request `headers`. Any status is a response; only transport
    /// failures are errors.
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, DeviceError>;
}

/// [`HttpClient`] on `ureq`, plain HTTP, with a global timeout and a body size limit.
#[derive(Debug, Clone)]
pub struct UreqClient {
    agent: ureq::Agent,
    max_body_bytes: u64,
}

impl UreqClient {
    /// A client whose requests give up after `timeout` and refuse bodies over
    /// `max_body_bytes`.
    pub fn new(timeout: Duration, max_body_bytes: u64) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            max_body_bytes,
        }
    }
}

impl Default for UreqClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(30), 64 << 20)
    }
}

impl HttpClient for UreqClient {
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, DeviceError> {
        let server = |e: ureq::Error| DeviceError::Server {
            reason: format!("GET {url}: {e}"),
        };
        let mut request = self.agent.get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = request.call().map_err(server)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_body_bytes)
            .read_to_vec()
            .map_err(server)?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// The `latest` document of a model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LatestModel {
    pub version: u64,
    /// Hex sha256 of the plain file.
    pub sha256: String,
    /// Size of the plain file.
    pub size: u64,
    pub metadata: ModelMetadata,
    /// Whether downloads of this version are AES-256-GCM encrypted.
    #[serde(default)]
    pub encrypted: bool,
}

/// What a download returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Download {
    /// `304`: the device already has these bytes.
    NotModified,
    /// The body (possibly encrypted) and its entity tag.
    Body {
        bytes: Vec<u8>,
        etag: Option<String>,
        encrypted: bool,
    },
}

/// The model routes of one server.
pub struct ModelServer {
    base: String,
    client: Box<dyn HttpClient>,
}

impl std::fmt::Debug for ModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelServer")
            .field("base", &self.base)
            .finish()
    }
}

impl ModelServer {
    /// The server at `base` (e.g. `http://127.0.0.1:8080`), through `client`.
    pub fn new(base: &str, client: Box<dyn HttpClient>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            client,
        }
    }

    /// The server at `base` through a default [`UreqClient`].
    pub fn http(base: &str) -> Self {
        Self::new(base, Box::new(UreqClient::default()))
    }

    /// `GET /v1/models/{name}/latest`.
    pub fn latest(&self, name: &str, serving: Option<u64>) -> Result<LatestModel, DeviceError> {
        let url = format!("{}/v1/models/{}/latest", self.base, encode(name));
        let serving = version_header(serving);
        let response = self
            .client
            .get(&url, &[(MODEL_VERSION_HEADER, serving.as_str())])?;
        if response.status != 200 {
            return Err(DeviceError::Server {
                reason: format!("GET {url}: status {}", response.status),
            });
        }
        let latest: LatestModel =
            serde_json::from_slice(&response.body).map_err(|e| DeviceError::Server {
                reason: format!("GET {url}: malformed answer: {e}"),
            })?;
        latest.metadata.check_consistency()?;
        if latest.version != latest.metadata.version
            || !latest.sha256.eq_ignore_ascii_case(&latest.metadata.sha256)
            || latest.size != latest.metadata.size
        {
            return Err(DeviceError::InvalidMetadata {
                reason: format!(
                    "latest says version {} sha256 {} size {}, its metadata says version {} sha256 {} size {}",
                    latest.version,
                    latest.sha256,
                    latest.size,
                    latest.metadata.version,
                    latest.metadata.sha256,
                    latest.metadata.size
                ),
            });
        }
        Ok(latest)
    }

    /// `GET /v1/models/{name}/versions/{version}/model.tflite`, conditional on `etag`.
    pub fn download(
        &self,
        name: &str,
        version: u64,
        etag: Option<&str>,
        serving: Option<u64>,
    ) -> Result<Download, DeviceError> {
        let url = format!(
            "{}/v1/models/{}/versions/{version}/model.tflite",
            self.base,
            encode(name)
        );
        let serving = version_header(serving);
        let mut headers = vec![(MODEL_VERSION_HEADER, serving.as_str())];
        if let Some(tag) = etag {
            headers.push(("If-None-Match", tag));
        }
        let response = self.client.get(&url, &headers)?;
        match response.status {
            304 => Ok(Download::NotModified),
            200 => Ok(Download::Body {
                encrypted: response
                    .header(ENCRYPTION_HEADER)
                    .is_some_and(|v| v.eq_ignore_ascii_case(ENCRYPTION_AES_GCM)),
                etag: response.header("etag").map(str::to_string),
                bytes: response.body,
            }),
            status => Err(DeviceError::Server {
                reason: format!("GET {url}: status {status}"),
            }),
        }
    }
}

fn version_header(serving: Option<u64>) -> String {
    serving.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// Percent-encodes a path segment (model names are plain ids; this keeps odd ones safe).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("success"), "success");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn headers_are_case_insensitive() {
        let r = HttpResponse {
            status: 200,
            headers: vec![("etag".into(), "\"abc\"".into())],
            body: vec![],
        };
        assert_eq!(r.header("ETag"), Some("\"abc\""));
        assert_eq!(r.header("x"), None);
    }
}
