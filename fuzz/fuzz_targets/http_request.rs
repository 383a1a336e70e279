//! The platform API's request reader faces every client that reaches the API port.
//! It must never panic, and what it accepts must respect the documented limits.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use postern::platform::http::{read_request, MAX_BODY};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = read_request(&mut &data[..], IpAddr::V4(Ipv4Addr::LOCALHOST)) {
        assert!(request.body.len() <= MAX_BODY);
        assert!(request.body.len() <= data.len());
    }
});
