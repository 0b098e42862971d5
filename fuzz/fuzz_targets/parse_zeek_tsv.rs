#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ward_fuzz::check(ward_operators::parse::Format::ZeekTsv, data, false));
