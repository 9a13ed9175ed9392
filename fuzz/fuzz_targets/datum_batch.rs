//! libFuzzer target; the body is `harness::datum_batch` (fuzz/harness.rs).
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::datum_batch(data));
