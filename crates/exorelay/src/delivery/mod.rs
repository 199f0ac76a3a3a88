//! Delivery to the smart hosts: routing and resolution, the SMTP client connection with
//! STARTTLS and client certificates, and what Exchange Online's replies mean.

pub mod client;
pub mod exo;
pub mod pool;
pub mod route;
