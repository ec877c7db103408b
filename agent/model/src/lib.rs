//! What the agent and the coordinator share, and nothing else: the wire
//! types between them ([`protocol`]), the manifest format ([`manifest`]),
//! where a snapshot lives in cold storage ([`layout`]), the snapshot set
//! record ([`sets`]), the error type and its policy ([`error`]), and the
//! coordinator's admin API types ([`api`]).
//!
//! No I/O engines live here: a change to this crate is a change to a format
//! or a protocol, and both sides must agree on it.

pub mod api;
pub mod error;
pub mod layout;
pub mod manifest;
pub mod protocol;
pub mod sets;

pub use error::{Error, ErrorKind, Result};
