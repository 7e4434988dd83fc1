//! The bytes requests carry: a seeded xorshift pattern, so a wrong or stale byte shows.

/// Deterministic test data: differs per byte, per size and per seed.
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
