//! A throwaway PKI for the mutual TLS tests: a CA, a server certificate for
//! 127.0.0.1, a client certificate from the CA, and a rogue client from
//! another CA.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

pub struct TestPki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
    pub rogue_cert: String,
    pub rogue_key: String,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(names: &[&str], issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

pub fn write_test_pki(dir: &Path) -> TestPki {
    write_test_pki_for(dir, &["127.0.0.1", "localhost"])
}

/// The same, with a server certificate for these names and addresses.
pub fn write_test_pki_for(dir: &Path, server_names: &[&str]) -> TestPki {
    let (ca_pem, issuer) = ca("podshaper test CA");
    let (rogue_ca_pem, rogue_issuer) = ca("rogue CA");
    let _ = rogue_ca_pem;
    let (server_cert, server_key) = leaf(server_names, &issuer);
    let (client_cert, client_key) = leaf(&["podshaper-client"], &issuer);
    let (rogue_cert, rogue_key) = leaf(&["podshaper-client"], &rogue_issuer);
    let write = |name: &str, content: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write pem");
        p.display().to_string()
    };
    TestPki {
        ca: write("ca.pem", &ca_pem),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
        rogue_cert: write("rogue.pem", &rogue_cert),
        rogue_key: write("rogue-key.pem", &rogue_key),
    }
}
