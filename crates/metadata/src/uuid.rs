//! Kafka's Uuid as text: 16 bytes in URL-safe base64 without padding (22 characters), as
//! cluster ids, topic ids and directory ids are written.

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub fn encode(bytes: &[u8; 16]) -> String {
    let mut out = String::with_capacity(22);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The 16 bytes of a 22-character id, or `None` if it is not one.
pub fn decode(text: &str) -> Option<[u8; 16]> {
    if text.len() != 22 {
        return None;
    }
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(16);
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = bits << 6 | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    // 22 characters carry 132 bits; the 4 left over are ignored, as Java's decoder (which
    // Kafka's tools use) ignores them: Kafka's own example id has them set.
    let _ = bits;
    out.try_into().ok()
}

/// A new random id, never starting with '-' (Kafka avoids those: they read as options on a
/// command line).
pub fn random() -> String {
    loop {
        let id = encode(&strom_storage::clock::random_id());
        if !id.starts_with('-') {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_garbage_is_refused() {
        assert_eq!(encode(&[0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        for _ in 0..100 {
            let id = random();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'));
            assert_eq!(encode(&decode(&id).unwrap()), id);
        }
        // Kafka's documentation example cluster id.
        assert!(decode("MkU3OEVBNTcwNTJENDM2Qk").is_some());
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAAAAAA!",
            "AAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
