//! Black-box tests of the HTTP API against a real server on loopback, backed by a real
//! SQLite file in a temp dir.

mod auth;
mod bad_input;
mod common;
mod events;
mod exclusivity;
mod jobs;
mod openapi;
mod queues;
mod receiver;
mod retention;
mod webhooks;
mod worker;
