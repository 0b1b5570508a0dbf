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
}
