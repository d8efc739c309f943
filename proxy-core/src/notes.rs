//! Why a request went where it did, written down by the layers that decided it (route,
//! authorization, split, endpoint, breaker, tries) for the tap and the access log to report.
//!
//! The [`Notes`] exist only while something reads them: the outermost layer puts them in a
//! request's extensions when a tap client is connected or the access log is on, and every
//! other request pays one extension lookup that finds nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// What was decided about one request.
#[derive(Clone, Debug, Default)]
pub struct Noted {
    /// The route taken, when the service has routes.
    pub route: Option<Arc<str>>,
    /// The backend the split chose (for the last try).
    pub backend: Option<String>,
    /// The endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    /// The identity the endpoint of the last try had to prove, when meshed.
    pub peer_identity: Option<Arc<str>>,
    /// Tries made (1 without retries).
    pub tries: u32,
    /// The breaker's state when the last try was admitted (`Closed`, `HalfOpen`).
    pub breaker: Option<&'static str>,
    /// The authorization decision (`allow <route>`, `deny`, `audit-deny`).
    pub authz: Option<String>,
    /// A fault injected on purpose (`delay:2s`, `abort:503`).
    pub fault: Option<String>,
}

/// A request's notes, shared by every layer that handles it.
#[derive(Debug, Default)]
pub struct Notes(Mutex<Noted>);

impl Notes {
    /// Updates the notes.
    pub fn note(&self, f: impl FnOnce(&mut Noted)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A copy of the notes so far.
    pub fn get(&self) -> Noted {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Notes something about the request whose extensions these are, if anyone is listening.
pub fn note(extensions: &http::Extensions, f: impl FnOnce(&mut Noted)) {
    if let Some(notes) = extensions.get::<Arc<Notes>>() {
        notes.note(f);
    }
}
