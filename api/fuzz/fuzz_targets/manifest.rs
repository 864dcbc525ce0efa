//! `cargo fuzz run manifest --sanitizer none`: the manifest loader never panics, whatever text
//! it is given, and anything it accepts survives a round trip through JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(objects) = tug_api::manifest::load(text) {
            for o in objects {
                let json = serde_json::to_string(&o.to_value()).unwrap();
                tug_api::manifest::load(&json).expect("an accepted object loads again from its JSON");
            }
        }
    }
});
