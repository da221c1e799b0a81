#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vcycle_fuzz::header(data));
