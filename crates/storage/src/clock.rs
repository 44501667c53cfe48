//! Wall-clock time and random ids, read in one place. State machines never call this: their callers pass
//! the time in, so tests drive them with any clock they like.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// 16 random bytes without a dependency: std's randomly keyed hasher, fed the time. For
/// ids (cluster, topic, member suffixes), not for secrets.
pub fn random_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        half.copy_from_slice(&h.finish().to_be_bytes());
    }
    out
}
