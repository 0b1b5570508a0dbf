//! Sampling image tokens from the GPT, batched and incremental (one KV-cached position per step).
//!
//! Each step follows the official `VQGANTransformer.sample`: the last position's logits, restricted to
//! the image codes (class tokens can never be drawn), divided by the temperature, filtered by top-k
//! (`top_k_logits`: every entry below the k-th largest becomes −∞, so ties keep more than k), softmax,
//! one multinomial draw. Beyond it: top-p (nucleus) filtering after top-k, and classifier-free guidance
//! (the conditional and null-class sequences decoded as one doubled batch, `u + s·(c − u)`, before the
//! temperature), for models trained with a null class.
//!
//! Every sequence draws from its own seeded generator (`Rng::for_item`), so a sample depends on its
//! seed and index, not on the batch it was drawn in.

use candle_core::Tensor;
use gen_runtime::{Error, Rng};
use rayon::prelude::*;

use crate::model::Gpt;

/// How each next token is chosen. A model folder may recommend its own as a `[sampling]` table in
/// `config.toml` (any of the fields), which `gen sample` uses when given no preset or flag.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// > 0; 1 leaves the logits as they are.
    pub temperature: f64,
    /// Keep the k largest logits (ties included); `None` keeps all. `Some(1)` is greedy decoding.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p, in (0, 1]; `None` keeps all.
    pub top_p: Option<f64>,
    /// Classifier-free guidance scale (needs a null class); `None` decodes the conditional model alone.
    pub cfg_scale: Option<f64>,
}

impl Default for Sampling {
    /// The official evaluation: temperature 1, top-k 100,000 (= no filter), no CFG.
    fn default() -> Self {
        Sampling { temperature: 1.0, top_k: None, top_p: None, cfg_scale: None }
    }
}

impl Sampling {
    /// Greedy decoding (the official routine with top-k 1).
    pub fn greedy() -> Self {
        Sampling { top_k: Some(1), ..Sampling::default() }
    }

    /// Checks every option (each failure names the option and its range) and that `model` can do it.
    pub fn validate(&self, model: &Gpt) -> gen_runtime::Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::invalid(format!("--temperature {} must be a number above 0", self.temperature)));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("--top-k 0 keeps no token: use 1 (greedy) or more"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid(format!("--top-p {p} must be in (0, 1]")));
            }
        }
        if let Some(s) = self.cfg_scale {
            if !s.is_finite() {
                return Err(Error::invalid(format!("--cfg-scale {s} must be a finite number")));
            }
            if !model.config.null_class {
                return Err(Error::invalid(
                    "--cfg-scale needs a model trained with a null class (class dropout); this one has none \
                     (the official GPT-LC has none either)",
                ));
            }
        }
        Ok(())
    }
}

/// `top_k_logits` of the official code: entries below the k-th largest become −∞ (ties with it stay).
pub fn top_k_filter(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted = logits.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    for l in logits.iter_mut() {
        if *l < kth {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Nucleus filtering: keeps the most likely tokens until their probability reaches `p` (at least one),
/// the rest become −∞.
pub fn top_p_filter(logits: &mut [f32], p: f64) {
    if p >= 1.0 {
        return;
    }
    let probs = softmax(logits);
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| probs[i] > 0.0).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut total = 0.0;
    let mut keep = vec![false; logits.len()];
    for &i in &order {
        keep[i] = true;
        total += probs[i];
        if total >= p {
            break;
        }
    }
    for (l, k) in logits.iter_mut().zip(keep) {
        if !k {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// softmax in f64 (−∞ entries get exactly 0).
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> =
        logits.iter().map(|&l| if l == f32::NEG_INFINITY { 0.0 } else { (l as f64 - max).exp() }).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

/// One multinomial draw from softmax(logits).
pub fn draw(logits: &[f32], rng: &mut Rng) -> usize {
    let probs = softmax(logits);
    let u = rng.uniform();
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = i;
            if u < acc {
                return i;
            }
        }
    }
    last // rounding left the total just under u: the last possible token
}

/// The next token of one sequence from its restricted logits (and its null-class logits under CFG).
fn choose(cond: &[f32], uncond: Option<&[f32]>, s: &Sampling, rng: &mut Rng) -> u32 {
    let t = s.temperature as f32;
    let mut l: Vec<f32> = match (uncond, s.cfg_scale) {
        (Some(u), Some(scale)) => {
            let scale = scale as f32;
            cond.iter().zip(u).map(|(&c, &u)| (u + scale * (c - u)) / t).collect()
        }
        _ => cond.iter().map(|&c| c / t).collect(),
    };
    if let Some(k) = s.top_k {
        top_k_filter(&mut l, k);
    }
    if let Some(p) = s.top_p {
        top_p_filter(&mut l, p);
    }
    draw(&l, rng) as u32
}

/// What to decode: one class per sequence, optional image tokens to continue, how many new tokens.
pub struct Request<'a> {
    pub classes: &'a [usize],
    /// Given image tokens per sequence (all the same length), kept at the start of the output.
    pub prefix: Option<&'a [Vec<u32>]>,
    pub steps: usize,
}

/// Decodes `steps` tokens for each class; returns per sequence the prefix followed by the new tokens.
/// `rngs` holds one generator per sequence; `on_step(i)` is called after each step (a progress bar).
pub fn generate(
    model: &Gpt,
    req: &Request,
    sampling: &Sampling,
    rngs: &mut [Rng],
    mut on_step: impl FnMut(usize),
) -> gen_runtime::Result<Vec<Vec<u32>>> {
    sampling.validate(model)?;
    let c = &model.config;
    let b = req.classes.len();
    if rngs.len() != b {
        return Err(Error::invalid(format!("{} generators for {b} sequences", rngs.len())));
    }
    if let Some(&bad) = req.classes.iter().find(|&&k| k >= c.n_classes) {
        return Err(Error::invalid(format!("class {bad} is out of range: the model has classes 0..{}", c.n_classes)));
    }
    let prefix_len = req.prefix.map_or(0, |p| p.first().map_or(0, Vec::len));
    if let Some(p) = req.prefix {
        if p.len() != b || p.iter().any(|r| r.len() != prefix_len) {
            return Err(Error::invalid("the prefix needs one row of equal length per sequence"));
        }
        if let Some(&t) = p.iter().flatten().find(|&&t| t as usize >= c.n_codes) {
            return Err(Error::invalid(format!("prefix token {t} is not an image token (0..{})", c.n_codes)));
        }
    }
    if prefix_len + req.steps > c.max_tokens() {
        return Err(Error::invalid(format!(
            "{} tokens exceed the model's {} positions after the class token",
            prefix_len + req.steps,
            c.max_tokens()
        )));
    }
    let cfg = sampling.cfg_scale.is_some();
    // the prompt: class token then prefix, and under CFG the same rows with the null class after them
    let mut prompt: Vec<u32> = Vec::new();
    let mut push_rows = |class: &dyn Fn(usize) -> u32| {
        for (i, _) in req.classes.iter().enumerate() {
            prompt.push(class(i));
            if let Some(p) = req.prefix {
                prompt.extend_from_slice(&p[i]);
            }
        }
    };
    push_rows(&|i| c.class_token(Some(req.classes[i])));
    if cfg {
        push_rows(&|_| c.class_token(None));
    }
    let rows = if cfg { 2 * b } else { b };
    let dev = model.device().clone();
    let mut out: Vec<Vec<u32>> = (0..b).map(|i| req.prefix.map_or_else(Vec::new, |p| p[i].clone())).collect();
    let mut cache = model.new_cache();
    let mut input = Tensor::from_vec(prompt, (rows, 1 + prefix_len), &dev)?;
    for step in 0..req.steps {
        let logits = model.forward_last(&input, &mut cache)?.narrow(1, 0, c.n_codes)?;
        let logits = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        // each row's filter, softmax and draw on its own generator: in parallel, the same result
        let next: Vec<u32> = rngs
            .par_iter_mut()
            .enumerate()
            .map(|(i, rng)| choose(&logits[i], cfg.then(|| logits[b + i].as_slice()), sampling, rng))
            .collect();
        for (row, &t) in out.iter_mut().zip(&next) {
            row.push(t);
        }
        let fed: Vec<u32> = if cfg { next.iter().chain(&next).copied().collect() } else { next };
        input = Tensor::from_vec(fed, (rows, 1), &dev)?;
        on_step(step);
    }
    Ok(out)
}

/// The official sampler's cost model: every step runs the network over the whole prefix (no cache).
/// Same tokens as [`generate`] (a reference and the baseline of `gen bench`); no CFG.
pub fn generate_recompute(
    model: &Gpt,
    req: &Request,
    sampling: &Sampling,
    rngs: &mut [Rng],
) -> gen_runtime::Result<Vec<Vec<u32>>> {
    sampling.validate(model)?;
    if sampling.cfg_scale.is_some() || req.prefix.is_some() {
        return Err(Error::invalid("the recompute sampler takes no prefix and no guidance"));
    }
    let c = &model.config;
    let b = req.classes.len();
    let mut seqs: Vec<Vec<u32>> = req.classes.iter().map(|&k| vec![c.class_token(Some(k))]).collect();
    for _ in 0..req.steps {
        let t = seqs[0].len();
        let ids = Tensor::from_vec(seqs.concat(), (b, t), model.device())?;
        let logits = model.forward(&ids)?.narrow(1, t - 1, 1)?.squeeze(1)?.narrow(1, 0, c.n_codes)?;
        let logits = logits.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        for (i, seq) in seqs.iter_mut().enumerate() {
            seq.push(choose(&logits[i], None, sampling, &mut rngs[i]));
        }
    }
    Ok(seqs.into_iter().map(|s| s[1..].to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small random GPT with a null class.
    fn tiny() -> Gpt {
        let c = crate::GptConfig {
            n_codes: 50,
            n_classes: 3,
            block_size: 13,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            null_class: true,
            tied_head: false,
            class_names: vec![],
        };
        let mut rng = Rng::new(4);
        let t = crate::train::init_tensors(&c, &mut rng).unwrap();
        // larger weights than the training init, so the logits are far from uniform
        let t =
            t.into_iter().map(|(k, v)| (k.clone(), if k.contains("ln") { v } else { (v * 20.0).unwrap() })).collect();
        Gpt::new(gen_nn::Weights::new("tiny", t).var_builder(candle_core::DType::F32, &candle_core::Device::Cpu), &c)
            .unwrap()
    }

    #[test]
    fn kv_cache_sampling_equals_full_recompute_sampling() {
        let model = tiny();
        let req = Request { classes: &[0, 2, 1], prefix: None, steps: 12 };
        for s in [Sampling::greedy(), Sampling { temperature: 0.8, top_k: Some(7), top_p: Some(0.9), cfg_scale: None }]
        {
            let rngs = || (0..3).map(|i| Rng::for_item(9, i)).collect::<Vec<_>>();
            let cached = generate(&model, &req, &s, &mut rngs(), |_| {}).unwrap();
            let full = generate_recompute(&model, &req, &s, &mut rngs()).unwrap();
            assert_eq!(cached, full, "{s:?}");
            assert!(cached.iter().flatten().all(|&t| t < 50), "only image tokens are drawn");
        }
    }

    #[test]
    fn a_sample_does_not_depend_on_its_batch() {
        let model = tiny();
        let s = Sampling { cfg_scale: Some(3.0), ..Sampling::default() };
        let alone = generate(
            &model,
            &Request { classes: &[2], prefix: None, steps: 12 },
            &s,
            &mut [Rng::for_item(1, 5)],
            |_| {},
        )
        .unwrap();
        let mut rngs: Vec<Rng> = [4, 5, 6].iter().map(|&i| Rng::for_item(1, i)).collect();
        let batch =
            generate(&model, &Request { classes: &[0, 2, 1], prefix: None, steps: 12 }, &s, &mut rngs, |_| {}).unwrap();
        assert_eq!(alone[0], batch[1]);
    }

    #[test]
    fn top_k_keeps_ties_with_the_kth_value() {
        let mut l = vec![1.0, 3.0, 2.0, 3.0, 0.5];
        top_k_filter(&mut l, 2);
        assert_eq!(l, vec![f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY]);
        let mut l = vec![1.0, 3.0, 2.0, 2.0, 0.5];
        top_k_filter(&mut l, 2);
        assert_eq!(l, vec![f32::NEG_INFINITY, 3.0, 2.0, 2.0, f32::NEG_INFINITY], "a tie at the k-th keeps both");
        let mut all = vec![1.0, 2.0];
        top_k_filter(&mut all, 5);
        assert_eq!(all, vec![1.0, 2.0]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities ∝ [4, 2, 1, 1] / 8
        let base: Vec<f32> = [4f32, 2., 1., 1.].iter().map(|x| x.ln()).collect();
        let mut l = base.clone();
        top_p_filter(&mut l, 0.5);
        assert!(l[0].is_finite() && l[1..].iter().all(|x| *x == f32::NEG_INFINITY));
        let mut l = base.clone();
        top_p_filter(&mut l, 0.7);
        assert!(l[0].is_finite() && l[1].is_finite() && l[2] == f32::NEG_INFINITY);
        let mut l = base.clone();
        top_p_filter(&mut l, 1.0);
        assert_eq!(l, base);
    }

    #[test]
    fn draws_follow_the_distribution_and_one_hot_is_deterministic() {
        let mut rng = Rng::new(1);
        let l: Vec<f32> = [1f32, 3.].iter().map(|x| x.ln()).collect();
        let n = 40_000;
        let ones = (0..n).filter(|_| draw(&l, &mut rng) == 1).count() as f64 / n as f64;
        assert!((ones - 0.75).abs() < 0.01, "{ones}");
        let one_hot = [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY];
        assert!((0..100).all(|_| draw(&one_hot, &mut rng) == 1));
    }
}
