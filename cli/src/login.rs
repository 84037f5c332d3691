//! `flotilla login`: remembers a hub, the CA its certificate comes from, and a token, so
//! later commands need none of `--hub`, `--ca-file` and `--token`. Kept in
//! `$XDG_CONFIG_HOME/flotilla/login.toml` (else `~/.config/flotilla/login.toml`), mode
//! 0600: it holds a token. A flag or environment variable given to a command wins over it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What `login` stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub hub: String,
    /// The hub's CA certificate (PEM), copied: the file it came from may move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// How a command reaches the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub hub: String,
    /// The CA certificate (PEM) and where it came from, for errors.
    pub ca: Option<(String, String)>,
    pub token: Option<String>,
}

/// The hub of a command with neither a flag nor a login.
pub const DEFAULT_HUB: &str = "https://127.0.0.1:7070";

/// Flags (and environment) first, then the login, then the default hub. A CA or token from
/// the login is used only with the login's own hub.
pub fn resolve(
    hub: Option<String>,
    ca: Option<(String, String)>,
    token: Option<String>,
    login: Option<Login>,
) -> Connection {
    let login = login.filter(|l| hub.as_ref().is_none_or(|h| *h == l.hub));
    let login_ca = login.as_ref().and_then(|l| {
        l.ca_certificate
            .clone()
            .map(|pem| (pem, "the CA saved by flotilla login".to_owned()))
    });
    Connection {
        hub: hub
            .or_else(|| login.as_ref().map(|l| l.hub.clone()))
            .unwrap_or_else(|| DEFAULT_HUB.to_owned()),
        ca: ca.or(login_ca),
        token: token.or_else(|| login.and_then(|l| l.token)),
    }
}

/// Where the login lives.
pub fn path() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config.join("flotilla").join("login.toml"))
}

/// The saved login, if there is one.
pub fn load() -> anyhow::Result<Option<Login>> {
    let Some(path) = path() else {
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map(Some).with_context(|| {
            format!(
                "{} is not a login (run flotilla login again)",
                path.display()
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Saves `login` with mode 0600, replacing any earlier one.
pub fn save(login: &Login) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path =
        path().context("neither XDG_CONFIG_HOME nor HOME is set: nowhere to save the login")?;
    let folder = path.parent().expect("the login path has a folder");
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let temporary = folder.join(".login.toml.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(toml::to_string(login)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// Forgets the login; whether there was one.
pub fn remove() -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = path() else {
        return Ok(None);
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Reads a CA file given to `--ca-file`.
pub fn read_ca(path: &Path) -> anyhow::Result<(String, String)> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the hub's CA certificate {}", path.display()))?;
    Ok((pem, path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> Login {
        Login {
            hub: "https://hub.example:7070".into(),
            ca_certificate: Some("PEM".into()),
            token: Some("flo_read_x".into()),
        }
    }

    #[test]
    fn flags_win_then_the_login_then_the_default() {
        let none = resolve(None, None, None, None);
        assert_eq!(
            (none.hub.as_str(), none.ca, none.token),
            (DEFAULT_HUB, None, None)
        );
        let saved = resolve(None, None, None, Some(login()));
        assert_eq!(saved.hub, "https://hub.example:7070");
        assert_eq!(saved.token.as_deref(), Some("flo_read_x"));
        assert_eq!(saved.ca.unwrap().0, "PEM");
        let flagged = resolve(None, None, Some("flo_op_y".into()), Some(login()));
        assert_eq!(flagged.token.as_deref(), Some("flo_op_y"));
        // Another hub: the login's CA and token are not sent there.
        let other = resolve(Some("https://other:1".into()), None, None, Some(login()));
        assert_eq!((other.ca, other.token), (None, None));
    }
}
