//! Codebook usage: how many codes a tokenizer uses on a set of images, and how evenly (the paper's
//! utilisation rate and perplexity).

/// Counts per code id.
#[derive(Clone, Debug)]
pub struct CodeUsage {
    pub counts: Vec<u64>,
}

impl CodeUsage {
    pub fn new(codes: usize) -> Self {
        CodeUsage { counts: vec![0; codes] }
    }

    /// Adds token ids; an id past the codebook is ignored (the quantizer never returns one).
    pub fn add(&mut self, ids: &[u32]) {
        for &i in ids {
            if let Some(c) = self.counts.get_mut(i as usize) {
                *c += 1;
            }
        }
    }

    pub fn tokens(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Codes used at least once.
    pub fn active(&self) -> usize {
        self.counts.iter().filter(|&&c| c > 0).count()
    }

    /// The fraction of the codebook used at least once.
    pub fn utilization(&self) -> f64 {
        self.active() as f64 / self.counts.len().max(1) as f64
    }

    /// exp(entropy) of the usage distribution: the number of equally used codes it is worth.
    pub fn perplexity(&self) -> f64 {
        let total = self.tokens() as f64;
        let h: f64 = self
            .counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / total;
                -p * p.ln()
            })
            .sum();
        h.exp()
    }

    /// Codes used exactly `k` times (k = 1: singletons, 2: doubletons).
    pub fn used_exactly(&self, k: u64) -> usize {
        self.counts.iter().filter(|&&c| c == k).count()
    }

    /// Chao1's bias-corrected estimate of how many codes the tokenizer reaches on images like these,
    /// seen and unseen (Chao 1984; Chao 2005): S_obs + ((N − 1)/N)·f1(f1 − 1)/(2(f2 + 1)), capped at
    /// the codebook size. A lower bound in expectation: a finite split leaves rare codes unseen, and
    /// this counts them from how many codes it saw once and twice.
    pub fn chao1(&self) -> f64 {
        let n = self.tokens() as f64;
        if n == 0.0 {
            return 0.0;
        }
        let (f1, f2) = (self.used_exactly(1) as f64, self.used_exactly(2) as f64);
        let unseen = (n - 1.0) / n * f1 * (f1 - 1.0).max(0.0) / (2.0 * (f2 + 1.0));
        (self.active() as f64 + unseen).min(self.counts.len() as f64)
    }

    /// Good–Turing: the probability that one more token lands on a code not yet seen (f1 / N).
    pub fn unseen_mass(&self) -> f64 {
        let n = self.tokens();
        if n == 0 {
            return 1.0;
        }
        self.used_exactly(1) as f64 / n as f64
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
    }

    /// Counts from the most used code down (a usage histogram's bars).
    pub fn sorted_counts(&self) -> Vec<u64> {
        let mut v = self.counts.clone();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation_and_perplexity() {
        let mut u = CodeUsage::new(4);
        u.add(&[0, 0, 2, 2, 9]);
        assert_eq!((u.active(), u.tokens()), (2, 4));
        assert!((u.utilization() - 0.5).abs() < 1e-12);
        assert!((u.perplexity() - 2.0).abs() < 1e-9, "two equally used codes");
        assert_eq!(u.sorted_counts(), [2, 2, 0, 0]);
    }

    #[test]
    fn chao1_counts_the_unseen_from_singletons_and_doubletons() {
        // 1,000 codes used evenly, 6 tokens each: no singletons, nothing unseen to estimate
        let mut even = CodeUsage::new(2000);
        even.add(&(0..6000).map(|i| i % 1000).collect::<Vec<u32>>());
        assert_eq!(even.chao1(), 1000.0);
        assert_eq!(even.unseen_mass(), 0.0);
        let mut w = CodeUsage::new(100);
        w.add(&[0, 1, 2, 3, 4, 4, 5, 5, 5]);
        assert_eq!((w.used_exactly(1), w.used_exactly(2), w.used_exactly(3)), (4, 1, 1));
        // f1 = 4, f2 = 1, S_obs = 6, N = 9: 6 + (8/9)·4·3/(2·2)
        assert!((w.chao1() - (6.0 + 8.0 / 9.0 * 3.0)).abs() < 1e-12);
        assert!((w.unseen_mass() - 4.0 / 9.0).abs() < 1e-12);
        // capped at the codebook
        let mut tiny = CodeUsage::new(3);
        tiny.add(&[0, 1, 2]);
        assert_eq!(tiny.chao1(), 3.0);
    }

    #[test]
    fn chao1_recovers_the_support_of_a_uniform_sample() {
        // 10,000 codes, 3 tokens per code drawn uniformly at random (xorshift): ~5% go unseen,
        // and Chao1 should put the support back within a percent
        let mut u = CodeUsage::new(20_000);
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..30_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            u.add(&[(s % 10_000) as u32]);
        }
        assert!(u.active() < 9_700, "{}", u.active());
        assert!((u.chao1() - 10_000.0).abs() < 100.0, "{}", u.chao1());
    }
}
