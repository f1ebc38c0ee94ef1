//! The writer's parsing of what a hostile reader shares: see
//! `gstshmring::fuzzing::writer_against_hostile_reader`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gstshmring::fuzzing::writer_against_hostile_reader(data);
});
