#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| roster_fuzz::vitals::run(data));
