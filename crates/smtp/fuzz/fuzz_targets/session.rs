//! Fuzzes a whole server session fed arbitrary bytes, in reads whose size is
//! taken from the first input byte; checks the driver-visible invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp::{
    ForwardPath, MailParams, Output, Policy, RcptParams, Reply, ReversePath, ServerConfig, Session,
};

/// Accepts senders with a domain and recipients in `ok.example`.
struct FuzzPolicy;

impl Policy for FuzzPolicy {
    fn check_sender(&mut self, _: &ReversePath, _: &MailParams) -> Result<(), Reply> {
        Ok(())
    }
    fn check_recipient(
        &mut self,
        _: &ReversePath,
        to: &ForwardPath,
        _: &RcptParams,
    ) -> Result<(), Reply> {
        if to.mailbox().domain().matches("ok.example") {
            Ok(())
        } else {
            Err(Reply::relay_denied())
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut config = ServerConfig::new("relay.fuzz");
    config.starttls_offered = first & 0x80 != 0;
    config.max_message_size = 256;
    config.max_recipients = 3;
    let mut session = Session::new(config);
    let mut policy = FuzzPolicy;
    let mut chunks = rest.chunks(usize::from(first & 0x3f) + 1);
    let mut input = Vec::new();
    let mut open = false;
    loop {
        match session.step(&mut input, &mut policy) {
            Output::NeedInput => match chunks.next() {
                Some(chunk) => input.extend_from_slice(chunk),
                None => return,
            },
            Output::Send(reply) => {
                let wire = reply.to_bytes();
                assert!(wire.ends_with(b"\r\n"));
            }
            Output::StartTls => {
                assert!(input.is_empty());
                session.tls_established();
            }
            Output::MessageBegin(_) => {
                assert!(!open);
                open = true;
            }
            Output::MessageContent(_) => assert!(open),
            Output::MessageEnd => {
                assert!(std::mem::take(&mut open));
                let result = if first & 0x40 != 0 {
                    Ok(Reply::queued("F"))
                } else {
                    Err(Reply::storage_failed())
                };
                session.message_stored(result);
            }
            Output::MessageAbort => assert!(std::mem::take(&mut open)),
            Output::Close => {
                assert!(!open);
                return;
            }
        }
    }
});
