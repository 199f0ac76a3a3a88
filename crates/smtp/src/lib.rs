//! The SMTP wire protocol, server side, as pure code: bytes in, events and
//! replies out. No sockets, files, clocks or async; the daemon
//! (`crates/exorelay`) owns all I/O and drives a [`Session`].
//!
//! # Layout
//!
//! - [`reply`]: [`Reply`] and [`EnhancedCode`], the single wire encoder, and
//!   the catalogue of every reply text.
//! - [`address`]: RFC 5321 paths: [`ReversePath`], [`ForwardPath`],
//!   [`Mailbox`], [`Domain`].
//! - [`params`]: ESMTP parameters of MAIL and RCPT ([`MailParams`],
//!   [`RcptParams`]) and the xtext codec.
//! - [`command`]: [`parse_command`] from one line to a [`Command`].
//! - [`line`]: [`LineReader`], the CRLF-strict, bounded command line framer.
//! - [`data`]: [`DataDecoder`] (dot-terminated DATA) and [`BdatDecoder`]
//!   (counted BDAT chunks), with the content checks.
//! - [`stuff`]: [`dot_stuff`], the wire form for re-emission upstream.
//! - [`server`]: [`Session`], the server state machine that ties these
//!   together and asks a [`Policy`] about senders and recipients.
//!
//! Errors inside the parsers are `thiserror` enums ([`address::AddressError`],
//! [`params::ParamError`]); each converts into exactly one [`Reply`], which is
//! what the session sends.
#![forbid(unsafe_code)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod line;
pub mod params;
pub mod reply;
pub mod server;
pub mod stuff;

pub use address::{Domain, ForwardPath, Mailbox, ReversePath};
pub use command::{Command, parse_command};
pub use data::{BdatDecoder, DataDecoder, DataEvent, DataLimits, DataOutcome};
pub use line::{Line, LineReader};
pub use params::{Body, MailParams, Notify, RcptParams, Ret};
pub use reply::{EnhancedCode, Reply};
pub use server::{Output, Policy, ServerConfig, Session, Transaction};
pub use stuff::{DotStuffer, dot_stuff};
