//! The Fréchet distance between two Gaussians, as pytorch-fid's `calculate_frechet_distance`:
//! `‖μ₁ − μ₂‖² + tr σ₁ + tr σ₂ − 2·tr √(σ₁σ₂)`, everything in f64.
//!
//! pytorch-fid takes `tr √(σ₁σ₂)` from `scipy.linalg.sqrtm` (a Schur method on the non-symmetric product).
//! We take it from a symmetric eigensolver, which is faster and better conditioned: for any factor
//! `σ₁ = C Cᵀ` (Cholesky, or `V W^½` from an eigendecomposition when σ₁ is singular), `σ₁σ₂` is similar
//! to the symmetric `B = Cᵀ σ₂ C`, so `tr √(σ₁σ₂) = Σ √λᵢ(B)`.
//! Negative eigenvalues are where scipy's result turns complex: a tiny one (|√λ| ≤ 1e-3, rank-deficient
//! covariances) contributes 0 as pytorch-fid takes the real part; a large one is pytorch-fid's
//! `ValueError('Imaginary component …')`. The golden cases agree to 3e-15 (full rank) and 3e-8
//! (rank-deficient) relative. scipy's eps retry (σ + 1e-6·I when its sqrtm is not finite) is a rounding
//! accident of the Schur method that this route never meets; see `FrechetOptions::force_eps_retry`.

use faer::{Mat, Side};

/// The imaginary tolerance of pytorch-fid (`np.allclose(diag.imag, 0, atol=1e-3)`).
const IMAG_ATOL: f64 = 1e-3;
/// pytorch-fid's eps for the singular-product retry.
const EPS: f64 = 1e-6;

#[derive(Clone, Copy, Debug, Default)]
pub struct FrechetOptions {
    /// Add 1e-6 to the diagonals for the square-root term only, as pytorch-fid's retry does (its trace
    /// terms keep the original σ). Only to reproduce a run where scipy took that branch.
    pub force_eps_retry: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrechetError {
    #[error("the means have {0} and {1} dimensions")]
    MeanDims(usize, usize),
    #[error("sigma {which} is {rows}×{cols}, expected {d}×{d} (the mean has {d} dimensions)")]
    SigmaShape { which: usize, rows: usize, cols: usize, d: usize },
    #[error("{0} holds NaN or infinite values")]
    NotFinite(&'static str),
    #[error("Imaginary component {0} (the covariance product has a negative eigenvalue: not a covariance?)")]
    Imaginary(f64),
    #[error("the eigendecomposition did not converge")]
    NoConvergence,
}

/// A mean [d] and covariance [d, d] (row-major), in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    pub mu: Vec<f64>,
    pub sigma: Vec<f64>,
}

impl Gaussian {
    pub fn dims(&self) -> usize {
        self.mu.len()
    }

    fn check(&self, which: usize) -> Result<(), FrechetError> {
        let d = self.dims();
        if self.sigma.len() != d * d {
            let rows = if d == 0 { 0 } else { self.sigma.len() / d.max(1) };
            return Err(FrechetError::SigmaShape { which, rows, cols: d, d });
        }
        if !self.mu.iter().all(|v| v.is_finite()) {
            return Err(FrechetError::NotFinite(if which == 1 { "mu1" } else { "mu2" }));
        }
        if !self.sigma.iter().all(|v| v.is_finite()) {
            return Err(FrechetError::NotFinite(if which == 1 { "sigma1" } else { "sigma2" }));
        }
        Ok(())
    }

    fn trace(&self) -> f64 {
        let d = self.dims();
        (0..d).map(|i| self.sigma[i * d + i]).sum()
    }

    fn matrix(&self, eps: f64) -> Mat<f64> {
        let d = self.dims();
        Mat::from_fn(d, d, |i, j| self.sigma[i * d + j] + if i == j { eps } else { 0.0 })
    }
}

/// pytorch-fid's Fréchet distance between `a` and `b`.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian, opts: FrechetOptions) -> Result<f64, FrechetError> {
    if a.dims() != b.dims() {
        return Err(FrechetError::MeanDims(a.dims(), b.dims()));
    }
    a.check(1)?;
    b.check(2)?;
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let eps = if opts.force_eps_retry { EPS } else { 0.0 };
    let tr_covmean = trace_sqrt_product(&a.matrix(eps), &b.matrix(eps))?;
    Ok(diff + a.trace() + b.trace() - 2.0 * tr_covmean)
}

/// `tr √(σ₁σ₂)` as `Σ √λᵢ(Cᵀ σ₂ C)` for any factor `σ₁ = C Cᵀ` (the product is similar to σ₁σ₂). C is
/// the Cholesky factor when σ₁ is positive definite (one triangular factorisation), else `V W^½` from
/// σ₁'s eigendecomposition (rank-deficient covariances: fewer samples than dimensions).
fn trace_sqrt_product(s1: &Mat<f64>, s2: &Mat<f64>) -> Result<f64, FrechetError> {
    let d = s1.nrows();
    if d == 0 {
        return Ok(0.0);
    }
    let c = match s1.llt(Side::Lower) {
        Ok(llt) => llt.L().to_owned(),
        Err(_) => {
            let evd = s1.self_adjoint_eigen(Side::Lower).map_err(|_| FrechetError::NoConvergence)?;
            let (v, w) = (evd.U(), evd.S().column_vector());
            // a covariance's tiny negative eigenvalues are rounding: their root is 0
            Mat::from_fn(d, d, |i, j| v[(i, j)] * w[j].max(0.0).sqrt())
        }
    };
    let t = s2 * &c; // [d, d]
    let b = c.transpose() * &t;
    let b = Mat::from_fn(d, d, |i, j| 0.5 * (b[(i, j)] + b[(j, i)]));
    let lambda = b.self_adjoint_eigenvalues(Side::Lower).map_err(|_| FrechetError::NoConvergence)?;
    let most_negative = lambda.iter().copied().fold(0.0f64, f64::min);
    if (-most_negative).sqrt() > IMAG_ATOL {
        return Err(FrechetError::Imaginary((-most_negative).sqrt()));
    }
    Ok(lambda.iter().map(|&l| l.max(0.0).sqrt()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(v: &[f64]) -> Vec<f64> {
        let d = v.len();
        (0..d * d).map(|k| if k / d == k % d { v[k / d] } else { 0.0 }).collect()
    }

    #[test]
    fn commuting_diagonal_covariances_have_the_closed_form() {
        // diagonal σ commute: tr √(σ₁σ₂) = Σ √(aᵢbᵢ)
        let (a, b) = ([1.0, 4.0, 9.0], [4.0, 1.0, 0.25]);
        let g1 = Gaussian { mu: vec![0.0, 1.0, 2.0], sigma: diag(&a) };
        let g2 = Gaussian { mu: vec![1.0, 1.0, 0.0], sigma: diag(&b) };
        let want = 5.0 + a.iter().sum::<f64>() + b.iter().sum::<f64>() - 2.0 * (2.0 + 2.0 + 1.5);
        let got = frechet_distance(&g1, &g2, FrechetOptions::default()).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!(frechet_distance(&g1, &g1, FrechetOptions::default()).unwrap().abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let g = Gaussian { mu: vec![0.0; 2], sigma: diag(&[1.0, 1.0]) };
        let small = Gaussian { mu: vec![0.0; 3], sigma: diag(&[1.0; 3]) };
        let opts = FrechetOptions::default();
        assert_eq!(frechet_distance(&g, &small, opts), Err(FrechetError::MeanDims(2, 3)));
        let nan = Gaussian { mu: vec![f64::NAN, 0.0], sigma: diag(&[1.0, 1.0]) };
        assert_eq!(frechet_distance(&g, &nan, opts), Err(FrechetError::NotFinite("mu2")));
        let short = Gaussian { mu: vec![0.0; 2], sigma: vec![1.0; 3] };
        assert!(matches!(frechet_distance(&short, &g, opts), Err(FrechetError::SigmaShape { which: 1, .. })));
        let indefinite = Gaussian { mu: vec![0.0; 2], sigma: diag(&[1.0, -4.0]) };
        assert_eq!(frechet_distance(&g, &indefinite, opts), Err(FrechetError::Imaginary(2.0)));
    }
}
