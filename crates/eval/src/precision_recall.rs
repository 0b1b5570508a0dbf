//! Improved precision and recall (Kynkäänniemi et al. 2019): each set's features are a union of balls,
//! one per sample, whose radius is the distance to its k-th nearest neighbour in the same set (k = 3,
//! the paper's default). Precision is the share of generated samples inside the real balls; recall the
//! share of real samples inside the generated balls. Distances are exact (f64 accumulation), computed in
//! blocks so memory stays O(block · n).

/// (precision, recall) of `fake` against `real`, row-major [n, dims] each.
pub fn precision_recall(real: &[f32], fake: &[f32], dims: usize, k: usize) -> Result<(f64, f64), String> {
    if dims == 0 || !real.len().is_multiple_of(dims) || !fake.len().is_multiple_of(dims) {
        return Err(format!("features do not split into rows of {dims}"));
    }
    let (nr, nf) = (real.len() / dims, fake.len() / dims);
    if nr <= k || nf <= k {
        return Err(format!("need more than k = {k} samples on each side (got {nr} real, {nf} generated)"));
    }
    let rr = radii(real, dims, k);
    let rf = radii(fake, dims, k);
    Ok((coverage(fake, real, &rr, dims), coverage(real, fake, &rf, dims)))
}

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum()
}

/// Squared distance of each row to its k-th nearest other row.
fn radii(x: &[f32], d: usize, k: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let n = x.len() / d;
    (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * d..(i + 1) * d];
            let mut nearest = vec![f64::INFINITY; k];
            for j in (0..n).filter(|&j| j != i) {
                let dj = dist2(xi, &x[j * d..(j + 1) * d]);
                if dj < nearest[k - 1] {
                    nearest[k - 1] = dj;
                    nearest.sort_by(f64::total_cmp);
                }
            }
            nearest[k - 1]
        })
        .collect()
}

/// The share of rows of `q` within some ball (centre a row of `x`, squared radius `r2`).
fn coverage(q: &[f32], x: &[f32], r2: &[f64], d: usize) -> f64 {
    use rayon::prelude::*;
    let nq = q.len() / d;
    let inside = (0..nq)
        .into_par_iter()
        .filter(|&i| {
            let qi = &q[i * d..(i + 1) * d];
            r2.iter().enumerate().any(|(j, &r)| dist2(qi, &x[j * d..(j + 1) * d]) <= r)
        })
        .count();
    inside as f64 / nq as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(n: usize, centre: f32, seed: u64) -> Vec<f32> {
        let mut r = gen_runtime::Rng::new(seed);
        (0..n * 2).map(|_| centre + r.normal() as f32).collect()
    }

    #[test]
    fn same_distribution_scores_high_and_disjoint_ones_zero() {
        let (a, b) = (cluster(200, 0.0, 1), cluster(200, 0.0, 2));
        let (p, r) = precision_recall(&a, &b, 2, 3).unwrap();
        assert!(p > 0.9 && r > 0.9, "{p} {r}");
        let far = cluster(200, 100.0, 3);
        assert_eq!(precision_recall(&a, &far, 2, 3).unwrap(), (0.0, 0.0));
        // a generator that covers only a corner of the real set: high precision, low recall
        let narrow: Vec<f32> = cluster(200, 0.0, 4).iter().map(|v| v * 0.05 + 1.0).collect();
        let (p, r) = precision_recall(&a, &narrow, 2, 3).unwrap();
        assert!(p > 0.9 && r < 0.3, "{p} {r}");
        assert!(precision_recall(&a[..6], &b, 2, 3).is_err());
    }
}
