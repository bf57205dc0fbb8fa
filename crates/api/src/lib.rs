//! The daemon's gRPC API (generated from `proto/podshaper/v1/shaper.proto`)
//! and how clients reach a daemon: `unix:///path/to.sock` or
//! `https://host:port` with a client certificate (mutual TLS).

use std::path::PathBuf;
use std::str::FromStr;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("podshaper.v1");
}

mod document;

pub use document::{CgroupDocument, CountersDocument};

pub use pb::shaper_client::ShaperClient;

/// The default daemon socket.
pub const DEFAULT_SOCKET: &str = "/run/podshaper/podshaper.sock";
/// The environment variable that overrides the default daemon address.
pub const DAEMON_ENV: &str = "PODSHAPER_DAEMON";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid daemon address {0:?}: expected unix:///path/to.sock or https://host:port")]
    BadAddress(String),
    #[error(
        "https://{0} needs a client certificate, key and CA (--tls-cert, --tls-key, --tls-ca)"
    )]
    NoClientCertificate(String),
    #[error("cannot read {path}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot reach the podshaper daemon at {address} (is it running? is the address right?)"
    )]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonAddress {
    Unix(PathBuf),
    /// `host:port`
    Https(String),
}

impl DaemonAddress {
    /// `PODSHAPER_DAEMON` if set, else the default socket.
    pub fn from_env_or_default() -> Result<Self, ConnectError> {
        match std::env::var(DAEMON_ENV) {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(Self::Unix(PathBuf::from(DEFAULT_SOCKET))),
        }
    }
}

impl FromStr for DaemonAddress {
    type Err = ConnectError;

    fn from_str(s: &str) -> Result<Self, ConnectError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Self::Unix(PathBuf::from(path)));
            }
        } else if let Some(hostport) = s.strip_prefix("https://") {
            let hostport = hostport.trim_end_matches('/');
            if !hostport.is_empty() && !hostport.contains('/') {
                return Ok(Self::Https(hostport.to_string()));
            }
        }
        Err(ConnectError::BadAddress(s.to_string()))
    }
}

impl std::fmt::Display for DaemonAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
            Self::Https(h) => write!(f, "https://{h}"),
        }
    }
}

/// PEM files of a client's identity and the CA that signed the daemon's certificate.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

/// Connects to a daemon.
pub async fn connect(
    address: &DaemonAddress,
    tls: Option<&ClientTlsFiles>,
) -> Result<ShaperClient<Channel>, ConnectError> {
    let connect_error = |source| ConnectError::Connect {
        address: address.to_string(),
        source,
    };
    let channel = match address {
        DaemonAddress::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://podshaper.local")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(connect_error)?
        }
        DaemonAddress::Https(hostport) => {
            let files = tls.ok_or_else(|| ConnectError::NoClientCertificate(hostport.clone()))?;
            let identity = Identity::from_pem(read(&files.cert)?, read(&files.key)?);
            let ca = Certificate::from_pem(read(&files.ca)?);
            let host = hostport
                .rsplit_once(':')
                .map_or(hostport.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let config = ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(identity)
                .domain_name(host.to_string());
            Endpoint::from_shared(format!("https://{hostport}"))
                .map_err(connect_error)?
                .tls_config(config)
                .map_err(connect_error)?
                .connect()
                .await
                .map_err(connect_error)?
        }
    };
    Ok(ShaperClient::new(channel))
}

/// An error and its causes on one line (`a: b: c`), as the daemon answers
/// a request and as the controller logs a failed call.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            "unix:///run/podshaper/podshaper.sock"
                .parse::<DaemonAddress>()
                .ok(),
            Some(DaemonAddress::Unix(PathBuf::from(
                "/run/podshaper/podshaper.sock"
            )))
        );
        assert_eq!(
            "https://10.0.0.1:7443".parse::<DaemonAddress>().ok(),
            Some(DaemonAddress::Https("10.0.0.1:7443".into()))
        );
        for bad in [
            "",
            "unix://relative.sock",
            "http://x:1",
            "https://",
            "tcp://x:1",
            "/run/x.sock",
        ] {
            assert!(bad.parse::<DaemonAddress>().is_err(), "{bad}");
        }
    }
}
