//! HTTP resources, one module each. Handlers are thin: parse, authorize, call the store
//! or a service, shape the response.

pub mod events;
pub mod jobs;
pub mod ops;
pub mod queues;
pub mod tenants;
pub mod webhooks;
pub mod worker;
