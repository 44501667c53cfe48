//! A reader (and the matching writers) of big-endian fields over untrusted bytes (producer-state snapshots, the
//! coordinators' records): every read checks what is left and answers `None` instead of
//! panicking or trusting a declared length.

pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| b[0])
    }

    pub fn i8(&mut self) -> Option<i8> {
        self.array().map(i8::from_be_bytes)
    }

    pub fn i16(&mut self) -> Option<i16> {
        self.array().map(i16::from_be_bytes)
    }

    pub fn i32(&mut self) -> Option<i32> {
        self.array().map(i32::from_be_bytes)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_be_bytes)
    }

    /// A nullable STRING (i16 length, -1 for null).
    pub fn opt_string(&mut self) -> Option<Option<String>> {
        let n = self.i16()?;
        if n < 0 {
            return Some(None);
        }
        String::from_utf8(self.take(n as usize)?.to_vec())
            .ok()
            .map(Some)
    }

    /// A STRING: null is refused.
    pub fn string(&mut self) -> Option<String> {
        self.opt_string()?
    }

    /// BYTES (i32 length); null reads as empty.
    pub fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.i32()?;
        if n < 0 {
            return Some(Vec::new());
        }
        Some(self.take(n as usize)?.to_vec())
    }

    /// An array count, bounded by the bytes left (each element takes at least `min` bytes),
    /// so that a hostile count never sizes an allocation.
    pub fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.i32()?).ok()?;
        (n.checked_mul(min)? <= self.0.len()).then_some(n)
    }

    /// A nullable array's count: null (-1) reads as empty.
    pub fn nullable_count(&mut self, min: usize) -> Option<usize> {
        match self.0.get(..4) {
            Some(b) if b == (-1i32).to_be_bytes() => {
                self.0 = &self.0[4..];
                Some(0)
            }
            _ => self.count(min),
        }
    }
}

/// Writes a STRING (i16 length).
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a nullable STRING (-1 for null).
pub fn put_opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_string(out, s),
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

/// Writes BYTES (i32 length).
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_instead_of_trusting_lengths() {
        let mut b = Vec::new();
        put_string(&mut b, "hi");
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&7i64.to_be_bytes());
        b.extend_from_slice(&i32::MAX.to_be_bytes());
        let mut r = Reader::new(&b);
        assert_eq!(r.string().as_deref(), Some("hi"));
        assert_eq!(r.opt_string(), Some(None));
        assert_eq!(r.i64(), Some(7));
        assert_eq!(r.count(1), None, "i32::MAX elements in 0 bytes");
        assert!(r.is_empty());
        assert_eq!(Reader::new(&[0, 5, b'a']).string(), None);
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).nullable_count(8),
            Some(0)
        );
    }
}
