//! The per-request context: what the router decided, for every layer below it.
//!
//! [`crate::route::Route`] stores one [`RouteContext`] in a request's extensions: the route's
//! name, its weighted backends, its retry policy, deadlines and limits. Each layer below
//! reads the part it applies and nothing else:
//!
//! | layer | reads |
//! |---|---|
//! | [`crate::limit`] | `limits` |
//! | [`crate::timeout`] (request and per try) | `timeouts` |
//! | [`crate::retry`] | `retry` |
//! | [`crate::filter`] (the rule's) | `filters` |
//! | [`crate::fault`] | `fault` |
//! | [`crate::split`] | `backends` (one draw per try) |
//!
//! A layer that finds no context answers 500 `internal` rather than passing the request on
//! without its policy: a chain assembled in the wrong order then fails loudly in the first
//! test, instead of silently turning retries or limits off.
//!
//! Contexts are built once per route and config generation and shared (`Arc`), so routing a
//! request costs one reference count, not a copy of its policies.

use std::sync::Arc;

use crate::error::{ProxyError, Reason};
use crate::fault;
use crate::filter::Filters;
use crate::limit;
use crate::retry;
use crate::split::Draw;
use crate::timeout::Timeouts;

/// What the router decided for a request, read by the layers below it.
#[derive(Debug)]
pub struct RouteContext {
    /// The route's name; `None` when the request went to a service that has no routes.
    pub name: Option<Arc<str>>,
    /// The weighted backends a try is sent to (one, unweighted, for a plain service).
    pub backends: Arc<dyn Draw>,
    /// The retry policy, with its live budget; `None`: one try.
    pub retry: Option<Arc<retry::Policy>>,
    /// The whole-request and per-try deadlines.
    pub timeouts: Timeouts,
    /// Rate and concurrency limits; `None`: unlimited.
    pub limits: Option<Arc<limit::Policy>>,
    /// The rule's filters (header changes, redirect, rewrite); `None`: none.
    pub filters: Option<Arc<Filters>>,
    /// Faults injected on purpose; `None`: none.
    pub fault: Option<Arc<fault::Policy>>,
}

impl RouteContext {
    /// A context sending to `backends` with no policies (no retries, deadlines or limits).
    pub fn new(backends: Arc<dyn Draw>) -> Self {
        Self {
            name: None,
            backends,
            retry: None,
            timeouts: Timeouts::default(),
            limits: None,
            filters: None,
            fault: None,
        }
    }

    /// The context of the request whose extensions these are, or the `internal` error a
    /// layer answers when the router did not run above it.
    pub fn of<'a>(extensions: &'a http::Extensions, layer: &str) -> Result<&'a Self, ProxyError> {
        extensions.get::<Arc<Self>>().map(|c| &**c).ok_or_else(|| {
            ProxyError::new(
                Reason::Internal,
                format!("the {layer} layer found no route context (is it below the router?)"),
            )
        })
    }
}

/// A context for unit tests: one backend (`()`), changed by `f`.
#[cfg(test)]
pub(crate) fn for_tests(f: impl FnOnce(&mut RouteContext)) -> Arc<RouteContext> {
    let mut ctx = RouteContext::new(Arc::new(crate::split::Backends::single("test", ())));
    f(&mut ctx);
    Arc::new(ctx)
}
