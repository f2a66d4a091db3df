//! A small, fast, seeded random number generator (xorshift64*) for the fuzz tests: a failure
//! names its seed, and the same seed replays it.

/// xorshift64*, from a seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Mutates `bytes` as the fuzz tests do: one to three bytes changed, a byte taken out or
    /// added, a few random bytes added at the end, or the end cut off.
    pub fn mutate(&mut self, bytes: &mut Vec<u8>) {
        match self.below(5) {
            0 if !bytes.is_empty() => {
                for _ in 0..1 + self.below(3) {
                    let at = self.below(bytes.len());
                    bytes[at] = self.next_u64() as u8;
                }
            }
            1 if !bytes.is_empty() => {
                bytes.remove(self.below(bytes.len()));
            }
            2 => bytes.insert(self.below(bytes.len() + 1), self.next_u64() as u8),
            3 => bytes.truncate(self.below(bytes.len() + 1)),
            _ => bytes.extend((0..1 + self.below(8)).map(|_| self.next_u64() as u8)),
        }
    }
}
