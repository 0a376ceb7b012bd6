#![no_main]

mod scratch;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ussdb_fuzz::clear_dir(scratch::dir());
    ussdb_fuzz::model(scratch::dir(), data);
});
