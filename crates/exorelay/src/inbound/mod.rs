//! The receiving side: the listener accepting LAN connections and the per-connection driver of
//! the SMTP session, with the trace header and envelope it writes into the spool.

pub mod convert;
pub mod headers;
pub mod listener;
pub mod received;
pub mod session;
