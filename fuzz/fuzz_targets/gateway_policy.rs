#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder_fuzz::gateway_policy::check(data));
