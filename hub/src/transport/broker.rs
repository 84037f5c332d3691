//! The embedded MQTT broker (rmqtt), for fleets up to ~10,000 devices on one machine.
//! Beyond that, run an external broker (Mosquitto, EMQX) and set `[broker] url` in hub.toml.
//!
//! With `[tls] enabled` it speaks MQTT over TLS only and requires a client certificate from
//! the hub's CA: the certificate's common name is who the client is (`broker_policy`), and
//! its hooks let each device touch only its own topics, refuse revoked and unknown devices,
//! and drop a device's connection when it is revoked. rmqtt was chosen over rumqttd (the
//! broker before) because rumqttd has no per-topic authorization and no hook for one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::types::{AuthResult, ClientId, Id, LastWill, PublishAclResult, SubscribeAclResult};

use super::broker_policy::{BrokerClient, device_may_publish, device_may_subscribe, identify};
use crate::store::RegistryStore;

/// Largest MQTT payload the hub and its devices send: a desired state carrying several
/// signed manifests fits with room to spare.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Connections the embedded broker takes at once.
pub const MAX_CONNECTIONS: usize = 20_000;

/// The files the broker's TLS listener reads (rmqtt takes paths, not certificates).
#[derive(Debug, Clone)]
pub struct BrokerTls {
    /// The hub's server certificate chain, PEM.
    pub certificate: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// The CA client certificates must chain to: the hub's.
    pub client_ca: PathBuf,
}

/// A running embedded broker. It lives as long as the process.
#[derive(Clone)]
pub struct EmbeddedBroker {
    scx: ServerContext,
    address: SocketAddr,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBroker {
    /// Binds `listen` (port 0 picks a free port) and serves MQTT 3.1.1 and 5 there: over
    /// TLS with client certificates when `tls` is given, in plain text otherwise.
    /// `store` says which devices are enrolled and which are revoked.
    pub async fn start(
        listen: SocketAddr,
        tls: Option<BrokerTls>,
        store: Arc<dyn RegistryStore>,
    ) -> Result<EmbeddedBroker, String> {
        let scx = ServerContext::new()
            // rmqtt refuses connections while the machine's load is high, by default: a hub
            // on a small box must not turn devices away because inference is busy.
            .busy_check_enable(false)
            // Retained desired states must outlive any device's time offline (rmqtt's default
            // ties them to a five-minute message expiry).
            .plugins_config_map_add("rmqtt-retainer", "retained_message_ttl = \"0s\"\n")
            // Each device's messages to one hub replica, in order (an offline last will must
            // not overtake the online status that followed it).
            .plugins_config_map_add(
                "rmqtt-shared-subscription",
                "strategy = \"hash_clientid\"\n",
            )
            .build()
            .await;
        rmqtt_retainer::register(&scx, true, false)
            .await
            .map_err(|e| format!("broker retained messages: {e}"))?;
        rmqtt_shared_subscription::register(&scx, true, false)
            .await
            .map_err(|e| format!("broker shared subscriptions: {e}"))?;
        let policy = Policy {
            store,
            tls: tls.is_some(),
        };
        let register = scx.extends.hook_mgr().register();
        for hook in [
            Type::ClientAuthenticate,
            Type::MessagePublishCheckAcl,
            Type::ClientSubscribeCheckAcl,
        ] {
            register.add(hook, Box::new(policy.clone())).await;
        }
        register.start().await;

        let builder = Builder::new()
            .name(if tls.is_some() { "mqtts" } else { "mqtt" })
            .laddr(listen)
            .reuseaddr(Some(true))
            .allow_anonymous(false)
            .max_connections(MAX_CONNECTIONS)
            .max_handshaking_limit(MAX_CONNECTIONS)
            .max_packet_size((MAX_PAYLOAD_BYTES + 4096) as u32)
            // The hub's session queues every device's telemetry: a minute's aligned windows
            // from a large fleet must fit, or the broker drops what it acknowledged.
            .max_mqueue_len(1_000_000)
            .handshake_timeout(Duration::from_secs(30));
        let bound = match &tls {
            Some(files) => builder
                .tls_cert(Some(files.certificate.to_string_lossy()))
                .tls_key(Some(files.key.to_string_lossy()))
                .tls_client_ca_certs(Some(files.client_ca.to_string_lossy()))
                // Require a client certificate and verify it against the CA.
                .tls_cross_certificate(true)
                .collect_cert_info(true)
                .bind()
                .and_then(|listener| listener.tls()),
            None => builder.bind().and_then(|listener| listener.tcp()),
        }
        .map_err(|e| format!("cannot listen for MQTT on {listen}: {e}"))?;
        let address = bound
            .local_addr()
            .map_err(|e| format!("the broker's address: {e}"))?;
        let server = MqttServer::new(scx.clone())
            .listener_by_id(bound, address.port())
            .build();
        // `run` only ends if a listener cannot start, which `bind` above already checked.
        tokio::spawn(async move {
            if let Err(error) = server.run().await {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        });
        Ok(EmbeddedBroker { scx, address })
    }

    /// Where the broker listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops a client's connection now (a revoked device); whether it was connected. It
    /// cannot come back: the connect hook refuses revoked devices.
    pub async fn disconnect(&self, client_id: &str) -> bool {
        let mut entry = self
            .scx
            .extends
            .shared()
            .await
            .entry(Id::from(self.scx.node.id(), ClientId::from(client_id)));
        if entry.session().is_none() {
            return false;
        }
        match entry.kick(true, true, true).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, client_id, "cannot drop the broker connection");
                false
            }
        }
    }
}

/// The broker hooks: authentication by certificate, then per-topic authorization.
#[derive(Clone)]
struct Policy {
    store: Arc<dyn RegistryStore>,
    tls: bool,
}

fn will_topic(will: LastWill<'_>) -> String {
    match will {
        LastWill::V3(will) => will.topic.to_string(),
        LastWill::V5(will) => will.topic.to_string(),
    }
}

impl Policy {
    /// Whether the client may connect, and whether it is the hub.
    async fn admit(&self, info: &rmqtt::types::ConnectInfo) -> Result<bool, String> {
        let certificate = info.cert().and_then(|c| c.common_name.clone());
        let client = identify(certificate.as_deref(), info.client_id(), self.tls)?;
        let BrokerClient::Device(device) = client else {
            return Ok(true);
        };
        // The will is published by the broker itself, past the publish hook: check it here.
        if let Some(topic) = info.last_will().map(will_topic)
            && !device_may_publish(&device, &topic)
        {
            return Err(format!("its last will goes to {topic:?}"));
        }
        let store = self.store.clone();
        let id = device.clone();
        let enrolled = tokio::task::spawn_blocking(move || store.device(&id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read the inventory: {e}"))?;
        match enrolled {
            None if self.tls => Err("is not enrolled (removed?)".into()),
            Some(device) if device.revoked_at.is_some() => Err("is revoked".into()),
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl Handler for Policy {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) => {
                let result = match self.admit(info).await {
                    // (superuser, auth info): the hub skips the per-topic checks.
                    Ok(hub) => AuthResult::Allow(hub, None),
                    Err(reason) => {
                        tracing::warn!(
                            client_id = %info.client_id(),
                            remote = %info.id().remote_addr.map(|a| a.to_string()).unwrap_or_default(),
                            %reason,
                            "MQTT connection refused"
                        );
                        AuthResult::NotAuthorized
                    }
                };
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::MessagePublishCheckAcl(session, publish) => {
                let device = &session.id.client_id;
                if device_may_publish(device, &publish.topic) {
                    return (
                        false,
                        Some(HookResult::PublishAclResult(PublishAclResult::allow())),
                    );
                }
                tracing::warn!(%device, topic = %publish.topic, "MQTT publish refused: not the device's own topic; connection closed");
                // MQTT 3.1.1 cannot refuse one publish: the connection is closed (§4.7).
                (
                    false,
                    Some(HookResult::PublishAclResult(PublishAclResult::rejected(
                        true, None,
                    ))),
                )
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                let device = &session.id.client_id;
                let result = if subscribe.opts.shared_group().is_none()
                    && device_may_subscribe(device, &subscribe.topic_filter)
                {
                    SubscribeAclResult::new_success(subscribe.opts.qos(), None)
                } else {
                    tracing::warn!(%device, filter = %subscribe.topic_filter, "MQTT subscription refused: not the device's own desired state");
                    SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
                };
                (false, Some(HookResult::SubscribeAclResult(result)))
            }
            _ => (true, acc),
        }
    }
}
