//! ODE integrators for the probability-flow drift, as torchdiffeq 0.2.5 runs them for SiT: fixed-grid
//! `euler` and `heun2` on `linspace(t0, t1, n)` (n − 1 steps), and adaptive `dopri5` (Dormand–Prince
//! 5(4) with FSAL, the initial step of `_select_initial_step`, RMS error norm over the whole state,
//! dense quartic output at the requested times). The drift is any closure of (t, x); the network sees
//! t as f32, like torchdiffeq casts it.

use candle_core::{DType, Result, Tensor};

/// `torch.linspace(t0, t1, n)` in f32: the first half counts up from t0, the second down from t1.
pub fn linspace_f32(t0: f64, t1: f64, n: usize) -> Vec<f32> {
    let (a, b) = (t0 as f32, t1 as f32);
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f32;
    (0..n).map(|i| if i < n / 2 { a + i as f32 * step } else { b - (n - 1 - i) as f32 * step }).collect()
}

/// The drift closure: (t, x) → dx/dt.
pub type Drift<'a> = dyn FnMut(f64, &Tensor) -> Result<Tensor> + 'a;

/// Fixed-grid solvers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixedMethod {
    Euler,
    Heun2,
}

/// Integrates over the f32 grid `linspace(t0, t1, n)`; returns the n states (the first is x0).
/// `on_step(k)` runs after step k of n − 1.
pub fn integrate_fixed(
    f: &mut Drift,
    x0: &Tensor,
    t0: f64,
    t1: f64,
    n: usize,
    method: FixedMethod,
    on_step: &mut dyn FnMut(usize) -> Result<()>,
) -> Result<Vec<Tensor>> {
    if n < 2 {
        candle_core::bail!("ode: {n} output times, at least 2 are needed");
    }
    let grid = linspace_f32(t0, t1, n);
    let mut out = vec![x0.clone()];
    let mut y = x0.clone();
    for (k, w) in grid.windows(2).enumerate() {
        let (ta, tb) = (w[0], w[1]);
        let dt = tb - ta;
        let k1 = f(f64::from(ta), &y)?;
        y = match method {
            FixedMethod::Euler => (&y + (k1 * f64::from(dt))?)?,
            FixedMethod::Heun2 => {
                let k2 = f(f64::from(ta + dt), &(&y + (&k1 * f64::from(dt))?)?)?;
                (&y + ((k1 * 0.5)? + (k2 * 0.5)?)?.affine(f64::from(dt), 0.0)?)?
            }
        };
        out.push(y.clone());
        on_step(k)?;
    }
    Ok(out)
}

/// The Dormand–Prince tableau (torchdiffeq `_DORMAND_PRINCE_SHAMPINE_TABLEAU`).
const ALPHA: [f64; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const BETA: [&[f64]; 6] = [
    &[1.0 / 5.0],
    &[3.0 / 40.0, 9.0 / 40.0],
    &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
    &[19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0],
    &[9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0],
    &[35.0 / 384.0, 0.0, 500.0 / 1113.0, 125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0],
];
const C_ERROR: [f64; 7] = [
    35.0 / 384.0 - 1951.0 / 21600.0,
    0.0,
    500.0 / 1113.0 - 22642.0 / 50085.0,
    125.0 / 192.0 - 451.0 / 720.0,
    -2187.0 / 6784.0 + 12231.0 / 42400.0,
    11.0 / 84.0 - 649.0 / 6300.0,
    -1.0 / 60.0,
];
/// `DPS_C_MID`: the weights of the mid-step state used by the dense output.
const C_MID: [f64; 7] = [
    6025192743.0 / 30085553152.0 / 2.0,
    0.0,
    51252292925.0 / 65400821598.0 / 2.0,
    -2691868925.0 / 45128329728.0 / 2.0,
    187940372067.0 / 1594534317056.0 / 2.0,
    -1776094331.0 / 19743644256.0 / 2.0,
    11237099.0 / 235043384.0 / 2.0,
];

/// Tolerances and limits of a dopri5 solve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dopri5Options {
    pub atol: f64,
    pub rtol: f64,
    /// Tried steps before giving up (torchdiffeq's default is 2³¹ − 1: effectively a hang).
    pub max_steps: usize,
}

impl Default for Dopri5Options {
    /// The official SiT sampling tolerances.
    fn default() -> Self {
        Dopri5Options { atol: 1e-6, rtol: 1e-3, max_steps: 10_000 }
    }
}

/// One tried step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    pub t0: f64,
    pub dt: f64,
    pub accepted: bool,
    pub error_ratio: f64,
    pub dt_next: f64,
}

/// What a solve did: the network's times and the steps.
#[derive(Clone, Debug, Default)]
pub struct Dopri5Report {
    pub eval_t: Vec<f64>,
    pub steps: Vec<StepRecord>,
}

/// The result of one Dormand–Prince step.
pub struct RkStep {
    pub y1: Tensor,
    /// The derivative at the end (evaluated 1 ulp before t1), reused as the next step's first stage.
    pub f1: Tensor,
    pub error: Tensor,
    /// The seven stage derivatives.
    pub k: Vec<Tensor>,
}

/// f32 `nextafter(t, −∞)`.
pub fn prev_f32(t: f32) -> f32 {
    if t == 0.0 {
        return -f32::from_bits(1);
    }
    if t > 0.0 {
        f32::from_bits(t.to_bits() - 1)
    } else {
        f32::from_bits(t.to_bits() + 1)
    }
}

/// `Σ_j k_j·(w_j·dt)` over the non-zero weights.
fn combine(k: &[Tensor], w: &[f64], dt: f32) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (kj, &wj) in k.iter().zip(w) {
        if wj == 0.0 {
            continue;
        }
        let term = (kj * f64::from((wj as f32) * dt))?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    acc.ok_or_else(|| candle_core::Error::Msg("dopri5: empty stage combination".into()))
}

/// `_runge_kutta_step` of dopri5 from (t0, y0) with f0 = f(t0, y0) over dt; the stage times are
/// computed like torchdiffeq (t0 and dt cast to f32; the two c = 1 stages at `prev_f32(t1)`).
pub fn dopri5_step(f: &mut Drift, y0: &Tensor, f0: &Tensor, t0: f64, dt: f64, eval_t: &mut Vec<f64>) -> Result<RkStep> {
    let t1 = t0 + dt;
    let (t0f, dtf, t1f) = (t0 as f32, dt as f32, t1 as f32);
    let mut k = vec![f0.clone()];
    let mut yi = y0.clone();
    for (i, (&a, beta)) in ALPHA.iter().zip(BETA.iter()).enumerate() {
        let ti = if a == 1.0 { prev_f32(t1f) } else { (f64::from(t0f) + a * f64::from(dtf)) as f32 };
        yi = (y0 + combine(&k[..=i], beta, dtf)?)?;
        eval_t.push(f64::from(ti));
        k.push(f(f64::from(ti), &yi)?);
    }
    // c_sol equals the last beta row and ends in 0, so y1 is the last stage's input (FSAL)
    let error = combine(&k, &C_ERROR, dtf)?;
    Ok(RkStep { y1: yi, f1: k[6].clone(), error, k })
}

/// RMS over every element, as f64.
fn rms(x: &Tensor) -> Result<f64> {
    Ok(f64::from(x.sqr()?.mean_all()?.sqrt()?.to_dtype(DType::F32)?.to_scalar::<f32>()?))
}

/// `_compute_error_ratio`: RMS(error / (atol + rtol·max(|y0|, |y1|))).
pub fn error_ratio(error: &Tensor, y0: &Tensor, y1: &Tensor, atol: f64, rtol: f64) -> Result<f64> {
    let tol = (y0.abs()?.maximum(&y1.abs()?)? * rtol)? + atol;
    rms(&error.div(&tol?)?)
}

/// `_optimal_step_size` for order 5: dt·min(10, max(0.9·ratio^(−1/5), d)), d = 1 if ratio < 1 else 0.2.
pub fn next_step_size(dt: f64, ratio: f64) -> f64 {
    if ratio == 0.0 {
        return dt * 10.0;
    }
    let dfactor = if ratio < 1.0 { 1.0 } else { 0.2 };
    dt * (0.9 / ratio.powf(1.0 / 5.0)).max(dfactor).min(10.0)
}

/// `_select_initial_step` (order 4): two drift evaluations.
fn initial_step(
    f: &mut Drift,
    t0: f64,
    y0: &Tensor,
    f0: &Tensor,
    o: &Dopri5Options,
    eval_t: &mut Vec<f64>,
) -> Result<f64> {
    let scale = (y0.abs()? * o.rtol)? + o.atol;
    let scale = scale?;
    let d0 = rms(&y0.div(&scale)?)?;
    let d1 = rms(&f0.div(&scale)?)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 { 1e-6 } else { f64::from((0.01 * d0 / d1) as f32) };
    let y1 = (y0 + (f0 * h0)?)?;
    let t = f64::from((t0 + h0) as f32);
    eval_t.push(t);
    let f1 = f(t, &y1)?;
    let d2 = rms(&(&f1 - f0)?.div(&scale)?)? / h0;
    let h1 = if d1 <= 1e-15 && d2 <= 1e-15 { (h0 * 1e-3).max(1e-6) } else { (0.01 / d1.max(d2)).powf(1.0 / 5.0) };
    Ok((100.0 * h0).min(h1))
}

/// `_interp_fit` of dopri5: the quartic through the step, [e, d, c, b, a] in powers of the step fraction.
pub fn interp_fit(y0: &Tensor, y1: &Tensor, k: &[Tensor], dt: f32) -> Result<[Tensor; 5]> {
    let y_mid = (y0 + combine(k, &C_MID, dt)?)?;
    let (f0, f1) = (&k[0], &k[6]);
    let dt = f64::from(dt);
    let a = (((f1 - f0)? * (2.0 * dt))? - ((y1 + y0)? * 8.0)?)?.add(&(&y_mid * 16.0)?)?;
    let b = ((((f0 * 5.0)? - (f1 * 3.0)?)? * dt)? + (y0 * 18.0)?)?.add(&(y1 * 14.0)?)?.sub(&(&y_mid * 32.0)?)?;
    let c = ((((f1 - (f0 * 4.0)?)? * dt)? - (y0 * 11.0)?)? - (y1 * 5.0)?)?.add(&(&y_mid * 16.0)?)?;
    let d = (f0 * dt)?;
    Ok([y0.clone(), d, c, b, a])
}

pub fn interp_eval(coef: &[Tensor; 5], t0: f64, t1: f64, t: f64) -> Result<Tensor> {
    let x = f64::from(((t - t0) / (t1 - t0)) as f32);
    let mut total = (&coef[0] + (&coef[1] * x)?)?;
    let mut power = x;
    for c in &coef[2..] {
        power = f64::from((power * x) as f32);
        total = (total + (c * power)?)?;
    }
    Ok(total)
}

/// Solves from (t[0], x0) and returns the state at each of the increasing `times` (the first is x0),
/// with the report of every evaluation and step. A non-finite error or more than `max_steps` tried
/// steps is an error naming the time reached.
pub fn dopri5(
    f: &mut Drift,
    x0: &Tensor,
    times: &[f64],
    o: &Dopri5Options,
    on_step: &mut dyn FnMut(f64) -> Result<()>,
) -> Result<(Vec<Tensor>, Dopri5Report)> {
    let mut report = Dopri5Report::default();
    let Some(&start) = times.first() else { candle_core::bail!("dopri5: no output times") };
    report.eval_t.push(f64::from(start as f32));
    let f0 = f(f64::from(start as f32), x0)?;
    let mut dt = initial_step(f, start, x0, &f0, o, &mut report.eval_t)?;
    let (mut y, mut fy, mut t) = (x0.clone(), f0, start);
    let mut interp: Option<([Tensor; 5], f64, f64)> = None;
    let mut out = vec![x0.clone()];
    for &next in &times[1..] {
        while next > t {
            if report.steps.len() >= o.max_steps {
                candle_core::bail!(
                    "dopri5: no convergence after {} steps (reached t = {t:.6} of {next:.6}, dt = {dt:.3e})",
                    o.max_steps
                );
            }
            let s = dopri5_step(f, &y, &fy, t, dt, &mut report.eval_t)?;
            let ratio = error_ratio(&s.error, &y, &s.y1, o.atol, o.rtol)?;
            if !ratio.is_finite() {
                candle_core::bail!(
                    "dopri5: the drift is not finite (step {}, t = {t:.6}, dt = {dt:.3e})",
                    report.steps.len()
                );
            }
            let accepted = ratio <= 1.0;
            let dt_next = next_step_size(dt, ratio);
            report.steps.push(StepRecord { t0: t, dt, accepted, error_ratio: ratio, dt_next });
            if accepted {
                interp = Some((interp_fit(&y, &s.y1, &s.k, dt as f32)?, t, t + dt));
                t += dt;
                y = s.y1;
                fy = s.f1;
                on_step(t)?;
            }
            if dt_next.abs() < 1e-12 * t.abs().max(1.0) {
                candle_core::bail!("dopri5: no convergence (step size underflow at t = {t:.6}, dt = {dt_next:.3e})");
            }
            dt = dt_next;
        }
        let (coef, a, b) = interp.as_ref().expect("an accepted step precedes every later output time");
        out.push(interp_eval(coef, *a, *b, next)?);
    }
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn y0() -> Tensor {
        Tensor::new(&[1f32, -0.5, 2.0], &Device::Cpu).unwrap()
    }

    #[test]
    fn dopri5_integrates_exponential_decay() {
        // y' = −y: y(1) = y0·e^{−1}
        let mut f = |_: f64, y: &Tensor| y.neg();
        let o = Dopri5Options { atol: 1e-9, rtol: 1e-6, max_steps: 1000 };
        let (out, report) = dopri5(&mut f, &y0(), &[0.0, 0.5, 1.0], &o, &mut |_| Ok(())).unwrap();
        let want: Vec<f32> = y0().to_vec1::<f32>().unwrap().iter().map(|v| v * (-1f32).exp()).collect();
        for (g, w) in out[2].to_vec1::<f32>().unwrap().iter().zip(&want) {
            assert!((g - w).abs() < 2e-6, "{g} vs {w}");
        }
        assert!(report.steps.iter().all(|s| s.accepted) && report.eval_t.len() == 2 + 6 * report.steps.len());
    }

    #[test]
    fn dopri5_reports_a_solve_that_does_not_converge() {
        // a stiff drift with a step budget too small: an error naming the time reached, not a hang
        let mut stiff = |_: f64, y: &Tensor| y * -1.0e4;
        let o = Dopri5Options { atol: 1e-9, rtol: 1e-9, max_steps: 5 };
        let err = dopri5(&mut stiff, &y0(), &[0.0, 1.0], &o, &mut |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("no convergence after 5 steps") && err.contains("reached t ="), "{err}");
        // a drift that turns NaN
        let mut nan = |_: f64, y: &Tensor| y.affine(f64::NAN, 0.0);
        let err =
            dopri5(&mut nan, &y0(), &[0.0, 1.0], &Dopri5Options::default(), &mut |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("not finite"), "{err}");
    }

    #[test]
    fn fixed_grid_solvers_take_n_minus_one_steps() {
        let mut calls = 0;
        let mut f = |_: f64, y: &Tensor| {
            calls += 1;
            y.neg()
        };
        let out = integrate_fixed(&mut f, &y0(), 0.0, 1.0, 10, FixedMethod::Heun2, &mut |_| Ok(())).unwrap();
        assert_eq!((out.len(), calls), (10, 18));
        assert_eq!(linspace_f32(0.0, 1.0, 10)[9], 1.0);
    }
}
