//! The control plane's certificates and the admin kubeconfig, made fresh for
//! each control plane.

use super::node::NODE_IP;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// PEM files of the control plane's PKI.
pub struct Pki {
    pub ca_cert: PathBuf,
    pub admin_cert_file: PathBuf,
    pub admin_key_file: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub admin_cert: String,
    pub admin_key: String,
    pub ca_pem: String,
}

/// A CA, the apiserver's serving certificate, an admin client certificate
/// and the ServiceAccount signing key, written as PEM files under `dir`.
// One function: each certificate is signed by the CA made at its top.
pub fn write_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dbbackup-testenv-ca");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let serving_key = KeyPair::generate().unwrap();
    // Host-side names, the node's address, and the kubernetes Service's
    // names and ClusterIP, which in-cluster clients use.
    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        NODE_IP.to_string(),
        "10.0.0.1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])
    .unwrap();
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer).unwrap();

    // Admin client: the apiserver maps O to groups, and system:masters bypasses RBAC.
    let admin_key = KeyPair::generate().unwrap();
    let mut admin = CertificateParams::new(Vec::<String>::new()).unwrap();
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer).unwrap();

    let sa_key = KeyPair::generate().unwrap();

    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca_cert: write("ca.crt", &ca_cert.pem()),
        // The apiserver's client certificate towards the kubelet.
        admin_cert_file: write("admin.crt", &admin_cert.pem()),
        admin_key_file: write("admin.key", &admin_key.serialize_pem()),
        serving_cert: write("apiserver.crt", &serving_cert.pem()),
        serving_key: write("apiserver.key", &serving_key.serialize_pem()),
        sa_key: write("sa.key", &sa_key.serialize_pem()),
        sa_pub: write("sa.pub", &sa_key.public_key_pem()),
        admin_cert: admin_cert.pem(),
        admin_key: admin_key.serialize_pem(),
        ca_pem: ca_cert.pem(),
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn kubeconfig_yaml(url: &str, pki: &Pki) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: testenv
  context:
    cluster: testenv
    user: admin
    namespace: default
current-context: testenv
"#,
        ca = b64(&pki.ca_pem),
        cert = b64(&pki.admin_cert),
        key = b64(&pki.admin_key),
    )
}
