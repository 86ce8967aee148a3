//! Helpers shared by the process-level tests (each test file that needs them declares
//! `mod support;`).

#![allow(dead_code)] // not every test file uses every helper

pub mod notices;
pub mod receiver;
