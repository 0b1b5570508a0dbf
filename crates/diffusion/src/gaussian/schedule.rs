//! The noise schedule of `GaussianDiffusion` (`diffusion/gaussian_diffusion.py`) in f64, as numpy
//! computes it, and timestep respacing (`diffusion/respace.py`).

/// `get_named_beta_schedule("linear", n)`: `np.linspace(1e-4·s, 0.02·s, n)` with `s = 1000/n`.
pub fn linear_betas(n: usize) -> Vec<f64> {
    let scale = 1000.0 / n as f64;
    linspace(scale * 0.0001, scale * 0.02, n)
}

/// `np.linspace(start, stop, n)` (endpoint included): `i·step + start`, the last value exactly `stop`.
pub fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RespacingError {
    #[error("timestep respacing '{spec}': {why}")]
    Bad { spec: String, why: String },
}

/// `space_timesteps(num_timesteps, spec)`, sorted: `""` keeps every step; `"250"` or `"10,15,20"` splits
/// the steps into equal sections and takes that many evenly strided steps from each (round half to
/// even, like Python's `round`); `"ddimN"` takes the fixed stride giving exactly N steps.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>, RespacingError> {
    let bad = |why: String| RespacingError::Bad { spec: spec.to_string(), why };
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((0..num_timesteps).collect());
    }
    if let Some(n) = spec.strip_prefix("ddim") {
        let n: usize = n.parse().map_err(|_| bad("expected ddimN with an integer N".into()))?;
        for stride in 1..num_timesteps {
            if (0..num_timesteps).step_by(stride).count() == n {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(bad(format!("cannot take exactly {n} steps of {num_timesteps} with an integer stride")));
    }
    let counts: Vec<usize> = spec
        .split(',')
        .map(|s| s.trim().parse::<usize>().map_err(|_| bad(format!("'{s}' is not a step count"))))
        .collect::<Result<_, _>>()?;
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0;
    let mut steps = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if count == 0 {
            return Err(bad("a section of zero steps".into()));
        }
        if size < count {
            return Err(bad(format!(
                "cannot take {count} steps from a section of {size} (the schedule has {num_timesteps})"
            )));
        }
        let stride = if count <= 1 { 1.0 } else { (size - 1) as f64 / (count - 1) as f64 };
        let mut cur = 0.0f64;
        for _ in 0..count {
            steps.push(start + cur.round_ties_even() as usize);
            cur += stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

/// Every array `GaussianDiffusion.__init__` derives from the betas (f64, one entry per step).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub alphas_cumprod_next: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub log_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    /// `log(posterior_variance)` with step 0 replaced by step 1 (the true one is 0).
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    /// `np.log(betas)`: the upper end of the learned log-variance range.
    pub log_betas: Vec<f64>,
}

impl Schedule {
    /// The arrays of `GaussianDiffusion(betas=…)`, operation for operation as numpy evaluates them.
    pub fn from_betas(betas: Vec<f64>) -> Self {
        let n = betas.len();
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut ac = Vec::with_capacity(n);
        let mut acc = 1.0;
        for (i, a) in alphas.iter().enumerate() {
            acc = if i == 0 { *a } else { acc * a };
            ac.push(acc);
        }
        let prev: Vec<f64> = std::iter::once(1.0).chain(ac.iter().take(n.saturating_sub(1)).copied()).collect();
        let next: Vec<f64> = ac.iter().skip(1).copied().chain(std::iter::once(0.0)).collect();
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let pv = map(&|i| betas[i] * (1.0 - prev[i]) / (1.0 - ac[i]));
        let plv = if n > 1 { map(&|i| pv[if i == 0 { 1 } else { i }].ln()) } else { Vec::new() };
        Schedule {
            sqrt_alphas_cumprod: map(&|i| ac[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - ac[i]).sqrt()),
            log_one_minus_alphas_cumprod: map(&|i| (1.0 - ac[i]).ln()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / ac[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / ac[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * prev[i].sqrt() / (1.0 - ac[i])),
            posterior_mean_coef2: map(&|i| (1.0 - prev[i]) * alphas[i].sqrt() / (1.0 - ac[i])),
            log_betas: map(&|i| betas[i].ln()),
            posterior_variance: pv,
            posterior_log_variance_clipped: plv,
            alphas_cumprod: ac,
            alphas_cumprod_prev: prev,
            alphas_cumprod_next: next,
            betas,
        }
    }

    /// `SpacedDiffusion`: the betas that keep ᾱ at the kept steps (`1 − ᾱ[t_i]/ᾱ[t_{i−1}]`), the whole
    /// schedule recomputed from them, and the original step of each kept one (the model's timestep).
    pub fn respaced(base_betas: &[f64], keep: &[usize]) -> (Schedule, Vec<usize>) {
        let base = Schedule::from_betas(base_betas.to_vec());
        let mut last = 1.0;
        let (mut betas, mut map) = (Vec::new(), Vec::new());
        for (i, &a) in base.alphas_cumprod.iter().enumerate() {
            if keep.binary_search(&i).is_ok() {
                betas.push(1.0 - a / last);
                last = a;
                map.push(i);
            }
        }
        (Schedule::from_betas(betas), map)
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_rounds_half_to_even_like_python() {
        // ../shared/golden/dit/README.md quirk 9: "25" takes 166 and 832
        let s = space_timesteps(1000, "25").unwrap();
        assert_eq!(s.len(), 25);
        assert!(s.contains(&166) && s.contains(&832) && !s.contains(&167) && !s.contains(&833));
        assert_eq!(space_timesteps(1000, "10").unwrap(), vec![0, 111, 222, 333, 444, 555, 666, 777, 888, 999]);
        assert_eq!(space_timesteps(1000, "ddim4").unwrap(), vec![0, 250, 500, 750]);
        assert_eq!(space_timesteps(10, "").unwrap(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn respacing_rejects_more_steps_than_the_schedule_and_zero() {
        assert!(space_timesteps(1000, "1001").unwrap_err().to_string().contains("cannot take 1001 steps"));
        assert!(space_timesteps(1000, "0").unwrap_err().to_string().contains("zero steps"));
        assert!(space_timesteps(1000, "abc").unwrap_err().to_string().contains("'abc'"));
    }

    #[test]
    fn respacing_every_step_keeps_alphas_cumprod() {
        let b = linear_betas(1000);
        let (s, map) = Schedule::respaced(&b, &(0..1000).collect::<Vec<_>>());
        let base = Schedule::from_betas(b);
        assert_eq!(map, (0..1000).collect::<Vec<_>>());
        for (x, y) in s.alphas_cumprod.iter().zip(&base.alphas_cumprod) {
            assert!((x - y).abs() <= 1e-13 * y);
        }
    }
}
