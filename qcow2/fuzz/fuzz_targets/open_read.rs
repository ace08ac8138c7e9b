//! Arbitrary bytes as a QCOW2 image: open, map, read, convert and check must
//! give data or a typed error — never panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qcow2::fuzzing::exercise(data);
});
