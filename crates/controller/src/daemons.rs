//! Reaching a node's daemon: the local one (node mode), or each node's at its
//! InternalIP over mutual TLS (cluster mode). Connections are kept and
//! re-made after a failure.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use podshaper_api::{connect, ClientTlsFiles, ConnectError, DaemonAddress, ShaperClient};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::Error;

/// Where the daemons are.
#[derive(Debug, Clone)]
pub enum DaemonTarget {
    /// Node mode: the daemon beside the controller.
    Local(DaemonAddress),
    /// Cluster mode: every node's daemon at its InternalIP and this port.
    PerNode { port: u16, tls: ClientTlsFiles },
}

pub struct Daemons {
    target: DaemonTarget,
    nodes: Option<Api<Node>>,
    clients: Mutex<HashMap<String, ShaperClient<Channel>>>,
    /// Cluster mode: each node's daemon address, once found.
    addresses: std::sync::Mutex<HashMap<String, DaemonAddress>>,
}

impl Daemons {
    pub fn new(target: DaemonTarget, client: kube::Client) -> Self {
        let nodes = match target {
            DaemonTarget::Local(_) => None,
            DaemonTarget::PerNode { .. } => Some(Api::all(client)),
        };
        Self {
            target,
            nodes,
            clients: Mutex::new(HashMap::new()),
            addresses: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The address of `node`'s daemon, or an empty string while it is
    /// not known (cluster mode, before the Node was read).
    pub fn address_of(&self, node: &str) -> String {
        match &self.target {
            DaemonTarget::Local(a) => a.to_string(),
            DaemonTarget::PerNode { .. } => self
                .addresses
                .lock()
                .ok()
                .and_then(|a| a.get(node).map(ToString::to_string))
                .unwrap_or_default(),
        }
    }

    /// A client for `node`'s daemon.
    pub async fn client(&self, node: &str) -> Result<ShaperClient<Channel>, Error> {
        if let Some(c) = self.clients.lock().await.get(node) {
            return Ok(c.clone());
        }
        let (address, tls) = match &self.target {
            DaemonTarget::Local(a) => (a.clone(), None),
            DaemonTarget::PerNode { port, tls } => {
                let address = self.node_address(node, *port).await?;
                if let Ok(mut a) = self.addresses.lock() {
                    a.insert(node.to_string(), address.clone());
                }
                (address, Some(tls))
            }
        };
        let client = connect(&address, tls)
            .await
            .map_err(|source| Error::Daemon {
                node: node.to_string(),
                source: Box::new(source),
            })?;
        self.clients
            .lock()
            .await
            .insert(node.to_string(), client.clone());
        Ok(client)
    }

    /// Drops a connection that failed, so the next call makes a new one.
    pub async fn forget(&self, node: &str) {
        self.clients.lock().await.remove(node);
    }

    async fn node_address(&self, node: &str, port: u16) -> Result<DaemonAddress, Error> {
        let api = self.nodes.as_ref().ok_or(Error::NoNodeApi)?;
        let n = api.get(node).await.map_err(|source| Error::Kube {
            what: format!("get node {node}"),
            source,
        })?;
        let ip = n
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .ok_or_else(|| Error::NoInternalIp(node.to_string()))?;
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        format!("https://{host}:{port}")
            .parse()
            .map_err(|e: ConnectError| Error::Daemon {
                node: node.to_string(),
                source: Box::new(e),
            })
    }
}
