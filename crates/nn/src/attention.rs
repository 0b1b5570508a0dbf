//! Scaled dot-product attention over token sequences, optionally causal, and a KV cache for decoding.
//!
//! Training (any input tracks a gradient): `softmax(q·kᵀ·scale)·v` batched, through our softmax with
//! backward. Inference: batched too while all B·H score blocks fit in 64 MB (DiT/SiT tokens, small
//! latents: one product instead of thousands of tiny ones), else one [Tq × Tk] block per (batch, head)
//! at a time, so memory is O(T²) not O(B·H·T²) for large attention maps.
//!
//! Decoding (a GPT sampler): each layer keeps a [`KvCache`]; [`KvCache::attend`] appends the new
//! tokens' keys and values and lets the new queries attend causally to everything cached.

use candle_core::{Result, Tensor};

use crate::kernels::{softmax_last_dim, softmax_last_dim_causal};

/// Which keys each query may attend to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mask {
    /// Every query sees every key (the tokenizer's spatial attention, DiT).
    #[default]
    None,
    /// Query i sees keys j ≤ i + offset, the others get weight exactly 0. `offset` is the number of
    /// keys before the first query: 0 for a whole sequence, the cached length when decoding.
    Causal { offset: usize },
}

impl Mask {
    /// The causal mask of a whole sequence (query i sees keys 0..=i).
    pub fn causal() -> Self {
        Mask::Causal { offset: 0 }
    }

    fn softmax(self, scores: &Tensor) -> Result<Tensor> {
        match self {
            Mask::None => softmax_last_dim(scores),
            Mask::Causal { offset } => softmax_last_dim_causal(scores, offset),
        }
    }
}

/// q [B, Tq, C], k, v [B, Tk, C] (B may fold heads). Returns [B, Tq, C].
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    attend_masked(q, k, v, scale, Mask::None)
}

/// [`attend`] with a mask: q [B, Tq, C], k, v [B, Tk, C]; returns [B, Tq, C].
pub fn attend_masked(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: Mask) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    // one batched product when every score block fits in 64 MB together (DiT, SiT, small images); block
    // by block otherwise, so memory stays O(T²) for the tokenizer's large attention maps
    let (b, tq, tk) = (q.dim(0)?, q.dim(1)?, k.dim(1)?);
    if q.track_op() || k.track_op() || v.track_op() || b * tq * tk <= 16 << 20 {
        let w = (q.matmul(&k.t()?)? * scale)?; // [B, Tq, Tk]
        return mask.softmax(&w)?.matmul(&v);
    }
    let outs = (0..b)
        .map(|i| {
            let (qi, ki, vi) = (q.get(i)?, k.get(i)?, v.get(i)?);
            let w = mask.softmax(&(qi.matmul(&ki.t()?)? * scale)?)?; // one [Tq, Tk] block
            w.matmul(&vi)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&outs, 0)
}

/// Multi-head attention: q [B, Tq, H·D], k, v [B, Tk, H·D] split into `heads`; returns [B, Tq, H·D].
pub fn attend_heads(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    attend_heads_masked(q, k, v, heads, scale, Mask::None)
}

/// [`attend_heads`] with a mask (the same for every head).
pub fn attend_heads_masked(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64, mask: Mask) -> Result<Tensor> {
    let (b, t, c) = q.dims3()?;
    if heads == 0 || c % heads != 0 {
        candle_core::bail!("attention: {c} channels do not split into {heads} heads");
    }
    let split = |x: &Tensor| -> Result<Tensor> {
        let tk = x.dim(1)?;
        x.reshape((b, tk, heads, c / heads))?.transpose(1, 2)?.reshape((b * heads, tk, c / heads))
    };
    let o = attend_masked(&split(q)?, &split(k)?, &split(v)?, scale, mask)?; // [B·H, Tq, D]
    o.reshape((b, heads, t, c / heads))?.transpose(1, 2)?.reshape((b, t, c))
}

/// The keys and values of the tokens decoded so far for one attention layer, kept per head
/// ([B, H, capacity, D], the layout the attention products read) in buffers that grow by doubling, so a
/// decoding step writes only its new positions instead of re-concatenating and re-splitting the whole
/// cache (which cost a batch-16 GPT step more in copies than in attention). Inference only: appending
/// writes into the buffers in place.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    kv: Option<Buffers>,
}

#[derive(Debug)]
struct Buffers {
    k: Tensor, // [B, H, capacity, D]
    v: Tensor,
    len: usize,
}

/// A deep copy: appending writes into the buffers in place, so two caches must never share them.
impl Clone for Buffers {
    fn clone(&self) -> Self {
        let copy = |t: &Tensor| t.copy().expect("copying a CPU/GPU buffer of an existing shape");
        Buffers { k: copy(&self.k), v: copy(&self.v), len: self.len }
    }
}

impl Buffers {
    /// Cached keys and values [B, H, len, D] (views of the buffers).
    fn views(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.k.narrow(2, 0, self.len)?, self.v.narrow(2, 0, self.len)?))
    }
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cached time steps.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |b| b.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached keys and values, [B, T, C] each (C holds all heads); `None` before the first append.
    pub fn get(&self) -> Option<Result<(Tensor, Tensor)>> {
        let buffers = self.kv.as_ref()?;
        let merge = |x: Tensor| -> Result<Tensor> {
            let (b, h, t, d) = x.dims4()?;
            x.transpose(1, 2)?.reshape((b, t, h * d))
        };
        Some(buffers.views().and_then(|(k, v)| Ok((merge(k)?, merge(v)?))))
    }

    /// Appends k, v [B, t, H·D] (split into `heads`) along time; returns the cached keys and values
    /// [B, H, len + t, D].
    fn append(&mut self, k: &Tensor, v: &Tensor, heads: usize) -> Result<(Tensor, Tensor)> {
        if v.dims3()? != k.dims3()? {
            candle_core::bail!("kv cache: keys {:?} and values {:?} differ in shape", k.dims(), v.dims());
        }
        let (b, t, c) = k.dims3()?;
        if heads == 0 || c % heads != 0 {
            candle_core::bail!("attention: {c} channels do not split into {heads} heads");
        }
        let d = c / heads;
        let split = |x: &Tensor| x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
        let (k, v) = (split(k)?, split(v)?);
        let len = self.len();
        let fits = match &self.kv {
            None => false,
            Some(buf) => {
                let (cb, ch, cap, cd) = buf.k.dims4()?;
                if (cb, ch, cd) != (b, heads, d) {
                    candle_core::bail!("kv cache: holds [{cb}, {len}, {}], cannot append {:?}", ch * cd, [b, t, c]);
                }
                len + t <= cap
            }
        };
        if !fits {
            // double the capacity (at least 64 steps), carrying the cached steps over once
            let cap = (2 * (len + t)).max(64);
            let grown = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, heads, cap, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            let old = self.kv.take();
            self.kv =
                Some(Buffers { k: grown(old.as_ref().map(|o| &o.k))?, v: grown(old.as_ref().map(|o| &o.v))?, len });
        }
        let buf = self.kv.as_mut().expect("allocated above");
        buf.k.slice_set(&k, 2, len)?;
        buf.v.slice_set(&v, 2, len)?;
        buf.len = len + t;
        buf.views()
    }

    /// Empties the cache (a new batch of sequences).
    pub fn reset(&mut self) {
        self.kv = None;
    }

    /// One decoding step of causal multi-head attention: q, k, v [B, t, H·D] are the t new tokens
    /// (t = 1 per sampled token, the prompt length for a prefill). Their keys and values are appended,
    /// and new token i attends to every cached token and to new tokens 0..=i. Returns [B, t, H·D].
    pub fn attend(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let offset = self.len();
        let (k, v) = self.append(k, v, heads)?; // [B, H, T, D], views with a stride over the capacity
        let (b, t, c) = q.dims3()?;
        let q = q.reshape((b, t, heads, c / heads))?.transpose(1, 2)?.contiguous()?; // [B, H, t, D]
                                                                                     // the products read the strided views as they are: no copy of the cache
        let w = (q.matmul(&k.t()?)? * scale)?; // [B, H, t, T]
        let o = Mask::Causal { offset }.softmax(&w)?.matmul(&v)?; // [B, H, t, D]
        o.transpose(1, 2)?.reshape((b, t, c))
    }
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    /// Causal attention composed from plain Candle ops: a −∞ bias on keys j > i + offset, then softmax.
    fn causal_reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, offset: usize) -> Tensor {
        let (tq, tk) = (q.dim(1).unwrap(), k.dim(1).unwrap());
        let bias: Vec<f32> =
            (0..tq).flat_map(|i| (0..tk).map(move |j| if j > i + offset { f32::NEG_INFINITY } else { 0.0 })).collect();
        let bias = Tensor::from_vec(bias, (tq, tk), q.device()).unwrap().to_dtype(q.dtype()).unwrap();
        let w = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap().broadcast_add(&bias).unwrap();
        candle_nn::ops::softmax(&w, D::Minus1).unwrap().matmul(v).unwrap()
    }

    #[test]
    fn causal_full_sequence_equals_kv_cache_decoding_token_by_token() {
        let mut r = Rng::new(12);
        let dev = Device::Cpu;
        let (b, t, heads, c) = (2, 7, 3, 12);
        let (q, k, v) = (
            r.randn((b, t, c), 1.0, &dev).unwrap(),
            r.randn((b, t, c), 1.0, &dev).unwrap(),
            r.randn((b, t, c), 1.0, &dev).unwrap(),
        );
        let full = attend_heads_masked(&q, &k, &v, heads, 0.5, Mask::causal()).unwrap();
        // token by token, then a 3-token prefill followed by single tokens
        for prefill in [1, 3] {
            let mut cache = KvCache::new();
            let mut steps = Vec::new();
            let mut pos = 0;
            while pos < t {
                let n = if pos == 0 { prefill } else { 1 };
                let s = |x: &Tensor| x.narrow(1, pos, n).unwrap();
                steps.push(cache.attend(&s(&q), &s(&k), &s(&v), heads, 0.5).unwrap());
                pos += n;
                assert_eq!(cache.len(), pos);
            }
            let decoded = Tensor::cat(&steps, 1).unwrap();
            let d = max_diff(&decoded, &full);
            assert!(d < 1e-5, "prefill {prefill}: {d}");
            cache.reset();
            assert!(cache.is_empty() && cache.get().is_none());
        }
    }

    #[test]
    fn kv_cache_returns_what_was_appended_across_growth() {
        let mut r = Rng::new(15);
        let dev = Device::Cpu;
        let (b, t, heads, c) = (2, 70, 2, 6); // past the first 64-step buffer
        let (q, k, v) = (
            r.randn((b, t, c), 1.0, &dev).unwrap(),
            r.randn((b, t, c), 1.0, &dev).unwrap(),
            r.randn((b, t, c), 1.0, &dev).unwrap(),
        );
        let mut cache = KvCache::new();
        let full = attend_heads_masked(&q, &k, &v, heads, 0.5, Mask::causal()).unwrap();
        let mut steps = Vec::new();
        for pos in 0..t {
            let s = |x: &Tensor| x.narrow(1, pos, 1).unwrap();
            steps.push(cache.attend(&s(&q), &s(&k), &s(&v), heads, 0.5).unwrap());
        }
        assert!(max_diff(&Tensor::cat(&steps, 1).unwrap(), &full) < 1e-5);
        let (ck, cv) = cache.get().unwrap().unwrap();
        assert_eq!(max_diff(&ck, &k), 0.0);
        assert_eq!(max_diff(&cv, &v), 0.0);
    }

    #[test]
    fn causal_attention_equals_masked_composition_with_and_without_offset() {
        let mut r = Rng::new(13);
        let dev = Device::Cpu;
        for (tq, tk, offset) in [(6, 6, 0), (3, 8, 5)] {
            let q = r.randn((2, tq, 4), 1.0, &dev).unwrap();
            let (k, v) = (r.randn((2, tk, 4), 1.0, &dev).unwrap(), r.randn((2, tk, 4), 1.0, &dev).unwrap());
            let want = causal_reference(&q, &k, &v, 0.7, offset);
            let infer = attend_masked(&q, &k, &v, 0.7, Mask::Causal { offset }).unwrap();
            let qv = candle_core::Var::from_tensor(&q).unwrap();
            let train = attend_masked(qv.as_tensor(), &k, &v, 0.7, Mask::Causal { offset }).unwrap();
            assert!(max_diff(&infer, &want) < 1e-5, "inference path {tq}x{tk}+{offset}");
            assert!(max_diff(&train, &want) < 1e-5, "training path {tq}x{tk}+{offset}");
        }
    }

    #[test]
    fn causal_output_ignores_future_values_exactly() {
        let mut r = Rng::new(14);
        let dev = Device::Cpu;
        let (q, k, v) = (
            r.randn((1, 5, 4), 1.0, &dev).unwrap(),
            r.randn((1, 5, 4), 1.0, &dev).unwrap(),
            r.randn((1, 5, 4), 1.0, &dev).unwrap(),
        );
        let changed =
            Tensor::cat(&[v.narrow(1, 0, 2).unwrap(), (v.narrow(1, 2, 3).unwrap() * 1e6).unwrap()], 1).unwrap();
        let a = attend_masked(&q, &k, &v, 0.5, Mask::causal()).unwrap().narrow(1, 0, 2).unwrap();
        let b = attend_masked(&q, &k, &changed, 0.5, Mask::causal()).unwrap().narrow(1, 0, 2).unwrap();
        assert_eq!(max_diff(&a, &b), 0.0, "queries 0 and 1 must not see values 2..5");
    }

    #[test]
    fn causal_training_path_gradchecks_f64() {
        let mut r = Rng::new(15);
        let dev = Device::Cpu;
        for (tq, tk, offset) in [(5, 5, 0), (3, 6, 3)] {
            let t = |r: &mut Rng, n: usize| r.randn((2, n, 4), 1.0, &dev).unwrap().to_dtype(DType::F64).unwrap();
            let inputs = [t(&mut r, tq), t(&mut r, tk), t(&mut r, tk)];
            let f = |x: &[Tensor]| attend_masked(&x[0], &x[1], &x[2], 0.5, Mask::Causal { offset });
            let err = gradcheck(&f, &inputs, 1e-6, 100).unwrap();
            assert!(err < 1e-6, "{tq}x{tk}+{offset}: {err}");
        }
    }

    #[test]
    fn kv_cache_rejects_append_of_another_batch_or_width() {
        let dev = Device::Cpu;
        let mut cache = KvCache::new();
        let kv = Tensor::zeros((2, 1, 8), DType::F32, &dev).unwrap();
        cache.append(&kv, &kv, 2).unwrap();
        let other = Tensor::zeros((3, 1, 8), DType::F32, &dev).unwrap();
        let err = cache.append(&other, &other, 2).unwrap_err().to_string();
        assert!(err.contains("cannot append [3, 1, 8]"), "{err}");
        assert_eq!(cache.len(), 1, "a rejected append leaves the cache as it was");
        let v = Tensor::zeros((2, 1, 4), DType::F32, &dev).unwrap();
        assert!(cache.append(&kv, &v, 2).is_err());
        let narrower = Tensor::zeros((2, 1, 4), DType::F32, &dev).unwrap();
        assert!(cache.append(&narrower, &narrower, 2).unwrap_err().to_string().contains("cannot append"));
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
