//! The order a trainer visits its data in.

use gen_runtime::Rng;

/// A uniform shuffle of `0..n` (Fisher–Yates) drawn from `seed` alone. Trainers derive the seed from
/// their run's seed and the epoch number, so a resumed run needs only (epoch, cursor) to draw the same
/// batches as an unbroken one.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// The seed of epoch `epoch` of a run seeded `seed`; `salt` keeps two trainers with the same seed apart.
pub fn epoch_seed(seed: u64, epoch: u64, salt: u64) -> u64 {
    seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permutation_reproducible_from_its_seed() {
        let a = shuffled(1000, 7);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, shuffled(1000, 7));
        assert_ne!(a, shuffled(1000, epoch_seed(7, 1, 0)));
        assert!(shuffled(0, 1).is_empty());
    }
}
