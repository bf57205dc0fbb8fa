#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| podshaper_fuzz_checks::request(data));
