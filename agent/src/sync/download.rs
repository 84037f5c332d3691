//! Fetching an artifact into the downloads folder. Over QUIC when the hub offers it: first
//! as a zstd patch against the version being served, then zstd-compressed, then raw, each
//! form resuming from the bytes on disk; over HTTP ranges when QUIC cannot connect at all
//! (UDP blocked). Interrupted transfers are retried with backoff (`flotilla_common::retry`);
//! decompression is bounded by the manifest's size. The hash is checked by the caller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_common::artifact_protocol::Encoding;
use flotilla_common::retry::{RetryDecision, RetryPolicy, retry};

use super::placement::InstallFolders;
use crate::transport::http::{HttpError, HubHttp};
use crate::transport::quic::{QuicArtifacts, QuicError};

/// Why an artifact could not be fetched. The text is the install's reported reason.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Quic(#[from] QuicError),
    #[error("the hub offered no form of the artifact")]
    NoFormOffered,
}

/// Five attempts per transfer (four retries), 200 ms doubling to 10 s between them.
pub const DOWNLOAD_RETRY: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    max: Duration::from_secs(10),
    attempts: Some(5),
};

/// An artifact this device holds, which the hub may have a patch against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchBase {
    pub sha256: String,
    pub file: PathBuf,
}

/// The QUIC forms to ask for, in order, each with the file it decodes against: a patch
/// against `patch_base` (unless that is the artifact itself), then zstd, then raw.
pub fn quic_forms(sha256: &str, patch_base: Option<PatchBase>) -> Vec<(Encoding, Option<PathBuf>)> {
    let mut forms = Vec::new();
    if let Some(base) = patch_base.filter(|base| base.sha256 != sha256) {
        forms.push((
            Encoding::Patch {
                base_sha256: base.sha256,
            },
            Some(base.file),
        ));
    }
    forms.push((Encoding::Zstd, None));
    forms.push((Encoding::Raw, None));
    forms
}

/// What one failed QUIC attempt means for the whole download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicVerdict {
    /// The hub does not offer this form: ask for the next one.
    NextForm,
    /// The transfer broke the manifest's bounds: no form or transport will do better.
    Fail,
    /// QUIC never got through (nothing connected, nothing received): use HTTP instead.
    FallBackToHttp,
    /// Interrupted: resume this form after a backoff.
    Retry,
}

/// `first_attempt`: the first try of this form; `connected_before`: an earlier attempt of
/// this download reached the hub over QUIC; `bytes_on_disk`: what this form's file holds.
pub fn judge_quic_failure(
    error: &QuicError,
    first_attempt: bool,
    connected_before: bool,
    bytes_on_disk: u64,
) -> QuicVerdict {
    match error {
        QuicError::Refused(_) => QuicVerdict::NextForm,
        QuicError::TooLarge { .. } => QuicVerdict::Fail,
        QuicError::Unreachable { .. } | QuicError::Setup(_)
            if !connected_before && first_attempt && bytes_on_disk == 0 =>
        {
            QuicVerdict::FallBackToHttp
        }
        _ => QuicVerdict::Retry,
    }
}

/// Fetches artifact `sha256` of `size` bytes (from its signed manifest) into
/// `folders.download_part(sha256)`.
pub async fn fetch_artifact(
    http: &HubHttp,
    quic: Option<&QuicArtifacts>,
    folders: &InstallFolders,
    patch_base: Option<PatchBase>,
    sha256: &str,
    size: u64,
) -> Result<(), DownloadError> {
    let part = folders.download_part(sha256);
    if let Some(quic) = quic {
        match fetch_over_quic(quic, folders, patch_base, sha256, &part, size).await {
            QuicOutcome::Done => return Ok(()),
            QuicOutcome::Failed(error) => return Err(error),
            QuicOutcome::Unavailable(reason) => {
                tracing::warn!(%reason, "QUIC unavailable; falling back to HTTP ranges")
            }
        }
    }
    retry(
        &DOWNLOAD_RETRY,
        |_| http.download(sha256, &part, size),
        |error, failed| {
            if matches!(error, HttpError::TooLarge { .. }) {
                return RetryDecision::Stop;
            }
            if let Some(delay) = failed.retry_in {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "download interrupted; resuming");
            }
            RetryDecision::Retry
        },
    )
    .await?;
    tracing::info!(sha256, size, "downloaded over HTTP");
    Ok(())
}

enum QuicOutcome {
    Done,
    /// The download cannot complete (e.g. larger than the manifest says).
    Failed(DownloadError),
    /// QUIC could not connect at all: use HTTP.
    Unavailable(QuicError),
}

async fn fetch_over_quic(
    quic: &QuicArtifacts,
    folders: &InstallFolders,
    patch_base: Option<PatchBase>,
    sha256: &str,
    part: &Path,
    size: u64,
) -> QuicOutcome {
    let mut connected = false;
    for (encoding, reference) in quic_forms(sha256, patch_base) {
        let form_part = if encoding == Encoding::Raw {
            part.to_path_buf()
        } else {
            folders.form_part(sha256, &encoding.label())
        };
        let mut verdict = QuicVerdict::Fail;
        let result = retry(
            &DOWNLOAD_RETRY,
            |_| quic.download(sha256, &encoding, &form_part, size),
            |error, failed| {
                verdict = judge_quic_failure(
                    error,
                    failed.number == 0,
                    connected,
                    file_len(&form_part),
                );
                match (verdict, failed.retry_in) {
                    (QuicVerdict::NextForm, _) => {
                        connected = true;
                        tracing::debug!(message = %error, form = %encoding.label(), "form not offered");
                        RetryDecision::Stop
                    }
                    (QuicVerdict::Retry, Some(delay)) => {
                        connected = true;
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "download interrupted; resuming");
                        RetryDecision::Retry
                    }
                    (QuicVerdict::Retry, None) => {
                        verdict = QuicVerdict::Fail;
                        RetryDecision::Stop
                    }
                    (QuicVerdict::Fail | QuicVerdict::FallBackToHttp, _) => RetryDecision::Stop,
                }
            },
        )
        .await;
        match result {
            Ok(()) => {
                let transferred = file_len(&form_part);
                if encoding != Encoding::Raw {
                    let decoded = decode(&form_part, reference.as_deref(), part, size);
                    let _ = std::fs::remove_file(&form_part);
                    if let Err(error) = decoded {
                        tracing::warn!(%error, form = %encoding.label(), "cannot decode the download; trying another form");
                        continue;
                    }
                }
                tracing::info!(sha256, size, transferred, form = %encoding.label(), "downloaded over QUIC");
                return QuicOutcome::Done;
            }
            Err(error) => match verdict {
                QuicVerdict::NextForm => continue,
                QuicVerdict::FallBackToHttp => return QuicOutcome::Unavailable(error),
                QuicVerdict::Fail | QuicVerdict::Retry => {
                    return QuicOutcome::Failed(DownloadError::Quic(error));
                }
            },
        }
    }
    QuicOutcome::Failed(DownloadError::NoFormOffered)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Decodes a compressed download into the raw `part`, never writing more than `size` bytes.
fn decode(
    compressed: &Path,
    reference: Option<&Path>,
    part: &Path,
    size: u64,
) -> Result<(), String> {
    let reference = reference
        .map(std::fs::read)
        .transpose()
        .map_err(|e| format!("cannot read the patch base: {e}"))?;
    let input = std::fs::File::open(compressed).map_err(|e| e.to_string())?;
    let mut output = std::fs::File::create(part).map_err(|e| e.to_string())?;
    flotilla_common::compression::decompress_bounded(
        input,
        reference.as_deref(),
        size,
        &mut output,
    )
    .map_err(|e| e.to_string())?;
    output.sync_all().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::*;

    fn unreachable() -> QuicError {
        QuicError::Unreachable {
            address: "127.0.0.1:1".parse().unwrap(),
            cause: "timed out".into(),
        }
    }

    #[test]
    fn a_patch_is_asked_for_first_unless_the_base_is_the_artifact_itself() {
        let base = PatchBase {
            sha256: "11".repeat(32),
            file: "/state/models/iris/1/model.onnx".into(),
        };
        let forms = quic_forms("22", Some(base.clone()));
        assert_eq!(
            forms,
            [
                (
                    Encoding::Patch {
                        base_sha256: base.sha256.clone()
                    },
                    Some(base.file.clone())
                ),
                (Encoding::Zstd, None),
                (Encoding::Raw, None),
            ]
        );
        let same = PatchBase {
            sha256: "22".into(),
            ..base
        };
        assert_eq!(
            quic_forms("22", Some(same)),
            [(Encoding::Zstd, None), (Encoding::Raw, None)]
        );
        assert_eq!(quic_forms("22", None).len(), 2);
    }

    #[test]
    fn quic_falls_back_to_http_only_when_it_never_got_through() {
        assert_eq!(
            judge_quic_failure(&unreachable(), true, false, 0),
            QuicVerdict::FallBackToHttp
        );
        assert_eq!(
            judge_quic_failure(&QuicError::Setup("no UDP".into()), true, false, 0),
            QuicVerdict::FallBackToHttp
        );
        // Once anything got through, a broken connection is an interruption to resume.
        for (first_attempt, connected_before, bytes) in
            [(false, false, 0), (true, true, 0), (true, false, 10)]
        {
            assert_eq!(
                judge_quic_failure(&unreachable(), first_attempt, connected_before, bytes),
                QuicVerdict::Retry,
                "{first_attempt} {connected_before} {bytes}"
            );
        }
        assert_eq!(
            judge_quic_failure(&QuicError::Refused("no such form".into()), true, false, 0),
            QuicVerdict::NextForm
        );
        assert_eq!(
            judge_quic_failure(&QuicError::TooLarge { expected: 5 }, false, true, 9),
            QuicVerdict::Fail
        );
        assert_eq!(
            judge_quic_failure(
                &QuicError::Disk(std::io::Error::other("full")),
                true,
                false,
                0
            ),
            QuicVerdict::Retry
        );
    }

    /// An HTTP artifact server that fails the first `failures` requests with 503.
    async fn flaky_hub(bytes: Vec<u8>, failures: usize) -> (HubHttp, Arc<AtomicUsize>) {
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let router = axum::Router::new().route(
            "/api/v1/artifacts/{sha}",
            axum::routing::get(move || {
                let requests = requests.clone();
                let bytes = bytes.clone();
                async move {
                    if requests.fetch_add(1, Ordering::SeqCst) < failures {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
                    } else {
                        bytes.into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (
            HubHttp::new(&format!("http://{address}"), None).unwrap(),
            seen,
        )
    }

    fn folders(root: &Path) -> InstallFolders {
        let folders = InstallFolders {
            models: root.join("models"),
            downloads: root.join("downloads"),
        };
        std::fs::create_dir_all(&folders.downloads).unwrap();
        folders
    }

    #[tokio::test]
    async fn an_http_download_is_retried_until_it_arrives() {
        let bytes = vec![3u8; 4096];
        let (http, requests) = flaky_hub(bytes.clone(), 2).await;
        let dir = tempfile::tempdir().unwrap();
        let folders = folders(dir.path());
        fetch_artifact(&http, None, &folders, None, "ab", 4096)
            .await
            .unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 3);
        assert_eq!(std::fs::read(folders.download_part("ab")).unwrap(), bytes);
    }

    #[tokio::test]
    async fn an_http_download_larger_than_its_manifest_is_not_retried() {
        let (http, requests) = flaky_hub(vec![3u8; 4096], 0).await;
        let dir = tempfile::tempdir().unwrap();
        let folders = folders(dir.path());
        let error = fetch_artifact(&http, None, &folders, None, "ab", 100)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                DownloadError::Http(HttpError::TooLarge { expected: 100 })
            ),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "artifact is larger than its manifest says (100 bytes)"
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn when_quic_never_connects_the_artifact_comes_over_http() {
        let bytes = vec![5u8; 2048];
        let (http, requests) = flaky_hub(bytes.clone(), 0).await;
        // A UDP port nobody answers on: the handshake times out.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quic = QuicArtifacts::new(&silent.local_addr().unwrap().to_string(), &"00".repeat(32))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let folders = folders(dir.path());
        let base = PatchBase {
            sha256: "11".repeat(32),
            file: dir.path().join("base.onnx"),
        };
        fetch_artifact(&http, Some(&quic), &folders, Some(base), "ab", 2048)
            .await
            .unwrap();
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(std::fs::read(folders.download_part("ab")).unwrap(), bytes);
    }
}
