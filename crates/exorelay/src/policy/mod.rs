//! Policy decisions made during the SMTP dialogue: who may relay, from which senders, to which
//! recipients. Pure functions of the configuration and the envelope.

pub mod preflight;
pub mod relay;
