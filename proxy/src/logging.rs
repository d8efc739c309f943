//! Logging set-up, with a filter that `PUT /log-level` can change while Skiff runs.
//!
//! The binary installs the subscriber ([`init`]); the library's admin server finds the
//! filter handle here. Tests, which install no subscriber, get no `/log-level`.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

type Handle = reload::Handle<EnvFilter, Registry>;

static HANDLE: OnceLock<Handle> = OnceLock::new();

/// Logs to stderr with the filter from `SKIFF_LOG` (default `info`).
pub fn init() {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = HANDLE.set(handle);
    }
}

/// Replaces the log filter (`info`, `debug`, `skiff=debug,info`...); returns it.
pub fn set_filter(directives: &str) -> Result<String, String> {
    let handle = HANDLE
        .get()
        .ok_or("logging is not set up by this process")?;
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("invalid filter: {e}"))?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    tracing::info!(filter = directives, "log filter changed");
    Ok(directives.to_owned())
}

/// Whether [`init`] installed the logging (so `/log-level` can work).
pub fn installed() -> bool {
    HANDLE.get().is_some()
}
