//! The reader's parsing of what a hostile writer shares: see
//! `gstshmring::fuzzing::reader_against_hostile_writer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gstshmring::fuzzing::reader_against_hostile_writer(data);
});
