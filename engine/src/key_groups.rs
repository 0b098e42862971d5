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

/// `items` (by key hash) split by key group, only those of `groups`, in `groups` order, groups
/// without items left out: one pass over an operator's state for a worker's share of groups.
pub fn split_by_group<T>(items: impl IntoIterator<Item = (u64, T)>, groups: &[u16]) -> Vec<(u16, Vec<(u64, T)>)> {
    let mut slot = [usize::MAX; KEY_GROUPS as usize];
    for (i, g) in groups.iter().enumerate() {
        if let Some(s) = slot.get_mut(*g as usize) {
            *s = i;
        }
    }
    let mut split: Vec<Vec<(u64, T)>> = groups.iter().map(|_| Vec::new()).collect();
    for (key, item) in items {
        if let Some(v) = split.get_mut(slot[key_group(key) as usize]) {
            v.push((key, item));
        }
    }
    groups.iter().copied().zip(split).filter(|(_, v)| !v.is_empty()).collect()
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

    #[test]
    fn state_splits_by_group_in_one_pass() {
        // Keys whose top byte is the group: 3 and 7 twice, 200 once, 9 not asked for.
        let key = |g: u64, n: u64| (g << 56) | n;
        let items = [
            (key(7, 1), 'a'),
            (key(3, 2), 'b'),
            (key(9, 3), 'c'),
            (key(7, 4), 'd'),
            (key(200, 5), 'e'),
            (key(3, 6), 'f'),
        ];
        let split = split_by_group(items, &[200, 3, 5, 7]);
        assert_eq!(
            split,
            vec![
                (200, vec![(key(200, 5), 'e')]),
                (3, vec![(key(3, 2), 'b'), (key(3, 6), 'f')]),
                (7, vec![(key(7, 1), 'a'), (key(7, 4), 'd')]),
            ],
            "the groups asked for, in that order, empty ones left out, items in their order"
        );
        assert!(split_by_group(items, &[]).is_empty());
    }
}
