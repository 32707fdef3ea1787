//! go-plugin's side of the provider, without Terraform: the magic cookie,
//! the handshake line, and the pinned client certificate (the connection is
//! accepted from the certificate Terraform announced, and refused from any
//! other).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_client::HealthClient;

const BIN: &str = env!("CARGO_BIN_EXE_terraform-provider-keybridge");
const COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

struct Plugin {
    child: Child,
    socket: String,
    server_cert_der: Vec<u8>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_cert() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn start(client_cert_pem: &str) -> Plugin {
    let mut child = Command::new(BIN)
        .env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "5,6")
        .env("PLUGIN_CLIENT_CERT", client_cert_pem)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let parts: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(&parts[..3], ["1", "6", "unix"], "{line}");
    assert_eq!(parts[4], "grpc");
    let server_cert_der = base64::engine::general_purpose::STANDARD_NO_PAD.decode(parts[5]).expect("raw base64 DER");
    Plugin { child, socket: parts[3].to_string(), server_cert_der }
}

async fn connect(p: &Plugin, cert: &str, key: &str) -> Result<Channel, tonic::transport::Error> {
    let server_pem = pem_of(&p.server_cert_der);
    let tls = ClientTlsConfig::new()
        .domain_name("localhost")
        .ca_certificate(Certificate::from_pem(server_pem))
        .identity(Identity::from_pem(cert, key));
    let socket = p.socket.clone();
    Endpoint::from_static("https://localhost")
        .tls_config(tls)?
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?))
            }
        }))
        .await
}

fn pem_of(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

async fn health(ch: Channel) -> Result<i32, tonic::Status> {
    let r = HealthClient::new(ch).check(tonic_health::pb::HealthCheckRequest { service: "plugin".into() }).await?;
    Ok(r.into_inner().status)
}

#[tokio::test]
async fn the_announced_client_certificate_is_accepted() {
    let (cert, key) = client_cert();
    let p = start(&cert);
    let ch = connect(&p, &cert, &key).await.expect("connect");
    assert_eq!(
        health(ch).await.expect("health"),
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn any_other_client_certificate_is_refused() {
    let (cert, _) = client_cert();
    let (other_cert, other_key) = client_cert();
    let p = start(&cert);
    let refused = match connect(&p, &other_cert, &other_key).await {
        Err(_) => true,
        Ok(ch) => health(ch).await.is_err(),
    };
    assert!(refused, "a client with another certificate got in");
}

#[test]
fn started_outside_terraform_it_explains_and_exits() {
    let o = Command::new(BIN).env_remove("TF_PLUGIN_MAGIC_COOKIE").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Terraform runs it"));
    assert!(o.stdout.is_empty());
}

#[test]
fn a_terraform_without_protocol_6_is_told_so() {
    let o = Command::new(BIN)
        .env("TF_PLUGIN_MAGIC_COOKIE", COOKIE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "4,5")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("speaks version 6"));
}
