//! The status frame is read by platforms from relays and by gateways from platforms. Decoding
//! must never panic, never claim more bytes than it was given, and round-trip what it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::frame::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((frame, used))) = Frame::decode(data) {
        assert!(used <= data.len());
        assert_eq!(frame.encode(), &data[..used], "accepted a frame that does not re-encode");
    }
    let _ = Frame::read_from(&mut &data[..]);
});
