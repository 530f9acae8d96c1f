//! `sluice-fake-apiserver [--listen 127.0.0.1:0] [--crds DIR]`: the stand-in API server
//! ([`sluice_fake_apiserver`]) over plain HTTP. With `--crds`, every CRD in the folder
//! (`*.yaml`, JSON or one YAML document each) is installed first. It logs
//! `fake apiserver listening addr=...` on stderr.

use std::net::SocketAddr;
use std::path::PathBuf;

use sluice_fake_apiserver::FakeApiServer;

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut crds: Option<PathBuf> = None;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => {
                listen = addr
                    .parse()
                    .map_err(|e| invalid(format!("--listen: {e}")))?;
            }
            ("--crds", Some(dir)) => crds = Some(dir.into()),
            _ => {
                eprintln!("usage: sluice-fake-apiserver [--listen ADDR] [--crds DIR]");
                std::process::exit(2);
            }
        }
    }
    let server = FakeApiServer::new();
    if let Some(dir) = crds {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "json"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path)?;
            let crd: serde_json::Value = serde_yaml::from_str(&text)
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            server
                .install_crd(&crd)
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("fake apiserver listening addr={}", listener.local_addr()?);
    server.serve(listener).await
}
