//! The per-export secret and the keyed function every replacement derives
//! from.
//!
//! SipHash-2-4 is a keyed PRF built for short inputs: without the key, a
//! replacement name says nothing about the original, and with one key per
//! export, two exports of the same filesystem cannot be correlated.

use std::io::Read;

/// A 128-bit secret chosen per export; never stored in the image.
#[derive(Clone)]
pub struct ScrambleKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for ScrambleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScrambleKey(..)")
    }
}

impl ScrambleKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> std::io::Result<ScrambleKey> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(ScrambleKey::from_bytes(bytes))
    }

    /// A fixed key (tests and reproducible runs).
    pub fn from_bytes(bytes: [u8; 16]) -> ScrambleKey {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&bytes[..8]);
        k1.copy_from_slice(&bytes[8..]);
        ScrambleKey {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// SipHash-2-4 of `domain` (separates the uses) followed by `data`.
    pub fn prf(&self, domain: u64, data: &[u8]) -> u64 {
        let mut h = SipHasher::new(self.k0, self.k1);
        h.write(&domain.to_le_bytes());
        h.write(data);
        h.finish()
    }
}

/// SipHash-2-4 (Aumasson & Bernstein), streaming.
struct SipHasher {
    v: [u64; 4],
    tail: u64,
    ntail: usize,
    length: usize,
}

impl SipHasher {
    fn new(k0: u64, k1: u64) -> SipHasher {
        SipHasher {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            length: 0,
        }
    }

    #[inline]
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        Self::round(&mut self.v);
        Self::round(&mut self.v);
        self.v[0] ^= m;
    }

    fn write(&mut self, data: &[u8]) {
        self.length += data.len();
        let mut rest = data;
        // Top up a partial word first, then whole words, then the tail.
        while self.ntail != 0 {
            let Some((&b, r)) = rest.split_first() else {
                return;
            };
            self.tail |= u64::from(b) << (8 * self.ntail);
            self.ntail += 1;
            rest = r;
            if self.ntail == 8 {
                let m = self.tail;
                self.compress(m);
                self.tail = 0;
                self.ntail = 0;
            }
        }
        let mut words = rest.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.compress(u64::from_le_bytes(b));
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.ntail = words.remainder().len();
    }

    fn finish(mut self) -> u64 {
        let b = ((self.length as u64 & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            Self::round(&mut self.v);
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash24_reference_vectors() {
        // Reference vectors of the SipHash paper: key 00..0f, message
        // 00..(n-1).
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let (k0, k1) = (
            u64::from_le_bytes(key[..8].try_into().unwrap()),
            u64::from_le_bytes(key[8..].try_into().unwrap()),
        );
        let hash = |n: usize| {
            let msg: Vec<u8> = (0..n as u8).collect();
            let mut h = SipHasher::new(k0, k1);
            h.write(&msg);
            h.finish()
        };
        assert_eq!(hash(0), 0x726f_db47_dd0e_0e31);
        assert_eq!(hash(1), 0x74f8_39c5_93dc_67fd);
        assert_eq!(hash(15), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn split_writes_hash_as_one() {
        let msg: Vec<u8> = (0..40u8).collect();
        let one = {
            let mut h = SipHasher::new(3, 4);
            h.write(&msg);
            h.finish()
        };
        for cut in [0, 1, 5, 8, 9, 17, 40] {
            let mut h = SipHasher::new(3, 4);
            h.write(&msg[..cut]);
            h.write(&msg[cut..]);
            assert_eq!(h.finish(), one, "cut at {cut}");
        }
    }

    #[test]
    fn domains_and_keys_separate() {
        let a = ScrambleKey::from_bytes([1; 16]);
        let b = ScrambleKey::from_bytes([2; 16]);
        assert_ne!(a.prf(0, b"x"), a.prf(1, b"x"));
        assert_ne!(a.prf(0, b"x"), b.prf(0, b"x"));
        assert_eq!(a.prf(0, b"x"), a.prf(0, b"x"));
    }
}
