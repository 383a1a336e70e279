//! The gateway-identity extension parser faces every platform client certificate a relay sees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::pki::ext::GatewayIdentity;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = GatewayIdentity::from_der(data) {
        assert_eq!(identity.to_der(), data, "accepted a non-canonical encoding");
    }
});
