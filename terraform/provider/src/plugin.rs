//! The process side of go-plugin: check that Terraform started us, listen
//! on a private Unix socket, print the handshake line, serve until told to
//! stop.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use tokio::net::UnixListener;
use tonic::transport::Server;

use crate::error::Error;
use crate::goplugin;
use crate::provider::Provider;
use crate::tfplugin6::provider_server::ProviderServer;

/// The cookie Terraform sets for its plugins (go-plugin's handshake config).
const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
const MAGIC_COOKIE_VALUE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
const CORE_PROTOCOL: u32 = 1;
const APP_PROTOCOL: u32 = 6;

pub fn main() -> ExitCode {
    if std::env::var(MAGIC_COOKIE_KEY).ok().as_deref() != Some(MAGIC_COOKIE_VALUE) {
        eprintln!(
            "This binary is a plugin: Terraform runs it. Install it as the provider keybridge/keybridge \
             (see terraform/README.md) and use it from a Terraform configuration."
        );
        return ExitCode::from(1);
    }
    if let Ok(v) = std::env::var("PLUGIN_PROTOCOL_VERSIONS")
        && !v.split(',').any(|p| p.trim() == APP_PROTOCOL.to_string())
    {
        eprintln!("Terraform offers plugin protocol versions {v}; this provider speaks version {APP_PROTOCOL}.");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("terraform-provider-keybridge: {e}");
            ExitCode::from(1)
        }
    }
}

struct Controller(Arc<tokio::sync::Notify>);

#[tonic::async_trait]
impl goplugin::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(
        &self,
        _: tonic::Request<goplugin::Empty>,
    ) -> Result<tonic::Response<goplugin::Empty>, tonic::Status> {
        self.0.notify_one();
        Ok(tonic::Response::new(goplugin::Empty {}))
    }
}

async fn serve() -> Result<(), Error> {
    // A directory only this user can enter (tempfile makes it 0700).
    let dir = tempfile::Builder::new().prefix("tf-keybridge-").tempdir()?;
    let socket = dir.path().join("plugin.sock");
    let listener = UnixListener::bind(&socket)?;
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("plugin", tonic_health::ServingStatus::Serving).await;
    let router = Server::builder()
        .add_service(health)
        .add_service(goplugin::grpc_controller_server::GrpcControllerServer::new(Controller(shutdown.clone())))
        .add_service(ProviderServer::new(Provider::new()).max_decoding_message_size(256 << 20));
    let stop = {
        let s = shutdown.clone();
        async move { s.notified().await }
    };
    let client_cert = std::env::var("PLUGIN_CLIENT_CERT").ok().filter(|c| !c.trim().is_empty());
    match client_cert {
        Some(pem) => {
            let identity = crate::tls::server(&pem)?;
            let cert = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&identity.cert_der);
            handshake(&socket, Some(&cert))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(identity.config);
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            tokio::spawn(async move {
                loop {
                    let Ok((conn, _)) = listener.accept().await else { break };
                    let acceptor = acceptor.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        // A peer that fails the handshake is dropped.
                        if let Ok(tls) = acceptor.accept(conn).await {
                            let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                        }
                    });
                }
            });
            router.serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), stop).await?;
        }
        None => {
            // TF_DISABLE_PLUGIN_TLS: Terraform asked for plaintext; the
            // socket's directory still keeps other users out.
            handshake(&socket, None)?;
            router
                .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), stop)
                .await?;
        }
    }
    drop(dir);
    Ok(())
}

fn handshake(socket: &std::path::Path, cert: Option<&str>) -> Result<(), Error> {
    let path = socket.to_str().ok_or_else(|| Error::Handshake("the socket path is not UTF-8".into()))?;
    let mut line = format!("{CORE_PROTOCOL}|{APP_PROTOCOL}|unix|{path}|grpc");
    if let Some(c) = cert {
        line.push('|');
        line.push_str(c);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
