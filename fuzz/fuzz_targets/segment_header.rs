#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ussdb::fuzzing::segment_header(data));
