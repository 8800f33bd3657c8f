#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| inferno::fuzzing::chat_request(data));
