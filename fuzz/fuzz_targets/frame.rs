#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ipc_core::__fuzz::frame(data));
