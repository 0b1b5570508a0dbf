//! Scaled dot-product attention over token sequences.
//!
//! Training (any input tracks a gradient): `softmax(q·kᵀ·scale)·v` batched, through our softmax with
//! backward. Inference: one [T × T] score block per (batch, head) at a time, so memory is O(T²) not
//! O(B·H·T²) (a 64-image batch of 16×16 latents would otherwise hold 64 blocks at once).

use candle_core::{Result, Tensor};

use crate::kernels::softmax_last_dim;

/// q, k, v: [B, T, C] (B may fold heads). Returns [B, T, C].
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    if q.track_op() || k.track_op() || v.track_op() {
        let w = (q.matmul(&k.t()?)? * scale)?; // [B, Tq, Tk]
        return softmax_last_dim(&w)?.matmul(&v);
    }
    let b = q.dim(0)?;
    let outs = (0..b)
        .map(|i| {
            let (qi, ki, vi) = (q.get(i)?, k.get(i)?, v.get(i)?);
            let w = softmax_last_dim(&(qi.matmul(&ki.t()?)? * scale)?)?; // one [Tq, Tk] block
            w.matmul(&vi)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&outs, 0)
}

/// Multi-head attention: q, k, v [B, T, H·D] split into `heads`; returns [B, T, H·D].
pub fn attend_heads(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, t, c) = q.dims3()?;
    if c % heads != 0 {
        candle_core::bail!("attention: {c} channels do not split into {heads} heads");
    }
    let split = |x: &Tensor| -> Result<Tensor> {
        let tk = x.dim(1)?;
        x.reshape((b, tk, heads, c / heads))?.transpose(1, 2)?.reshape((b * heads, tk, c / heads))
    };
    let o = attend(&split(q)?, &split(k)?, &split(v)?, scale)?; // [B·H, T, D]
    o.reshape((b, heads, t, c / heads))?.transpose(1, 2)?.reshape((b, t, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::gradcheck;
    use candle_core::{DType, Device, D};
    use gen_runtime::Rng;

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Tensor {
        let w = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        candle_nn::ops::softmax(&w, D::Minus1).unwrap().matmul(v).unwrap()
    }

    #[test]
    fn inference_path_equals_batched_reference() {
        let mut r = Rng::new(9);
        let dev = Device::Cpu;
        let (q, k, v) = (
            r.randn((3, 10, 8), 1.0, &dev).unwrap(),
            r.randn((3, 12, 8), 1.0, &dev).unwrap(),
            r.randn((3, 12, 8), 1.0, &dev).unwrap(),
        );
        let got = attend(&q, &k, &v, 0.35).unwrap();
        let want = reference(&q, &k, &v, 0.35);
        let d = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn multi_head_equals_per_head_reference() {
        let mut r = Rng::new(10);
        let dev = Device::Cpu;
        let (q, k, v) = (
            r.randn((2, 6, 12), 1.0, &dev).unwrap(),
            r.randn((2, 6, 12), 1.0, &dev).unwrap(),
            r.randn((2, 6, 12), 1.0, &dev).unwrap(),
        );
        let got = attend_heads(&q, &k, &v, 3, 0.5).unwrap();
        for h in 0..3 {
            let s = |x: &Tensor| x.narrow(2, 4 * h, 4).unwrap().contiguous().unwrap();
            let want = reference(&s(&q), &s(&k), &s(&v), 0.5);
            let d = (got.narrow(2, 4 * h, 4).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-5, "head {h}: {d}");
        }
    }

    #[test]
    fn attention_gradcheck_f64() {
        let mut r = Rng::new(11);
        let dev = Device::Cpu;
        let t = |r: &mut Rng| r.randn((2, 5, 4), 1.0, &dev).unwrap().to_dtype(DType::F64).unwrap();
        let inputs = [t(&mut r), t(&mut r), t(&mut r)];
        let f = |x: &[Tensor]| attend(&x[0], &x[1], &x[2], 0.5);
        let err = gradcheck(&f, &inputs, 1e-6, 100).unwrap();
        assert!(err < 1e-6, "{err}");
    }
}
