//! Every API request body is attacker-controlled JSON. Parsing must never panic, and a body that
//! parses must serialise back to an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::platform::api::*;

fn round_trip<T>(data: &[u8])
where
    T: FromBody + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = T::from_body(data) {
        let again = serde_json::to_vec(&value).expect("serialise");
        assert_eq!(T::from_body(&again).expect("re-parse"), value);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<RelayRegistration>(data);
    round_trip::<GatewayRegistration>(data);
    round_trip::<SessionRequest>(data);
    round_trip::<RelayHeartbeat>(data);
    round_trip::<GatewayHeartbeat>(data);
});
