//! The `unitlet` command: the agent (`run`, `node`) and the tools beside it
//! (`pods`, `logs`, `render`, `sandbox`); see `unitlet::cli`.
use clap::Parser;
use unitlet::cli::{Cli, LogFormat};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    // One TLS provider for the whole process (ring, as kube's): reqwest,
    // built without one, refuses to make a client otherwise.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_env("UNITLET_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.effective_log_format() {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    if let Err(e) = unitlet::cli::main(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
