//! Generated VM names: `adjective-noun`, readable and valid as host names.

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "crisp", "dusty", "eager", "fancy", "gentle", "happy", "icy",
    "jolly", "keen", "lucky", "mellow", "nimble", "odd", "proud", "quick", "rapid", "shy", "swift",
    "tidy", "urban", "vivid", "witty", "young", "zesty", "bold", "clever", "daring",
];
const NOUNS: &[&str] = &[
    "otter", "falcon", "badger", "comet", "dune", "ember", "fjord", "glacier", "heron", "island",
    "jackal", "kernel", "lynx", "meadow", "nebula", "orbit", "pebble", "quartz", "raven", "summit",
    "tundra", "umber", "valley", "walrus", "yak", "zephyr", "cedar", "delta", "maple", "pixel",
];

/// A fresh name not rejected by `taken`.
pub fn generate(taken: impl Fn(&str) -> bool) -> String {
    for _ in 0..64 {
        let name = format!(
            "{}-{}",
            ADJECTIVES[rand::random::<u32>() as usize % ADJECTIVES.len()],
            NOUNS[rand::random::<u32>() as usize % NOUNS.len()]
        );
        if !taken(&name) {
            return name;
        }
    }
    format!("vm-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid_and_avoid_taken_ones() {
        for _ in 0..50 {
            let n = generate(|n| n.starts_with('a'));
            assert!(banger_api::validate_vm_name(&n).is_ok(), "{n}");
            assert!(!n.starts_with('a'));
        }
        assert!(generate(|_| true).starts_with("vm-"));
    }
}
