//! Sigma matching on arbitrary field values, with rules in every costly form (gated
//! wildcards, regexes, field references, keywords, negations): nothing panics, regex work
//! stays linear in the event's size, and libFuzzer's `-timeout` (set by scripts/fuzz.sh)
//! bounds the time per input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ward_fuzz::check_sigma(data);
});
