//! `flotilla-hub broker-config mosquitto`: the files a Mosquitto 2 broker needs to enforce
//! what the embedded broker enforces. A TLS listener that requires a client certificate
//! from the hub's CA, the certificate's common name as the user name and the client id
//! (so nobody takes over another's session), and the per-device ACL of `broker_policy`.
//! The hub then uses it with `[broker] url = "mqtts://HOST:PORT"`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use crate::ca::{HubCa, RevokedSerial};
use crate::data_dir::{DataDir, write_secret};
use crate::store::RegistryStore;
use crate::transport::broker::MAX_PAYLOAD_BYTES;
use crate::transport::broker_policy::mosquitto_acl;

/// The files written, by name.
pub const CONFIG_FILE: &str = "mosquitto.conf";
pub const ACL_FILE: &str = "flotilla.acl";
pub const CRL_FILE: &str = "crl.pem";

/// mosquitto.conf for a listener on `listen` whose certificates and ACL sit in `dir`.
pub fn mosquitto_conf(listen: SocketAddr, dir: &Path) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    format!(
        "# Written by flotilla-hub broker-config mosquitto: MQTT over TLS only, every client
# with a certificate from the hub's CA; each device on its own topics (flotilla.acl).
per_listener_settings false
allow_anonymous false
max_packet_size {packet}
# The hub is one subscriber for the whole fleet: Mosquitto's default queue (1,000 QoS 1
# messages a client) overflows with a minute's windows from 10,000 devices, and what
# overflows is dropped after the devices were told it arrived.
max_queued_messages 0
max_queued_bytes 0

listener {port} {host}
cafile {ca}
certfile {certificate}
keyfile {key}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
acl_file {acl}
# Revoked device certificates, which the hub rewrites at every revocation when its
# [broker] crl_file names this file. Mosquitto 2 reads it at start only (SIGHUP reloads
# the server certificate, not this): restart Mosquitto after `flotilla device revoke`.
crlfile {crl}
",
        packet = MAX_PAYLOAD_BYTES + 4096,
        port = listen.port(),
        host = listen.ip(),
        ca = file("ca.crt"),
        certificate = file("server.crt"),
        key = file("server.key"),
        acl = file(ACL_FILE),
        crl = file(CRL_FILE),
    )
}

/// Writes mosquitto.conf, flotilla.acl, the hub's CA certificate, its revocation list as
/// of now and a server certificate for `names` (and loopback) into `out`. The server key
/// is mode 0600: run Mosquitto as the user that owns it.
pub fn write_mosquitto(
    data_dir: &Path,
    out: &Path,
    listen: SocketAddr,
    names: &[String],
    now: i64,
) -> anyhow::Result<()> {
    let folder = DataDir::new(data_dir);
    let ca = HubCa::load_or_create(&folder.keys(), now)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let out = std::fs::canonicalize(out)?;
    let mut all_names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !listen.ip().is_unspecified() {
        all_names.push(listen.ip().to_string());
    }
    all_names.extend(names.iter().cloned());
    all_names.sort();
    all_names.dedup();
    let server = ca.issue_server(&all_names, now)?;
    let write = |name: &str, text: &str| {
        std::fs::write(out.join(name), text)
            .with_context(|| format!("cannot write {}", out.join(name).display()))
    };
    write("ca.crt", ca.certificate_pem())?;
    write("server.crt", &server.chain_pem)?;
    write_secret(&out.join("server.key"), &server.key_pem)?;
    write(ACL_FILE, &mosquitto_acl())?;
    let revoked = revoked_serials(&folder, now)?;
    write(CRL_FILE, &ca.revocation_list(&revoked, now)?)?;
    write(CONFIG_FILE, &mosquitto_conf(listen, &out))?;
    println!(
        "wrote {} (listener {listen}); run: mosquitto -c {}\nthen set in hub.toml (HOST one of {all_names:?}, or pass --name):\n[broker]\nurl = \"mqtts://HOST:{}\"\ncrl_file = \"{}\"",
        out.display(),
        out.join(CONFIG_FILE).display(),
        listen.port(),
        out.join(CRL_FILE).display(),
    );
    Ok(())
}

/// The revoked certificates in the hub's store, for a list written while the hub may be
/// stopped.
fn revoked_serials(folder: &DataDir, now: i64) -> anyhow::Result<Vec<RevokedSerial>> {
    let store = crate::store::SqliteStore::open(&folder.database())?;
    Ok(store
        .revoked_certificates(now)?
        .into_iter()
        .filter_map(|c| {
            Some(RevokedSerial {
                serial: c.serial?,
                revoked_at: c.revoked_at?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_requires_certificates_and_names_clients_by_them() {
        let conf = mosquitto_conf("0.0.0.0:8883".parse().unwrap(), Path::new("/etc/flotilla"));
        for line in [
            "allow_anonymous false",
            "listener 8883 0.0.0.0",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "acl_file /etc/flotilla/flotilla.acl",
            "cafile /etc/flotilla/ca.crt",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line} in\n{conf}");
        }
    }
}
