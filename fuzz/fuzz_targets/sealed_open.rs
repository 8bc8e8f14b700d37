#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder_fuzz::sealed_open::check(data));
