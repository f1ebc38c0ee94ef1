//! The fuzz targets' entry points (see `fuzz/`), run without a fuzzer so
//! that CI needs no nightly toolchain: over the committed seeds and the
//! inputs that once failed (`fuzz/regressions/`), then over inputs from a
//! fixed-seed generator. Any panic, out-of-bounds access or hang in the
//! parsing of shared memory fails the test, as it would fail the fuzzer.

use std::fs;
use std::path::Path;

use gstshmring::fuzzing::{self, Outcome};

/// Generated inputs per target: a few seconds in all for a debug build,
/// far less than the fuzzer's minutes, but it exercises every operation of
/// both scripts on every run.
const GENERATED_INPUTS: usize = 5000;
/// Longest generated input; long enough for a few dozen operations.
const MAX_INPUT_LEN: usize = 600;

/// splitmix64: a fixed sequence, so that a failure reproduces.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn input(&mut self) -> Vec<u8> {
        let len = (self.next() % MAX_INPUT_LEN as u64) as usize;
        // Mostly small bytes, as the scripts' choices and the protocol's
        // interesting values are; sometimes anything.
        (0..len)
            .map(|_| {
                let word = self.next();
                if word & 3 == 0 {
                    (word >> 8) as u8
                } else {
                    (word >> 8) as u8 % 16
                }
            })
            .collect()
    }
}

/// Every file in `fuzz/<dir>/<target>`, sorted; the directory may not exist.
fn committed_inputs(dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let Ok(entries) = fs::read_dir(&path) else {
        return Vec::new();
    };
    let mut inputs: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = fs::read(entry.path()).unwrap_or_else(|err| panic!("reading {name}: {err}"));
            (name, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

/// Runs `entry` over the committed inputs, then the generated ones, and
/// returns what they did in total.
fn run(target: &str, entry: fn(&[u8]) -> Outcome, seed: u64) -> Outcome {
    let mut committed = committed_inputs("seeds", target);
    committed.extend(committed_inputs("regressions", target));
    let mut total = Outcome::default();
    let mut add = |outcome: Outcome| {
        total.records += outcome.records;
        total.accepted += outcome.accepted;
        total.refused += outcome.refused;
    };
    for (name, input) in &committed {
        eprintln!("{target}: {name}");
        add(entry(input));
    }
    let mut generator = Generator(seed);
    for _ in 0..GENERATED_INPUTS {
        add(entry(&generator.input()));
    }
    eprintln!("{target}: {total:?}");
    total
}

#[test]
fn reader_survives_a_hostile_writer() {
    let total = run("reader", fuzzing::reader_against_hostile_writer, 0x5eed_0001);
    // The inputs must reach past the checks, not only into them: records
    // read and decoded as well as records refused. The seeds fix the figures
    // (591 records, 4880 accepted, 18356 refused since version 5, whose
    // flush word and smaller headers give the scripts more to refuse); the
    // bounds leave room for changes to the scripts.
    assert!(total.records > 400, "{total:?}");
    assert!(total.accepted > 2000, "{total:?}");
    assert!(total.refused > 8000, "{total:?}");
}

#[test]
fn writer_survives_a_hostile_reader() {
    let total = run("writer", fuzzing::writer_against_hostile_reader, 0x5eed_0002);
    // Fixed by the seeds: 27183 records, 1879 blocks freed, 13770 refused.
    assert!(total.records > 10_000, "{total:?}");
    assert!(total.accepted > 900, "{total:?}");
    assert!(total.refused > 6000, "{total:?}");
}
