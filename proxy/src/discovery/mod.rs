//! Where a service's endpoints come from: a fixed list in the config file, or a DNS name
//! re-resolved as its TTL runs out ([`dns`]). [`endpoints`] keeps each service's live set,
//! with every endpoint's pool and breaker state carried across changes of the answer.

pub(crate) mod dns;
pub(crate) mod endpoints;
