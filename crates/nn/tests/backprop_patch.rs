//! The rules of Candle's backward that `vendor/candle-core` changed (the first gradient reaching a
//! node is stored rather than added into zeros; `vendor/candle-core/GEN-PATCH.md`), checked against
//! finite differences and closed forms: one consumer, fan-in, the subtracting rules, broadcasts.

use candle_core::{DType, Device, Result, Tensor, Var, D};
use gen_nn::gradcheck::gradcheck;
use gen_runtime::Rng;

type UnaryRule = fn(&Tensor) -> Result<Tensor>;

fn input(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn assert_gradcheck(name: &str, f: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    let worst = gradcheck(f, inputs, 1e-6, 64).unwrap();
    assert!(worst < 1e-6, "{name}: analytic and numeric gradients differ by {worst:e} (relative)");
}

#[test]
fn the_subtracting_rules_with_one_consumer_each() {
    // each input reaches the loss through one rule only: the stored (negated) first gradient is all of it
    let x = input(&[3, 5], 1, 0.5, 2.0);
    let unary: [(&str, UnaryRule); 4] =
        [("neg", Tensor::neg), ("recip", Tensor::recip), ("tanh", Tensor::tanh), ("cos", Tensor::cos)];
    for (name, op) in unary {
        assert_gradcheck(name, &|t| op(&t[0]), std::slice::from_ref(&x));
    }
    let y = input(&[3, 5], 2, 0.5, 2.0);
    assert_gradcheck("sub", &|t| t[0].sub(&t[1]), &[x.clone(), y.clone()]);
    assert_gradcheck("div", &|t| t[0].div(&t[1]), &[x, y]);
}

#[test]
fn fan_in_sums_every_path() {
    // x feeds seven rules, adding and subtracting ones among them, in both orders
    let x = input(&[4, 3], 3, 0.5, 2.0);
    let f = |t: &[Tensor]| -> Result<Tensor> {
        let x = &t[0];
        let a = (x.sqr()? - x.tanh()?)?;
        let b = (x.recip()?.neg()? + x.cos()?)?;
        let c = (x.exp()? / x)?;
        (a + b)? - c
    };
    assert_gradcheck("fan-in", &f, &[x]);

    // the closed form: d/dx (x·x − x + 3x) = 2x + 2
    let v = Var::from_tensor(&input(&[6], 4, -1.0, 1.0)).unwrap();
    let x = v.as_tensor();
    let loss = ((x * x).unwrap() - x).unwrap().add(&(x * 3.0).unwrap()).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let want = ((x * 2.0).unwrap() + 2.0).unwrap();
    let diff = (g.get(x).unwrap() - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    assert!(diff < 1e-12, "d/dx (x² − x + 3x) off by {diff:e}");
}

#[test]
fn broadcasts_and_reductions_sum_back() {
    let x = input(&[2, 3, 4], 5, -1.0, 1.0);
    let b = input(&[1, 3, 1], 6, -1.0, 1.0);
    // b is broadcast twice and also used whole: three gradients into one broadcast argument
    let f = |t: &[Tensor]| -> Result<Tensor> {
        let (x, b) = (&t[0], &t[1]);
        let y = x.broadcast_mul(b)?.broadcast_add(b)?;
        y.broadcast_sub(&b.sqr()?)?.max_keepdim(D::Minus1)?.broadcast_add(&y.sum_keepdim(1)?)
    };
    assert_gradcheck("broadcast", &f, &[x, b]);
}

#[test]
fn upsampling_accumulates_with_its_other_consumers() {
    // upstream assigned the upsample's gradient, dropping what x had received from `x²` before it
    let x = input(&[1, 2, 3, 3], 7, -1.0, 1.0);
    let f = |t: &[Tensor]| -> Result<Tensor> {
        let x = &t[0];
        let up = x.upsample_nearest2d(6, 6)?.flatten_all()?;
        Tensor::cat(&[x.sqr()?.flatten_all()?, up, x.sin()?.flatten_all()?], 0)
    };
    assert_gradcheck("upsample fan-in", &f, &[x]);
}

#[test]
fn stored_gradients_are_contiguous_and_in_the_inputs_dtype() {
    // a single consumer that hands back a strided view (a transpose) still leaves a contiguous gradient
    let v = Var::from_tensor(&input(&[3, 4], 8, -1.0, 1.0).to_dtype(DType::F32).unwrap()).unwrap();
    let w = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((4, 3)).unwrap();
    let loss = v.as_tensor().t().unwrap().mul(&w).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    let g = g.get(v.as_tensor()).unwrap();
    assert!(g.is_contiguous(), "the gradient of a transposed input is stored strided");
    assert_eq!(g.dtype(), DType::F32);
    let want = w.t().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(g.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
}
