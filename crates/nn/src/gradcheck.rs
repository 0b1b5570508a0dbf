//! Finite-difference gradient checks (f64), for the tests of every op and block.

use candle_core::{DType, Result, Tensor, Var};

/// Compares the autograd gradient of `sum(f(inputs) · r)` (r a fixed pseudo-random weighting) with
/// central differences, on up to `max_probe` elements per input. Returns the worst
/// `max|autograd − fd| / max(|fd|)` over the inputs. Inputs must be f64.
pub fn gradcheck(
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    eps: f64,
    max_probe: usize,
) -> Result<f64> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(&t.to_dtype(DType::F64)?)).collect::<Result<_>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts)?;
    let mut rng = gen_runtime::Rng::new(12345);
    let r = Tensor::from_vec(
        (0..out.elem_count()).map(|_| rng.uniform() * 2.0 - 1.0).collect::<Vec<f64>>(),
        out.shape(),
        out.device(),
    )?;
    let loss = |o: &Tensor| -> Result<f64> { (o * &r)?.sum_all()?.to_scalar::<f64>() };
    let grads = (&out * &r)?.sum_all()?.backward()?;
    let mut worst = 0f64;
    for (i, v) in vars.iter().enumerate() {
        let g = match grads.get(v.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f64>()?,
            None => candle_core::bail!("input {i} received no gradient"),
        };
        let base = inputs[i].to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let n = base.len();
        let step = (n / max_probe.max(1)).max(1);
        let (mut max_diff, mut max_ref) = (0f64, 0f64);
        for j in (0..n).step_by(step) {
            let eval = |delta: f64| -> Result<f64> {
                let mut p = base.clone();
                p[j] += delta;
                let mut args = ts.clone();
                args[i] = Tensor::from_vec(p, inputs[i].shape(), inputs[i].device())?;
                loss(&f(&args)?)
            };
            let fd = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            max_diff = max_diff.max((fd - g[j]).abs());
            max_ref = max_ref.max(fd.abs());
        }
        worst = worst.max(max_diff / max_ref.max(1e-12));
    }
    Ok(worst)
}
