//! A retraining trigger rule: which conditions on a model's production version start
//! retraining, and what the hub does then (call a webhook or run a command). The same
//! document through the API (JSON) and the CLI (TOML); checked here with a reason for every
//! refusal.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRule {
    /// The alias whose version is watched (default `production`).
    #[serde(default = "default_alias")]
    pub alias: String,
    /// Length of one evaluation window: the rule looks at the telemetry windows that ended in
    /// each such span, one span after the other.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
    /// After a trigger fires, no condition fires again for this long (manual firing still
    /// works).
    #[serde(default = "default_cooldown_seconds")]
    pub cooldown_seconds: u64,
    /// How long after a window ends it is judged, so the devices' windows ending with it
    /// have arrived (default: half a window, at most 30 s). Give at least the agents'
    /// `upload_spread_seconds` plus a few seconds when they spread their uploads.
    #[serde(default)]
    pub settle_seconds: Option<u64>,
    #[serde(default)]
    pub drift: Option<DriftCondition>,
    #[serde(default)]
    pub error_rate: Option<ErrorRateCondition>,
    pub action: Action,
}

/// Fleet-wide drift: in `consecutive_windows` windows in a row, at least `device_percent` of
/// the devices that reported enough rows to judge had dataset drift against the version's
/// reference profile (the model's drift thresholds decide a device's drift).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DriftCondition {
    #[serde(default = "default_drift_windows")]
    pub consecutive_windows: u32,
    #[serde(default = "default_device_percent")]
    pub device_percent: f64,
    /// Fewer judged devices than this make a window inconclusive (it neither counts nor
    /// breaks the streak).
    #[serde(default = "default_min_devices")]
    pub min_devices: u64,
}

/// The production version's fleet-wide error rate above `above` in `consecutive_windows`
/// windows in a row (windows with fewer than `min_requests` requests are inconclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateCondition {
    pub above: f64,
    #[serde(default = "default_error_windows")]
    pub consecutive_windows: u32,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

/// Exactly one of `webhook` and `command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    #[serde(default)]
    pub webhook: Option<Webhook>,
    #[serde(default)]
    pub command: Option<Command>,
}

/// `POST url` with the trigger as JSON, signed with HMAC-SHA256 (see docs/triggers.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://HOST[:PORT][/PATH]`.
    pub url: String,
    /// The HMAC key shared with the receiver, at least 16 characters.
    pub secret: String,
    #[serde(default = "default_webhook_timeout")]
    pub timeout_seconds: f64,
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each later one, at most 5 minutes, each
    /// wait drawn between half and all of that (jitter, so receivers that failed together
    /// are not retried together).
    #[serde(default = "default_backoff_seconds")]
    pub backoff_seconds: f64,
    /// For an https receiver behind a private CA: that CA's certificate (PEM), trusted
    /// instead of the hub machine's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

/// A program the hub runs (no shell), with the trigger in a JSON file named by
/// `FLOTILLA_TRIGGER_FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub argv: Vec<String>,
    #[serde(default = "default_command_timeout")]
    pub timeout_seconds: f64,
    #[serde(default = "default_command_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_seconds")]
    pub backoff_seconds: f64,
}

fn default_alias() -> String {
    "production".into()
}
fn default_window_seconds() -> u64 {
    60
}
fn default_cooldown_seconds() -> u64 {
    6 * 3600
}
fn default_drift_windows() -> u32 {
    3
}
fn default_device_percent() -> f64 {
    20.0
}
fn default_min_devices() -> u64 {
    1
}
fn default_error_windows() -> u32 {
    2
}
fn default_min_requests() -> u64 {
    100
}
fn default_webhook_timeout() -> f64 {
    10.0
}
fn default_webhook_attempts() -> u32 {
    6
}
fn default_backoff_seconds() -> f64 {
    2.0
}
fn default_command_timeout() -> f64 {
    3600.0
}
fn default_command_attempts() -> u32 {
    1
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF_SECONDS: f64 = 300.0;
pub const MAX_WINDOW_SECONDS: u64 = 7 * 24 * 3600;
pub const MAX_COOLDOWN_SECONDS: u64 = 365 * 24 * 3600;
pub const MAX_SETTLE_SECONDS: u64 = 3600;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleError {
    #[error("the trigger rule does not parse: {0}")]
    Parse(String),
    #[error("invalid trigger rule: {0}")]
    Invalid(String),
}

impl TriggerRule {
    pub fn from_json(text: &str) -> Result<TriggerRule, RuleError> {
        let rule: TriggerRule =
            serde_json::from_str(text).map_err(|e| RuleError::Parse(e.to_string()))?;
        rule.check()?;
        Ok(rule)
    }

    pub fn from_toml(text: &str) -> Result<TriggerRule, RuleError> {
        let rule: TriggerRule =
            toml::from_str(text).map_err(|e| RuleError::Parse(e.to_string()))?;
        rule.check()?;
        Ok(rule)
    }

    pub fn check(&self) -> Result<(), RuleError> {
        let invalid = |m: String| Err(RuleError::Invalid(m));
        if self.alias.is_empty() {
            return invalid("give the alias whose version is watched (e.g. production)".into());
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&self.window_seconds) {
            return invalid(format!(
                "window_seconds {} is not between 1 and {MAX_WINDOW_SECONDS} (a week)",
                self.window_seconds
            ));
        }
        if self.cooldown_seconds > MAX_COOLDOWN_SECONDS {
            return invalid(format!(
                "cooldown_seconds {} is over {MAX_COOLDOWN_SECONDS} (a year)",
                self.cooldown_seconds
            ));
        }
        if self.settle_seconds.is_some_and(|s| s > MAX_SETTLE_SECONDS) {
            return invalid(format!(
                "settle_seconds is over {MAX_SETTLE_SECONDS} (an hour)"
            ));
        }
        if let Some(drift) = &self.drift {
            if drift.consecutive_windows == 0 {
                return invalid("drift.consecutive_windows must be at least 1".into());
            }
            if !(drift.device_percent > 0.0 && drift.device_percent <= 100.0) {
                return invalid(format!(
                    "drift.device_percent {} is not a share of devices: above 0 and at most 100",
                    drift.device_percent
                ));
            }
            if drift.min_devices == 0 {
                return invalid("drift.min_devices must be at least 1".into());
            }
        }
        if let Some(errors) = &self.error_rate {
            if !(errors.above >= 0.0 && errors.above < 1.0) {
                return invalid(format!(
                    "error_rate.above {} is not a rate: at least 0 and below 1",
                    errors.above
                ));
            }
            if errors.consecutive_windows == 0 {
                return invalid("error_rate.consecutive_windows must be at least 1".into());
            }
        }
        match (&self.action.webhook, &self.action.command) {
            (Some(webhook), None) => webhook.check(),
            (None, Some(command)) => command.check(),
            _ => {
                invalid("the action is exactly one of [action.webhook] and [action.command]".into())
            }
        }
    }

    /// How long after its end a window is judged, in milliseconds.
    pub fn settle_ms(&self) -> i64 {
        let seconds = self
            .settle_seconds
            .unwrap_or((self.window_seconds / 2).min(30));
        seconds as i64 * 1000
    }

    /// The rule as the API shows it: the webhook secret is not shown back.
    pub fn redacted(&self) -> TriggerRule {
        let mut rule = self.clone();
        if let Some(webhook) = &mut rule.action.webhook {
            webhook.secret = "(set)".into();
        }
        rule
    }
}

fn check_attempts(what: &str, attempts: u32, timeout: f64, backoff: f64) -> Result<(), RuleError> {
    if !(1..=20).contains(&attempts) {
        return Err(RuleError::Invalid(format!(
            "{what}.max_attempts {attempts} is not between 1 and 20"
        )));
    }
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(RuleError::Invalid(format!(
            "{what}.timeout_seconds {timeout} must be above 0"
        )));
    }
    if !(backoff.is_finite() && (0.1..=MAX_BACKOFF_SECONDS).contains(&backoff)) {
        return Err(RuleError::Invalid(format!(
            "{what}.backoff_seconds {backoff} is not between 0.1 and {MAX_BACKOFF_SECONDS}"
        )));
    }
    Ok(())
}

impl Webhook {
    fn check(&self) -> Result<(), RuleError> {
        check_url(&self.url).map_err(RuleError::Invalid)?;
        if self.secret.chars().count() < 16 {
            return Err(RuleError::Invalid(
                "webhook.secret must be at least 16 characters (it keys the HMAC signature)".into(),
            ));
        }
        if let Some(pem) = &self.ca_certificate {
            if !self.url.starts_with("https://") {
                return Err(RuleError::Invalid(
                    "webhook.ca_certificate is for an https:// receiver".into(),
                ));
            }
            crate::tls::ServerTrust::ca_pem(pem, "webhook.ca_certificate")
                .map_err(|e| RuleError::Invalid(e.to_string()))?;
        }
        check_attempts(
            "webhook",
            self.max_attempts,
            self.timeout_seconds,
            self.backoff_seconds,
        )
    }
}

impl Command {
    fn check(&self) -> Result<(), RuleError> {
        if self.argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(RuleError::Invalid(
                "command.argv names the program and its arguments, e.g. [\"/usr/bin/python3\", \"retrain.py\"]".into(),
            ));
        }
        check_attempts(
            "command",
            self.max_attempts,
            self.timeout_seconds,
            self.backoff_seconds,
        )
    }
}

/// Checks a webhook URL, `https://HOST[:PORT][/PATH]` (checked against the hub machine's
/// root certificates) or `http://...`, with the parser the HTTP client itself uses. A Unix
/// socket is no webhook.
fn check_url(url: &str) -> Result<(), String> {
    let refused = || {
        format!(
            "webhook URL {url:?} is not https://HOST[:PORT][/PATH] or http://HOST[:PORT][/PATH]"
        )
    };
    match crate::http::BaseUrl::parse(url) {
        Ok(base) if matches!(base.endpoint, crate::http::Endpoint::Tcp(_)) => Ok(()),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEBHOOK: &str = r#"
        [drift]
        consecutive_windows = 2
        device_percent = 50
        [action.webhook]
        url = "http://127.0.0.1:9000/retrain"
        secret = "0123456789abcdef"
    "#;

    #[test]
    fn a_toml_rule_gets_documented_defaults() {
        let rule = TriggerRule::from_toml(WEBHOOK).unwrap();
        assert_eq!(rule.alias, "production");
        assert_eq!(rule.window_seconds, 60);
        assert_eq!(rule.cooldown_seconds, 6 * 3600);
        let drift = rule.drift.unwrap();
        assert_eq!((drift.consecutive_windows, drift.device_percent), (2, 50.0));
        let webhook = rule.action.webhook.unwrap();
        assert_eq!(webhook.max_attempts, 6);
        assert_eq!(webhook.timeout_seconds, 10.0);
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        let cases = [
            (
                "unknown = 1\n[action.command]\nargv = [\"x\"]",
                "unknown field",
            ),
            ("[action]", "exactly one"),
            (
                "[action.command]\nargv = [\"x\"]\n[action.webhook]\nurl = \"http://a\"\nsecret = \"0123456789abcdef\"",
                "exactly one",
            ),
            ("[action.command]\nargv = []", "argv"),
            (
                "[drift]\ndevice_percent = 120\n[action.command]\nargv = [\"x\"]",
                "device_percent",
            ),
            (
                "[error_rate]\nabove = 1.5\n[action.command]\nargv = [\"x\"]",
                "error_rate.above",
            ),
            (
                "[action.webhook]\nurl = \"ftp://x\"\nsecret = \"0123456789abcdef\"",
                "not https://",
            ),
            (
                "[action.webhook]\nurl = \"http://x\"\nsecret = \"short\"",
                "16 characters",
            ),
            (
                "[action.webhook]\nurl = \"http://x\"\nsecret = \"0123456789abcdef\"\nmax_attempts = 0",
                "max_attempts",
            ),
            (
                "window_seconds = 0\n[action.command]\nargv = [\"x\"]",
                "window_seconds",
            ),
            (
                "window_seconds = 2305843009213693952\n[action.command]\nargv = [\"x\"]",
                "window_seconds",
            ),
            (
                "cooldown_seconds = 9223372036854775807\n[action.command]\nargv = [\"x\"]",
                "cooldown_seconds",
            ),
            (
                "settle_seconds = 7200\n[action.command]\nargv = [\"x\"]",
                "settle_seconds",
            ),
        ];
        for (text, expected) in cases {
            let error = TriggerRule::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn webhook_urls_are_checked_by_the_http_clients_parser() {
        for good in [
            "http://127.0.0.1:9000/a/b?c=1",
            "http://hooks.local",
            "http://[::1]:8080/x",
            "https://hooks.example/retrain",
        ] {
            assert!(check_url(good).is_ok(), "{good}");
        }
        for bad in ["http:///x", "https://", "http://u@x", "unix:/run/x.sock"] {
            assert!(
                check_url(bad).unwrap_err().contains("is not https://"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_secret_is_not_shown_back() {
        let rule = TriggerRule::from_toml(WEBHOOK).unwrap();
        assert_eq!(rule.redacted().action.webhook.unwrap().secret, "(set)");
    }
}
