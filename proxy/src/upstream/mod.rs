//! The upstream side of a request: [`pick`] chooses an endpoint of the target the router
//! (and the split) settled on, [`forward`] sends the request over one of [`pool`]'s
//! connections to it; [`mirror`] sends a route's mirrored copies the same way.

pub(crate) mod forward;
pub(crate) mod mirror;
pub(crate) mod pick;
pub(crate) mod pool;
