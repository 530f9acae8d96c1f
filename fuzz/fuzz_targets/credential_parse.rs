//! Credential parsing: any bytes as `Authorization`, `x-api-key` and a bare JWT,
//! verified against a fixed key set; nothing panics and nothing forged verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::checks::credential_parse(data));
