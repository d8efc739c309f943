//! Where services and their endpoints come from: a fixed list in the config file, a DNS name
//! re-resolved as its TTL runs out ([`dns`]), or the Kubernetes API ([`kubernetes`]: Services
//! and, while a service is in use, its EndpointSlices). [`endpoints`] keeps each service's live set,
//! with every endpoint's pool and breaker state carried across changes of the answer.

pub(crate) mod dns;
pub(crate) mod endpoints;
pub(crate) mod kubernetes;
