//! Carrying out a trigger: one attempt of a webhook call (HMAC-signed JSON over HTTP) or of
//! a command, each bounded by its timeout. Retries and the run record live in the service;
//! an attempt only says what happened.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use flotilla_api::http::{HttpClient, Method};
use http_body_util::Full;
use sha2::{Digest, Sha256};

use super::rule::{Command, Webhook};

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    inner.update(message);
    let inner: [u8; 32] = inner.finalize().into();
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// The `X-Flotilla-Signature` value: `sha256=HEX` of HMAC(secret, `TIMESTAMP.BODY`), so a
/// receiver can check both the body and its freshness.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &message))
    )
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Succeeded(String),
    /// Worth another attempt (timeout, unreachable, 5xx, 408, 429, non-zero exit).
    Retry(String),
    /// Another attempt would fail the same way (4xx: the receiver refuses this request).
    GiveUp(String),
}

/// One POST of `body` to the webhook.
pub async fn call_webhook(
    webhook: &Webhook,
    run_id: &str,
    body: &Bytes,
    timestamp: i64,
) -> Attempt {
    let timeout = Duration::from_secs_f64(webhook.timeout_seconds);
    match tokio::time::timeout(timeout, post(webhook, run_id, body, timestamp)).await {
        Err(_) => Attempt::Retry(format!("no answer within {} s", webhook.timeout_seconds)),
        Ok(Err(cause)) => Attempt::Retry(cause),
        Ok(Ok(status)) => {
            // Only the status is kept: the answer's body could be anything a receiver (or an
            // internal address a rule names) returns, and read tokens see the outcome.
            let said = format!("HTTP {status}");
            match status {
                200..=299 => Attempt::Succeeded(said),
                408 | 429 | 500..=599 => Attempt::Retry(said),
                _ => Attempt::GiveUp(said),
            }
        }
    }
}

async fn post(
    webhook: &Webhook,
    run_id: &str,
    body: &Bytes,
    timestamp: i64,
) -> Result<u16, String> {
    let mut client = HttpClient::new(&webhook.url).map_err(|e| e.to_string())?;
    if let Some(pem) = &webhook.ca_certificate {
        // The rule's own CA instead of the machine's roots (checked when the rule was set).
        let trust = flotilla_api::tls::ServerTrust::ca_pem(pem, "webhook.ca_certificate")
            .map_err(|e| e.to_string())?;
        client = client
            .with_tls(flotilla_api::tls::client_config(&trust, None).map_err(|e| e.to_string())?);
    }
    let signature = signature(&webhook.secret, timestamp, body);
    let timestamp = timestamp.to_string();
    let response = client
        .send(
            Method::POST,
            "",
            &[
                ("content-type", "application/json"),
                (
                    "user-agent",
                    concat!("flotilla-hub/", env!("CARGO_PKG_VERSION")),
                ),
                ("x-flotilla-event", "retraining-trigger"),
                ("x-flotilla-delivery", run_id),
                ("x-flotilla-timestamp", &timestamp),
                ("x-flotilla-signature", &signature),
            ],
            Full::new(body.clone()),
        )
        .await
        .map_err(|e| e.to_string())?;
    // The body is not read: the connection closes with the response.
    Ok(response.status().as_u16())
}

/// The last `limit` bytes of a program's output, as text.
fn tail(bytes: &[u8], limit: usize) -> String {
    let start = bytes.len().saturating_sub(limit);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// One run of the command with the trigger file; it is killed at its timeout.
pub async fn run_command(
    command: &Command,
    trigger_file: &Path,
    env: &[(&str, String)],
) -> Attempt {
    let mut process = tokio::process::Command::new(&command.argv[0]);
    // Not the hub's environment (it may hold secrets): a path, a home, a locale, and the
    // trigger's own variables.
    process.env_clear();
    for key in ["PATH", "HOME", "LANG", "TMPDIR"] {
        if let Some(value) = std::env::var_os(key) {
            process.env(key, value);
        }
    }
    process
        .args(&command.argv[1..])
        .env("FLOTILLA_TRIGGER_FILE", trigger_file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        process.env(key, value);
    }
    let child = match process.spawn() {
        Ok(child) => child,
        Err(e) => return Attempt::GiveUp(format!("cannot run {:?}: {e}", command.argv[0])),
    };
    let timeout = Duration::from_secs_f64(command.timeout_seconds);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => Attempt::Retry(format!(
            "killed after {} s without finishing",
            command.timeout_seconds
        )),
        Ok(Err(e)) => Attempt::Retry(format!("waiting for the command failed: {e}")),
        Ok(Ok(output)) => {
            let said = format!(
                "{}; stdout: {}; stderr: {}",
                output.status,
                tail(&output.stdout, 2048).trim(),
                tail(&output.stderr, 2048).trim()
            );
            if output.status.success() {
                Attempt::Succeeded(said)
            } else {
                Attempt::Retry(said)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_signature_covers_timestamp_and_body() {
        let a = signature("0123456789abcdef", 1, b"{}");
        assert!(a.starts_with("sha256="));
        assert_ne!(a, signature("0123456789abcdef", 2, b"{}"));
        assert_ne!(a, signature("0123456789abcdef", 1, b"{ }"));
    }

    #[tokio::test]
    async fn a_command_that_fails_is_retried_and_one_that_cannot_start_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.json");
        let cmd = |argv: &[&str], timeout: f64| Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_seconds: timeout,
            max_attempts: 1,
            backoff_seconds: 1.0,
        };
        let ok = run_command(
            &cmd(&["sh", "-c", "echo \"$FLOTILLA_TRIGGER_FILE $X\""], 10.0),
            &file,
            &[("X", "y".into())],
        )
        .await;
        match ok {
            Attempt::Succeeded(said) => {
                assert!(said.contains(&format!("{} y", file.display())), "{said}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run_command(&cmd(&["sh", "-c", "exit 3"], 10.0), &file, &[]).await,
            Attempt::Retry(said) if said.contains("exit status: 3")
        ));
        assert!(matches!(
            run_command(&cmd(&["sleep", "30"], 0.2), &file, &[]).await,
            Attempt::Retry(said) if said.contains("killed after")
        ));
        assert!(matches!(
            run_command(&cmd(&["/nonexistent/program"], 10.0), &file, &[]).await,
            Attempt::GiveUp(said) if said.contains("cannot run")
        ));
    }
}
