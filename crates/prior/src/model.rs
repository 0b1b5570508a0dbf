//! GPT-LC: the official minGPT (`vqgan-gpt-lc/models/mingpt.py`, `GPT`), key for key.
//!
//! `x = tok_emb(idx) + pos_emb[:, :T]`, `n_layer` pre-LN blocks (`x + attn(ln1(x))`, `x + mlp(ln2(x))`),
//! `ln_f`, a bias-free head over the whole vocabulary. Attention has separate `key` / `query` / `value`
//! Linear layers with biases and a causal mask; the MLP is Linear(C, 4C) → exact-erf GELU → Linear(4C, C).
//! Dropout is 0 in the official model and absent here. Decoding runs the same blocks incrementally over a
//! per-layer [`KvCache`], so each new token costs one position's work.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use gen_nn::kernels::{gelu, Gelu};
use gen_nn::{Embedding, KvCache, LayerNorm, Linear, Mask};

use crate::config::GptConfig;

/// minGPT's `nn.LayerNorm(C)` eps.
const LN_EPS: f64 = 1e-5;

/// `mingpt.CausalSelfAttention`: keys `key`, `query`, `value`, `proj` (the `mask` buffer is not read).
#[derive(Clone, Debug)]
pub struct CausalSelfAttention {
    key: Linear,
    query: Linear,
    value: Linear,
    proj: Linear,
    n_head: usize,
}

impl CausalSelfAttention {
    fn new(vb: VarBuilder, c: &GptConfig) -> Result<Self> {
        let n = c.n_embd;
        Ok(CausalSelfAttention {
            key: Linear::new(vb.pp("key"), n, n)?,
            query: Linear::new(vb.pp("query"), n, n)?,
            value: Linear::new(vb.pp("value"), n, n)?,
            proj: Linear::new(vb.pp("proj"), n, n)?,
            n_head: c.n_head,
        })
    }

    /// x [B, T, C]; with a cache, x holds the new positions and attends to the cached ones too.
    fn forward(&self, x: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (q, k, v) = (self.query.forward(x)?, self.key.forward(x)?, self.value.forward(x)?);
        let scale = 1.0 / ((x.dim(D::Minus1)? / self.n_head) as f64).sqrt();
        let y = match cache {
            Some(cache) => cache.attend(&q, &k, &v, self.n_head, scale)?,
            None => gen_nn::attention::attend_heads_masked(&q, &k, &v, self.n_head, scale, Mask::causal())?,
        };
        self.proj.forward(&y)
    }
}

/// `mingpt.Block`: `ln1`, `attn`, `ln2`, `mlp.0` / `mlp.2` (`mlp.1` is the GELU, `mlp.3` a Dropout).
#[derive(Clone, Debug)]
pub struct Block {
    ln1: LayerNorm,
    attn: CausalSelfAttention,
    ln2: LayerNorm,
    fc: Linear,
    out: Linear,
}

impl Block {
    fn new(vb: VarBuilder, c: &GptConfig) -> Result<Self> {
        let n = c.n_embd;
        Ok(Block {
            ln1: LayerNorm::new(vb.pp("ln1"), n, LN_EPS)?,
            attn: CausalSelfAttention::new(vb.pp("attn"), c)?,
            ln2: LayerNorm::new(vb.pp("ln2"), n, LN_EPS)?,
            fc: Linear::new(vb.pp("mlp.0"), n, 4 * n)?,
            out: Linear::new(vb.pp("mlp.2"), 4 * n, n)?,
        })
    }

    fn forward(&self, x: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln1.forward(x)?, cache)?)?;
        let h = gelu(&self.fc.forward(&self.ln2.forward(&x)?)?, Gelu::Erf)?;
        x + self.out.forward(&h)?
    }
}

/// The whole network: `tok_emb`, `pos_emb`, `blocks.{i}`, `ln_f`, `head`.
#[derive(Clone, Debug)]
pub struct Gpt {
    pub config: GptConfig,
    tok_emb: Embedding,
    pos_emb: Tensor, // [1, block_size, C]
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Linear,
}

/// One [`KvCache`] per block: the decoding state of a batch of sequences.
#[derive(Clone, Debug, Default)]
pub struct GptCache {
    layers: Vec<KvCache>,
}

impl GptCache {
    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gpt {
    /// Builds the model from official key names (the checked config gives every shape).
    pub fn new(vb: VarBuilder, config: &GptConfig) -> Result<Self> {
        config.validate().map_err(|e| e.into_candle())?;
        let (v, n) = (config.vocab(), config.n_embd);
        let tok_emb = Embedding::new(vb.pp("tok_emb"), v, n)?;
        let pos_emb = vb.get((1, config.block_size, n), "pos_emb")?;
        let blocks =
            (0..config.n_layer).map(|i| Block::new(vb.pp(format!("blocks.{i}")), config)).collect::<Result<_>>()?;
        let ln_f = LayerNorm::new(vb.pp("ln_f"), n, LN_EPS)?;
        let head = if config.tied_head {
            Linear { weight: tok_emb.weight.clone(), bias: None }
        } else {
            Linear::new_no_bias(vb.pp("head"), n, v)?
        };
        Ok(Gpt { config: config.clone(), tok_emb, pos_emb, blocks, ln_f, head })
    }

    /// A fresh decoding state.
    pub fn new_cache(&self) -> GptCache {
        GptCache { layers: vec![KvCache::new(); self.blocks.len()] }
    }

    /// Embedded tokens at positions `offset..offset + T`: idx [B, T] → [B, T, C].
    fn embed(&self, idx: &Tensor, offset: usize) -> Result<Tensor> {
        let t = idx.dim(1)?;
        if offset + t > self.config.block_size {
            candle_core::bail!(
                "gpt: {} positions exceed the model's block size {} (at most {} image tokens after the class)",
                offset + t,
                self.config.block_size,
                self.config.max_tokens()
            );
        }
        self.tok_emb.forward(idx)?.broadcast_add(&self.pos_emb.narrow(1, offset, t)?)
    }

    /// The final hidden states `ln_f(blocks(…))`, [B, T, C], causal.
    fn hidden(&self, idx: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(idx, 0)?;
        for b in &self.blocks {
            x = b.forward(&x, None)?;
        }
        self.ln_f.forward(&x)
    }

    /// `GPT.forward`: idx [B, T] (any integer dtype) → logits [B, T, V] over the whole vocabulary, causal.
    pub fn forward(&self, idx: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.hidden(idx)?)
    }

    /// The training loss: mean cross-entropy over the whole vocabulary of position t's logits against
    /// `targets[t]` ([B·T] ids, row-major), label-smoothed by `smoothing`; equal to
    /// `loss::cross_entropy(forward(idx), targets)` without materialising the [B, T, V] logits.
    pub fn loss(&self, idx: &Tensor, targets: &[u32], smoothing: f64) -> Result<Tensor> {
        let h = self.hidden(idx)?;
        let c = h.dim(D::Minus1)?;
        gen_nn::kernels::linear_cross_entropy(&h.reshape(((), c))?, &self.head.weight, targets, smoothing)
    }

    /// Incremental decoding: idx [B, t] are the next t positions of the sequences in `cache` (the prompt
    /// at the first call, then one token per call). Returns the logits of the last position, [B, V].
    pub fn forward_last(&self, idx: &Tensor, cache: &mut GptCache) -> Result<Tensor> {
        if cache.layers.len() != self.blocks.len() {
            candle_core::bail!("gpt: a cache of {} layers for a model of {}", cache.layers.len(), self.blocks.len());
        }
        let t = idx.dim(1)?;
        let mut x = self.embed(idx, cache.len())?;
        if x.device().is_cpu() && x.dtype() != DType::F32 {
            // half-precision weights, f32 activations: the weights stream at half the bytes while the
            // row ops (LayerNorm, GELU, softmax) run on their fused f32 kernels, not Candle's half ones
            x = x.to_dtype(DType::F32)?;
        }
        for (b, c) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = b.forward(&x, Some(c))?;
        }
        // only the last position's logits are needed: the 100k-row head runs once per sequence
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        self.head.forward(&self.ln_f.forward(&last)?)
    }
}

impl Gpt {
    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.pos_emb.device()
    }
}
