//! The policy parser on arbitrary text: errors, never panics; a policy that
//! parses answers decisions for names taken from the input.
#![no_main]

use exocom::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Policy::parse(text, "fuzz.toml") {
        Ok(policy) => {
            let services: Vec<String> = policy.services().map(|s| s.name.to_string()).collect();
            for line in text.lines().take(8) {
                let word = line.trim();
                for service in services.iter().take(4) {
                    let _ = policy.check_send(service, word, 1);
                    let _ = policy.check_receive(service, word, 1);
                }
                let _ = policy.receivers(word, 1);
                let _ = policy.service_for_identity(word);
            }
        }
        // Rendering the diagnostics walks every span: it must not panic either.
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
