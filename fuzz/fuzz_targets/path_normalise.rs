//! Path normalisation: any bytes, the normal-form invariants hold and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::path_normalise(data));
