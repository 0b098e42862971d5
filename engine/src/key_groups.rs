//! Key hashing and key groups: the unit of state distribution and redistribution.
//!
//! Keys hash (xxh3, stable across versions and platforms) into [`KEY_GROUPS`] key groups;
//! worker `w` of `W` owns a contiguous range of groups. A leaf module: anything that routes or
//! partitions by key uses it without depending on the operators' traits.

/// Number of key groups: the unit of state redistribution.
pub const KEY_GROUPS: u16 = 256;

/// The key group of a key hash.
#[inline]
pub fn key_group(hash: u64) -> u16 {
    // The high bits: xxh3's are as good as the low ones, and this keeps `hash % W` routing
    // elsewhere independent of the group.
    (hash >> 56) as u16 % KEY_GROUPS
}

/// The worker that owns key group `group` among `workers`: contiguous ranges.
#[inline]
pub fn worker_for(group: u16, workers: usize) -> usize {
    group as usize * workers / KEY_GROUPS as usize
}

/// Key groups owned by worker `index` of `workers`.
pub fn owned_groups(index: usize, workers: usize) -> impl Iterator<Item = u16> {
    (0..KEY_GROUPS).filter(move |g| worker_for(*g, workers) == index)
}

/// Hashes key parts into a key: parts are separated so ("ab","c") and ("a","bc") differ.
pub fn hash_key<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p);
        h.update(&[0x1f]);
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_groups_cover_workers_contiguously() {
        for workers in 1..=7 {
            let mut seen = vec![0usize; workers];
            let mut last = 0;
            for g in 0..KEY_GROUPS {
                let w = worker_for(g, workers);
                assert!(w >= last && w < workers);
                last = w;
                seen[w] += 1;
            }
            assert!(seen.iter().all(|n| *n >= (KEY_GROUPS as usize / workers)));
        }
    }

    #[test]
    fn key_hash_is_stable_and_separates_parts() {
        assert_ne!(hash_key([b"ab".as_slice(), b"c"]), hash_key([b"a".as_slice(), b"bc"]));
        // Stable across builds: checkpoints depend on it.
        assert_eq!(hash_key([b"alice".as_slice()]), hash_key([b"alice".as_slice()]));
        assert_eq!(key_group(u64::MAX), 255);
    }
}
