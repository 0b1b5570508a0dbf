//! The official training step (`VQGANTransformer.forward` in `models_gpt.py`): the class token, the image
//! tokens corrupted with probability 1 − pkeep by ids drawn uniformly from the **whole** vocabulary, the
//! sequence shifted right so position t predicts image token t, and cross-entropy over the whole
//! vocabulary against the uncorrupted tokens (optionally label-smoothed, `LabelSmoothing(0.1)`).

use candle_core::{DType, Device, Result, Tensor, D};
use gen_runtime::Rng;

/// The pkeep draws of one step: which image tokens are kept, and the random ids that replace the others.
/// Drawn in the official order (every keep bit, then every replacement), so a replay of recorded draws
/// and a fresh draw take the same path.
#[derive(Clone, Debug, PartialEq)]
pub struct Corruption {
    /// [B, T], 1 = keep.
    pub keep: Vec<u32>,
    /// [B, T], uniform over `0..vocab` (class ids included, as the official `randint_like(indices, V)`).
    pub random: Vec<u32>,
}

impl Corruption {
    /// Bernoulli(pkeep) keep bits and uniform replacement ids for `n` tokens.
    pub fn draw(rng: &mut Rng, n: usize, pkeep: f64, vocab: usize) -> Corruption {
        let keep = (0..n).map(|_| u32::from(rng.uniform() < pkeep)).collect();
        let random = (0..n).map(|_| rng.below(vocab as u64) as u32).collect();
        Corruption { keep, random }
    }

    /// `mask * tokens + (1 - mask) * random`.
    pub fn apply(&self, tokens: &[u32]) -> Vec<u32> {
        tokens.iter().zip(&self.keep).zip(&self.random).map(|((&t, &k), &r)| if k == 1 { t } else { r }).collect()
    }
}

/// The network's input: `cat(class_tokens, tokens)[:, :-1]`, [B, T] U32. `tokens` holds B rows of T.
pub fn shifted_inputs(class_tokens: &[u32], tokens: &[u32], dev: &Device) -> Result<Tensor> {
    let b = class_tokens.len();
    if b == 0 || !tokens.len().is_multiple_of(b) {
        candle_core::bail!("gpt inputs: {} tokens do not split into {b} sequences", tokens.len());
    }
    let t = tokens.len() / b;
    let mut ids = Vec::with_capacity(b * t);
    for (row, &c) in tokens.chunks(t).zip(class_tokens) {
        ids.push(c);
        ids.extend_from_slice(&row[..t - 1]);
    }
    Tensor::from_vec(ids, (b, t), dev)
}

/// Mean cross-entropy of logits [B, T, V] against targets [B, T] (integer ids) over all B·T positions;
/// with `smoothing` ε > 0, `(1 − ε)·(−log p[target]) + ε·(−mean_v log p[v])` (the official
/// `LabelSmoothing`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let logp = candle_nn::ops::log_softmax(&logits.reshape(((), v))?, D::Minus1)?;
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?.unsqueeze(1)?;
    let nll = logp.gather(&targets, 1)?.squeeze(1)?.neg()?; // [N]
    if smoothing == 0.0 {
        return nll.mean_all();
    }
    let uniform = logp.mean(D::Minus1)?.neg()?;
    ((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_inputs_put_the_class_first_and_drop_the_last_token() {
        let t = shifted_inputs(&[100, 101], &[1, 2, 3, 4, 5, 6], &Device::Cpu).unwrap();
        assert_eq!(t.to_vec2::<u32>().unwrap(), vec![vec![100, 1, 2], vec![101, 4, 5]]);
        assert!(shifted_inputs(&[100, 101], &[1, 2, 3], &Device::Cpu).is_err());
    }

    #[test]
    fn corruption_keeps_about_pkeep_and_replaces_over_the_whole_vocab() {
        let mut rng = Rng::new(3);
        let c = Corruption::draw(&mut rng, 20_000, 0.8, 1010);
        let kept = c.keep.iter().filter(|&&k| k == 1).count() as f64 / 20_000.0;
        assert!((kept - 0.8).abs() < 0.01, "{kept}");
        assert!(c.random.iter().all(|&r| r < 1010) && c.random.iter().any(|&r| r >= 1000));
        let tokens: Vec<u32> = (0..20_000).map(|i| i % 7).collect();
        let new = c.apply(&tokens);
        for i in 0..20_000 {
            assert_eq!(new[i], if c.keep[i] == 1 { tokens[i] } else { c.random[i] });
        }
        // seeded: the same draws again
        assert_eq!(Corruption::draw(&mut Rng::new(3), 20_000, 0.8, 1010), c);
    }

    #[test]
    fn cross_entropy_matches_hand_values() {
        let dev = Device::Cpu;
        // one position, logits [0, ln 3] → p = [1/4, 3/4]
        let logits = Tensor::new(&[[[0f32, 3f32.ln()]]], &dev).unwrap();
        let target = Tensor::new(&[[1u32]], &dev).unwrap();
        let l = cross_entropy(&logits, &target, 0.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((l - (4f32 / 3.0).ln()).abs() < 1e-6);
        let s = cross_entropy(&logits, &target, 0.1).unwrap().to_scalar::<f32>().unwrap();
        let want = 0.9 * (4f32 / 3.0).ln() + 0.1 * 0.5 * (4f32.ln() + (4f32 / 3.0).ln());
        assert!((s - want).abs() < 1e-6, "{s} vs {want}");
    }
}
