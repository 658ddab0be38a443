//! aktualizr-rs: the Uptane update client daemon and its command-line interface.
//!
//! This crate holds everything with I/O: HTTP, files, the command line. Verification lives in
//! `aktualizr-rs-metadata`, the image store in `aktualizr-rs-store`.

pub mod config;
pub mod consent;
pub mod dbus;
pub mod primary;
pub mod provision;
pub mod service;
pub mod status;
pub mod tuf_client;
