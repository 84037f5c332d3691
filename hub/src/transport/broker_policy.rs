//! Who may do what on the broker: the rules the embedded broker enforces in its hooks, and
//! that `flotilla-hub broker-config mosquitto` writes out for Mosquitto. Pure decisions; the
//! broker hooks do the I/O.
//!
//! A client is named by its TLS certificate (issued by the hub's CA): a device's common
//! name is its device id, the hub's is [`HUB_IDENTITY`]. A device may publish only its own
//! reports, status and telemetry, and subscribe only to its own desired state; the hub may
//! do anything.

use flotilla_proto::control::topics;

use crate::ca::HUB_IDENTITY;

/// A client the broker let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerClient {
    /// The hub's own client: every right.
    Hub,
    /// A device, by id.
    Device(String),
}

/// The topics under a device's own prefix that it publishes.
const DEVICE_PUBLISHES: [&str; 3] = ["reported", "status", "telemetry"];

/// Who a connecting client is. `certificate_name` is the common name of the certificate it
/// presented (`None` on a listener without TLS: trials on one machine, where the client id
/// is taken at its word). A certificate names the client id it may use, so nobody can take
/// over (and knock off) another's session.
pub fn identify(
    certificate_name: Option<&str>,
    client_id: &str,
    tls: bool,
) -> Result<BrokerClient, String> {
    let name = match (certificate_name, tls) {
        (Some(name), _) => name,
        (None, true) => return Err("presented no client certificate".into()),
        (None, false) if client_id.starts_with(HUB_IDENTITY) => return Ok(BrokerClient::Hub),
        (None, false) => client_id,
    };
    if name == HUB_IDENTITY {
        // Several hub processes may share the identity; each has its own client id.
        return if client_id.starts_with(HUB_IDENTITY) {
            Ok(BrokerClient::Hub)
        } else {
            Err(format!(
                "the hub's certificate asked for client id {client_id:?}, which does not start with {HUB_IDENTITY:?}"
            ))
        };
    }
    if client_id != name {
        return Err(format!(
            "asked for client id {client_id:?} with the certificate of {name:?}"
        ));
    }
    if !is_device_id(name) {
        return Err(format!("{name:?} is not a device id"));
    }
    Ok(BrokerClient::Device(name.to_owned()))
}

/// Device ids are `dev-` and hex (`fleet::device_id_for`): never a topic wildcard or level.
fn is_device_id(name: &str) -> bool {
    name.strip_prefix("dev-")
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Whether `device` may publish on `topic`.
pub fn device_may_publish(device: &str, topic: &str) -> bool {
    let own = format!("{}/{device}/", topics::PREFIX);
    topic
        .strip_prefix(&own)
        .is_some_and(|rest| DEVICE_PUBLISHES.contains(&rest))
}

/// Whether `device` may subscribe to `filter`: only its own desired state, exactly (no
/// wildcard, no shared group).
pub fn device_may_subscribe(device: &str, filter: &str) -> bool {
    filter == topics::desired(device)
}

/// Mosquitto's ACL file for the same rules: `%u` is the certificate's common name
/// (`use_identity_as_username`), and with `use_username_as_clientid` the client id too.
pub fn mosquitto_acl() -> String {
    let prefix = topics::PREFIX;
    let mut acl = format!(
        "# Written by flotilla-hub broker-config mosquitto.\n# The hub's own client: everything under {prefix}.\nuser {HUB_IDENTITY}\ntopic readwrite flotilla/v1/#\n\n# Every device (certificate common name = device id): its own topics only.\n"
    );
    for topic in DEVICE_PUBLISHES {
        acl.push_str(&format!("pattern write {prefix}/%u/{topic}\n"));
    }
    acl.push_str(&format!("pattern read {prefix}/%u/desired\n"));
    acl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_its_client() {
        assert_eq!(
            identify(Some("dev-ab12"), "dev-ab12", true),
            Ok(BrokerClient::Device("dev-ab12".into()))
        );
        assert_eq!(
            identify(Some(HUB_IDENTITY), "flotilla-hub-77", true),
            Ok(BrokerClient::Hub)
        );
        for (name, client) in [
            (Some("dev-ab12"), "dev-cd34"),
            (Some("dev-ab12"), "flotilla-hub-1"),
            (Some(HUB_IDENTITY), "dev-ab12"),
            (None, "dev-ab12"),
            (Some("dev-#"), "dev-#"),
            (Some("operator"), "operator"),
        ] {
            assert!(
                identify(name, client, true).is_err(),
                "{name:?} as {client}"
            );
        }
        // Without TLS the client id is all there is.
        assert_eq!(
            identify(None, "dev-ab12", false),
            Ok(BrokerClient::Device("dev-ab12".into()))
        );
        assert_eq!(
            identify(None, "flotilla-hub-77", false),
            Ok(BrokerClient::Hub)
        );
        assert!(identify(None, "someone", false).is_err());
    }

    #[test]
    fn a_device_touches_only_its_own_topics() {
        for topic in ["reported", "status", "telemetry"] {
            assert!(device_may_publish(
                "dev-a1",
                &format!("flotilla/v1/devices/dev-a1/{topic}")
            ));
            assert!(!device_may_publish(
                "dev-a1",
                &format!("flotilla/v1/devices/dev-b2/{topic}")
            ));
        }
        for topic in [
            "flotilla/v1/devices/dev-a1/desired",
            "flotilla/v1/devices/dev-a1/status/x",
            "flotilla/v1/devices/dev-a1",
            "other/topic",
        ] {
            assert!(!device_may_publish("dev-a1", topic), "{topic}");
        }
        assert!(device_may_subscribe(
            "dev-a1",
            "flotilla/v1/devices/dev-a1/desired"
        ));
        for filter in [
            "flotilla/v1/devices/dev-b2/desired",
            "flotilla/v1/devices/+/desired",
            "flotilla/v1/#",
            "#",
            "$share/g/flotilla/v1/devices/dev-a1/desired",
            "flotilla/v1/devices/dev-a1/reported",
        ] {
            assert!(!device_may_subscribe("dev-a1", filter), "{filter}");
        }
    }

    #[test]
    fn the_mosquitto_acl_says_the_same() {
        let acl = mosquitto_acl();
        assert!(acl.contains("user flotilla-hub\ntopic readwrite flotilla/v1/#\n"));
        assert!(acl.contains("pattern write flotilla/v1/devices/%u/telemetry\n"));
        assert!(acl.contains("pattern read flotilla/v1/devices/%u/desired\n"));
        assert!(!acl.contains("pattern readwrite"));
    }
}
