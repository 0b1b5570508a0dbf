//! Gradchecks and reference agreement for the row ops (softmax, causal softmax, LayerNorm), max-pooling
//! and nearest upsampling.

use candle_core::{DType, Device, Tensor, Var, D};
use gen_runtime::Rng;

use crate::gradcheck::gradcheck;
use crate::ops::upsample_nearest2x;

fn randn(r: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
    r.randn(shape, 1.0, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn softmax_gradcheck_and_matches_candle() {
    let mut r = Rng::new(1);
    let x = randn(&mut r, &[3, 4, 7], DType::F64);
    let err = gradcheck(&|t| super::softmax_last_dim(&t[0]), std::slice::from_ref(&x), 1e-6, 200).unwrap();
    assert!(err < 1e-7, "{err}");
    let x32 = randn(&mut r, &[5, 33], DType::F32);
    let d = max_diff(&super::softmax_last_dim(&x32).unwrap(), &candle_nn::ops::softmax(&x32, D::Minus1).unwrap());
    assert!(d < 1e-6, "{d}");
}

#[test]
fn causal_softmax_gradcheck_and_matches_masked_composition() {
    let mut r = Rng::new(6);
    for offset in [0, 2] {
        let x = randn(&mut r, &[2, 4, 6], DType::F64);
        let err = gradcheck(&|t| super::softmax_last_dim_causal(&t[0], offset), &[x], 1e-6, 200).unwrap();
        assert!(err < 1e-7, "offset {offset}: {err}");
        let x32 = randn(&mut r, &[3, 5, 9], DType::F32);
        let fused = super::softmax_last_dim_causal(&x32, offset).unwrap();
        let d = max_diff(&fused, &super::reference::softmax_last_dim_causal(&x32, offset).unwrap());
        assert!(d < 1e-6, "offset {offset}: {d}");
    }
}

#[test]
fn causal_softmax_gives_exactly_zero_weight_to_future_keys() {
    let mut r = Rng::new(7);
    for dtype in [DType::F32, DType::F64] {
        for offset in [0, 2] {
            let x = randn(&mut r, &[2, 4, 6], dtype);
            let fused = super::softmax_last_dim_causal(&x, offset).unwrap();
            let composed = super::reference::softmax_last_dim_causal(&x, offset).unwrap();
            for y in [fused, composed] {
                let y = y.to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
                for (i, j) in (0..4).flat_map(|i| (0..6).map(move |j| (i, j))) {
                    let w = y[1][i][j];
                    if j > i + offset {
                        assert_eq!(w, 0.0, "{dtype:?} offset {offset}: query {i} sees future key {j}");
                    } else {
                        assert!(w > 0.0, "{dtype:?} offset {offset}: query {i} misses key {j}");
                    }
                }
                let row: f64 = y[0][1].iter().sum();
                assert!((row - 1.0).abs() < 1e-6, "{row}");
            }
        }
    }
}

#[test]
fn layer_norm_gradcheck_and_matches_candle_slow_path() {
    let mut r = Rng::new(2);
    let (x, w, b) =
        (randn(&mut r, &[2, 3, 6], DType::F64), randn(&mut r, &[6], DType::F64), randn(&mut r, &[6], DType::F64));
    let err = gradcheck(&|t| super::layer_norm(&t[0], &t[1], &t[2], 1e-5), &[x, w, b], 1e-6, 200).unwrap();
    assert!(err < 1e-6, "{err}");
    let (x, w, b) =
        (randn(&mut r, &[4, 40], DType::F32), randn(&mut r, &[40], DType::F32), randn(&mut r, &[40], DType::F32));
    let d = max_diff(
        &super::layer_norm(&x, &w, &b, 1e-5).unwrap(),
        &candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-5).unwrap(),
    );
    assert!(d < 1e-5, "{d}");
}

#[test]
fn max_pool_gradcheck_k_equals_s_and_3x3_stride_2() {
    let mut r = Rng::new(3);
    for (shape, k, s, p) in [([2usize, 3, 6, 8], 2, 2, 0), ([1, 2, 7, 9], 3, 2, 0), ([1, 2, 5, 5], 3, 1, 1)] {
        let x = randn(&mut r, &shape, DType::F64);
        let err = gradcheck(&|t| super::max_pool2d(&t[0], k, s, p), &[x], 1e-6, 300).unwrap();
        assert!(err < 1e-7, "{shape:?} k{k} s{s} p{p}: {err}");
    }
}

#[test]
fn max_pool_backward_is_full_gradient_not_a_quarter() {
    // Candle's own k = s backward returns 0.25× of this
    let x = Var::from_tensor(&Tensor::arange(0f32, 16., &Device::Cpu).unwrap().reshape((1, 1, 4, 4)).unwrap()).unwrap();
    let y = super::max_pool2d(x.as_tensor(), 2, 2, 0).unwrap();
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![5., 7., 13., 15.]);
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(gx.iter().sum::<f32>(), 4.0);
    assert_eq!(gx[5], 1.0);
}

#[test]
fn max_pool_forward_matches_candle() {
    let mut r = Rng::new(4);
    let x = randn(&mut r, &[2, 3, 9, 11], DType::F32);
    let d = max_diff(&super::max_pool2d(&x, 3, 2, 0).unwrap(), &x.max_pool2d_with_stride(3, 2).unwrap());
    assert_eq!(d, 0.0);
}

#[test]
fn upsample_gradient_accumulates_when_input_has_another_consumer() {
    // Candle's upsample_nearest2d assigns instead of adding here: cat[up(x), x] got 0.54 relative error
    let mut r = Rng::new(5);
    let x = randn(&mut r, &[1, 2, 3, 4], DType::F64);
    let f = |t: &[Tensor]| {
        let up = upsample_nearest2x(&t[0])?;
        let pooled = up.reshape((1, 2, 3, 2, 4, 2))?.sum(5)?.sum(3)?; // back to 3×4
        pooled + &t[0]
    };
    let err = gradcheck(&f, &[x], 1e-6, 100).unwrap();
    assert!(err < 1e-8, "{err}");
}

/// The fused head loss against the composed one: value and both gradients, over two row blocks (70
/// rows), with and without label smoothing, in f32 and f64; and a gradcheck of the fused f64 path.
#[test]
fn linear_cross_entropy_matches_the_composition_and_gradchecks() {
    let mut r = Rng::new(21);
    let (n, c, v) = (70, 6, 37);
    let targets: Vec<u32> = (0..n).map(|_| r.below(v as u64) as u32).collect();
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
        for eps in [0.0, 0.1] {
            let h = Var::from_tensor(&randn(&mut r, &[n, c], dtype)).unwrap();
            let w = Var::from_tensor(&randn(&mut r, &[v, c], dtype)).unwrap();
            let fused = super::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &targets, eps).unwrap();
            let reference =
                super::reference::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &targets, eps).unwrap();
            assert!(max_diff(&fused, &reference) < tol, "{dtype:?} ε {eps}: loss");
            // a scaled upstream gradient reaches both inputs
            let (gf, gr) = ((fused * 3.0).unwrap().backward().unwrap(), (reference * 3.0).unwrap().backward().unwrap());
            for (name, x) in [("h", &h), ("W", &w)] {
                let d = max_diff(gf.get(x.as_tensor()).unwrap(), gr.get(x.as_tensor()).unwrap());
                assert!(d < tol, "{dtype:?} ε {eps}: ∂{name} differs by {d}");
            }
        }
    }
    let (h, w) = (randn(&mut r, &[5, 3], DType::F64), randn(&mut r, &[9, 3], DType::F64));
    let t = [0u32, 8, 3, 3, 1];
    let err = gradcheck(&|x| super::linear_cross_entropy(&x[0], &x[1], &t, 0.1), &[h, w], 1e-6, 100).unwrap();
    assert!(err < 1e-7, "{err}");
}

#[test]
fn linear_cross_entropy_rejects_targets_and_shapes_that_do_not_fit() {
    let h = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
    let e = super::linear_cross_entropy(&h, &w, &[0, 4], 0.0).unwrap_err().to_string();
    assert!(e.contains("target 4") && e.contains("4 classes"), "{e}");
    assert!(super::linear_cross_entropy(&h, &w, &[0], 0.0).is_err());
    // without a gradient to track the loss of uniform logits is ln V
    let l = super::linear_cross_entropy(&h, &w, &[0, 3], 0.0).unwrap().to_scalar::<f32>().unwrap();
    assert!((l - 4f32.ln()).abs() < 1e-6, "{l}");
}

/// A parameter's gradient must be a plain tensor: one that still tracks the forward graph keeps it
/// alive in the optimizer's moments, step after step (a GPT run grew 200 MB a step).
#[test]
fn gradients_of_the_row_ops_do_not_hold_the_forward_graph() {
    let mut r = Rng::new(31);
    let x = Var::from_tensor(&randn(&mut r, &[4, 6], DType::F32)).unwrap();
    let w = Var::from_tensor(&randn(&mut r, &[6], DType::F32)).unwrap();
    let b = Var::from_tensor(&randn(&mut r, &[6], DType::F32)).unwrap();
    let h = (x.as_tensor() * 2.0).unwrap(); // a non-leaf input, as inside a network
    let ln = super::layer_norm(&h, w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
    let sm = super::softmax_last_dim(&ln).unwrap();
    let causal = super::softmax_last_dim_causal(&sm.reshape((1, 4, 6)).unwrap(), 2).unwrap();
    let g = causal.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
        let grad = g.get(v.as_tensor()).unwrap();
        assert!(!grad.track_op(), "∂{name} tracks the forward graph");
    }
}
