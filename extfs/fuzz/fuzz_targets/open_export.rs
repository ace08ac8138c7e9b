//! Arbitrary bytes as a raw ext2/3/4 image: open, inspect, block map and the
//! scrambled and plain exports must give results or typed errors — never
//! panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    extfs::fuzzing::exercise(data);
});
