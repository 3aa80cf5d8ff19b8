//! The cluster file: any text gives a config or an error, never a panic, and the error prints.
//! Seed the corpus with the shipped files for a head start: `cp ../config/*.toml fuzz/corpus/config/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node::config::ClusterConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = ClusterConfig::from_toml("fuzz.toml", text) {
            let _ = e.to_string();
        }
    }
});
