//! Inception Score (Salimans et al. 2016) as the reference implementations compute it (improved-GAN,
//! torch-fidelity): softmax of the FID Inception's 1008-way `fc` logits, split the samples into 10 equal
//! parts, `exp(mean_x KL(p(y|x) ‖ p(y)))` per part with p(y) the part's mean, then mean and standard
//! deviation (population, as `np.std`) over the parts. In f64.

/// (mean, std) over `splits` parts of `logits` (row-major [n, classes]).
pub fn inception_score(logits: &[f32], classes: usize, splits: usize) -> Result<(f64, f64), String> {
    if classes == 0 || !logits.len().is_multiple_of(classes) {
        return Err(format!("{} logits do not split into rows of {classes}", logits.len()));
    }
    let n = logits.len() / classes;
    if splits == 0 || n < splits {
        return Err(format!("{n} samples cannot be split into {splits} parts"));
    }
    let probs: Vec<Vec<f64>> = logits
        .chunks_exact(classes)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect();
    let scores: Vec<f64> = (0..splits)
        .map(|k| {
            let part = &probs[k * n / splits..(k + 1) * n / splits];
            let mut py = vec![0.0; classes];
            for p in part {
                py.iter_mut().zip(p).for_each(|(a, b)| *a += b);
            }
            py.iter_mut().for_each(|v| *v /= part.len() as f64);
            let kl: f64 = part
                .iter()
                .map(|p| {
                    p.iter().zip(&py).map(|(&a, &b)| if a > 0.0 { a * (a.ln() - b.ln()) } else { 0.0 }).sum::<f64>()
                })
                .sum::<f64>()
                / part.len() as f64;
            kl.exp()
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / splits as f64;
    let var = scores.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / splits as f64;
    Ok((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_predictions_score_one_and_confident_distinct_ones_score_the_class_count() {
        let classes = 5;
        let same: Vec<f32> = (0..20).flat_map(|_| [1.0, 2.0, 3.0, 4.0, 5.0]).collect();
        let (m, s) = inception_score(&same, classes, 2).unwrap();
        assert!((m - 1.0).abs() < 1e-12 && s.abs() < 1e-12);
        // each part holds every class once, predicted with certainty: exp(ln 5) = 5
        let sure: Vec<f32> =
            (0..20).flat_map(|i| (0..classes).map(move |c| if c == i % classes { 100.0 } else { -100.0 })).collect();
        let (m, _) = inception_score(&sure, classes, 4).unwrap();
        assert!((m - 5.0).abs() < 1e-9, "{m}");
        assert!(inception_score(&same, classes, 30).is_err());
        assert!(inception_score(&same[..7], classes, 1).is_err());
    }
}
