//! Structured logs through tracing, with a filter that can be changed while the agent runs
//! (`proxy-agent log-level debug`, or PUT /loglevel on the admin endpoint): turning on debug logs on one
//! node to watch a problem must not mean restarting the agent that has the problem.

use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use tracing_subscriber::{EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();
static CURRENT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// The filter at start: `RUST_LOG` when set, else `default` (e.g. "info").
pub fn init(default: &str) {
    let directive = std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_owned());
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    let _ = HANDLE.set(handle);
    *CURRENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = directive;
}

/// Checks a filter directive (`debug`, `info,proxy_agent::datapath=trace`, ...) without applying it.
pub fn parse(directive: &str) -> Result<EnvFilter> {
    EnvFilter::try_new(directive.trim()).map_err(|e| anyhow!("log level {directive:?}: {e}"))
}

/// Replaces the running filter.
pub fn set(directive: &str) -> Result<()> {
    let filter = parse(directive)?;
    HANDLE
        .get()
        .context("logging was not initialised")?
        .reload(filter)
        .map_err(|e| anyhow!("reloading the log filter: {e}"))?;
    *CURRENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = directive.trim().to_owned();
    tracing::info!(filter = directive.trim(), "log level changed");
    Ok(())
}

pub fn current() -> String {
    CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_checked() {
        assert!(parse("debug").is_ok());
        assert!(parse("info,proxy_agent::datapath=trace").is_ok());
        let e = format!("{:#}", parse("proxy_agent=loud").unwrap_err());
        assert!(e.contains("proxy_agent=loud"), "{e}");
    }
}
