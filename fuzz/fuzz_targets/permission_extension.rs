//! The permission extension parser faces every platform client certificate a gateway sees.
//! It must never panic, and whatever it accepts must re-encode to the same bytes (strict DER).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::pki::ext::Permission;

fuzz_target!(|data: &[u8]| {
    if let Ok(permission) = Permission::from_der(data) {
        assert_eq!(permission.to_der(), data, "accepted a non-canonical encoding");
    }
});
