//! Config hot reload: the file is re-read every `reloadInterval` (and on SIGHUP), and when
//! its content changed it is parsed in full and swapped in atomically. A file that fails to
//! parse is logged with file, line and field, counted, and ignored: the running config keeps
//! serving.
//!
//! Polling the content, rather than watching inode events, follows a Kubernetes ConfigMap
//! update (a `..data` symlink swap) and an editor's rename-into-place alike.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config;
use crate::routing::state::State;

/// Watches `path` until the task is aborted; `running` is the text the running config was
/// parsed from.
pub(crate) async fn watch(path: PathBuf, running: Vec<u8>, state: Arc<State>) {
    let mut last = Some(running);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let interval = state
            .spec
            .load()
            .reload_interval
            .0
            .max(std::time::Duration::from_millis(10));
        #[cfg(unix)]
        {
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = hup => tracing::info!("SIGHUP: checking the config file"),
            }
        }
        #[cfg(not(unix))]
        tokio::time::sleep(interval).await;

        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the config file; keeping the running config");
                continue;
            }
        };
        if last.as_deref() == Some(&bytes[..]) {
            continue;
        }
        last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        let applied = config::parse(&text, Some(&path)).map(|cfg| {
            cfg.log_warnings();
            state.apply(cfg)
        });
        match applied {
            Ok(Ok(())) => {
                state.metrics.config_reload(true);
                tracing::info!(file = %path.display(), "config reloaded");
            }
            Ok(Err(e)) => {
                state.metrics.config_reload(false);
                tracing::error!(file = %path.display(), "config rejected, the running config keeps serving: {e}");
            }
            Err(errors) => {
                state.metrics.config_reload(false);
                for e in &errors.0 {
                    tracing::error!("config rejected, the running config keeps serving: {e}");
                }
            }
        }
    }
}
