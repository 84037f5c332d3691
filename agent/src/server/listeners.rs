//! Binding the Unix socket and the loopback TCP port, with the checks a daemon needs: a stale
//! socket from a crash is replaced, a live one or a regular file is never clobbered.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "socket folder {0} does not exist; create it first (under systemd, RuntimeDirectory= does)"
    )]
    NoFolder(PathBuf),
    #[error(
        "{0} exists and is not a socket; refusing to replace it: remove it or choose another --socket path"
    )]
    NotASocket(PathBuf),
    #[error("another process is serving on socket {0}; stop it or choose another --socket path")]
    InUse(PathBuf),
    #[error("cannot listen on socket {path}: {source}")]
    BindUnix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    BindTcp {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a Unix socket at `path` with permission bits `mode`.
pub fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ListenError> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(ListenError::NoFolder(folder.to_owned()));
    }
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if !metadata.file_type().is_socket() {
            return Err(ListenError::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_owned()));
        }
        tracing::warn!(socket = %path.display(), "removing stale socket left by an earlier run");
        std::fs::remove_file(path).map_err(|source| ListenError::BindUnix {
            path: path.to_owned(),
            source,
        })?;
    }
    let bind_error = |source| ListenError::BindUnix {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_error)?;
    Ok(listener)
}

pub async fn bind_tcp(address: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ListenError::BindTcp { address, source })
}
