//! `gen train-prior`: the official GPT training step (class prefix, pkeep corruption, cross-entropy over
//! the whole vocabulary) on pre-tokenised shards, on the shared training module (checkpointable AdamW,
//! warmup + cosine, atomic checkpoints, exact `--resume`, NaN stop). Beyond the official: class dropout
//! to a null class for classifier-free guidance, and a validation loss at every checkpoint.
//!
//! Each step splits its batch over the CPU threads (`par_batch_grads`: one slice per thread, forward and
//! backward with single-threaded BLAS, gradients summed in order).

pub mod config;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use gen_data::shards::{Manifest, Payload};
use gen_nn::{Params, Weights};
use gen_runtime::model_dir::NewModelDir;
use gen_runtime::{Error, ModelKind, Result, Rng};
use gen_train::order::{epoch_seed, shuffled};
use gen_train::{AdamW, LoopConfig, RunDir, StepOutput, Trainer};
use serde::{Deserialize, Serialize};

use crate::config::GptConfig;
use crate::loss::{shifted_inputs, Corruption};
use crate::model::Gpt;
pub use config::{EmbeddingInit, PriorConfig};

/// What a run folder's `config.toml` holds: the config file plus what the shards fixed. Its hash guards
/// `--resume` (other shards or another tokenizer are another run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub prior: PriorConfig,
    pub gpt: GptConfig,
    pub tokenizer_sha256: String,
    pub images: usize,
}

/// Token sequences and labels held in memory (60,000 Fashion-MNIST images of 64 tokens are 15 MB).
pub struct TokenSet {
    pub tokens: Vec<u32>,
    pub labels: Vec<u32>,
    pub seq_len: usize,
    pub manifest: Manifest,
}

impl TokenSet {
    /// Reads every shard of a token shard folder (each checked against the manifest), at most `limit`
    /// images.
    pub fn read(dir: &Path, limit: Option<usize>) -> Result<TokenSet> {
        let manifest = Manifest::open(dir)?;
        if manifest.vocab.is_none() {
            return Err(Error::format(
                dir.join("manifest.json"),
                "holds latents, not tokens (tokenize without --latents)",
            ));
        }
        let seq_len = manifest.seq_len();
        let (mut tokens, mut labels) = (Vec::new(), Vec::new());
        for i in 0..manifest.shards.len() {
            if limit.is_some_and(|l| labels.len() >= l) {
                break;
            }
            let s = manifest.read_shard(dir, i)?;
            let Payload::Tokens(ids) = s.payload else { unreachable!("a token manifest reads token shards") };
            tokens.extend(ids);
            labels.extend(s.labels);
        }
        if let Some(l) = limit {
            labels.truncate(l);
            tokens.truncate(l * seq_len);
        }
        Ok(TokenSet { tokens, labels, seq_len, manifest })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn row(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.seq_len..(i + 1) * self.seq_len]
    }
}

/// The official initialisation: Linear and Embedding weights N(0, 0.02), biases 0, LayerNorm 1 / 0,
/// `pos_emb` zeros.
pub fn init_tensors(c: &GptConfig, rng: &mut Rng) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (name, shape) in c.tensor_shapes() {
        let norm = name.contains(".ln") || name.starts_with("ln_f");
        let t = if name == "pos_emb" || name.ends_with(".bias") || (norm && name.ends_with("bias")) {
            Tensor::zeros(shape, DType::F32, &Device::Cpu)?
        } else if norm {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            rng.randn(shape, 0.02, &Device::Cpu)?
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// `tok_emb` rows of the image codes from the tokenizer's projected codebook [n_codes, e]: each
/// channel standardised, then a random N(0, 0.02² / e) projection to the width, so every entry has the
/// official init's scale and codes that decode alike start alike.
pub fn codebook_embedding(codebook: &Tensor, width: usize, rng: &mut Rng) -> Result<Tensor> {
    let cb = codebook.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let e = cb.dim(1)?;
    let mean = cb.mean_keepdim(0)?;
    let centred = cb.broadcast_sub(&mean)?;
    let std = (centred.sqr()?.mean_keepdim(0)? + 1e-12)?.sqrt()?;
    let z = centred.broadcast_div(&std)?;
    let r = rng.randn((e, width), 0.02 / (e as f64).sqrt(), &Device::Cpu)?;
    Ok(z.matmul(&r)?)
}

/// A prior training run.
pub struct PriorTrainer {
    pub trainer: Trainer,
    pub config: RunConfig,
    model: Gpt,
    data: TokenSet,
    val: Option<TokenSet>,
}

impl PriorTrainer {
    /// Opens a new run in `root` (or continues it with `resume`) on shards `data`; `val` are validation
    /// shards. The shards must come from one tokenizer.
    /// `codebook`: the tokenizer's projected codebook, for `embedding_init = "codebook"`.
    pub fn open(
        prior: PriorConfig,
        data: TokenSet,
        val: Option<TokenSet>,
        codebook: Option<&Tensor>,
        root: &Path,
        resume: bool,
    ) -> Result<Self> {
        let m = &data.manifest;
        if data.is_empty() {
            return Err(Error::invalid("the training shards hold no images"));
        }
        if let Some(v) = &val {
            let vm = &v.manifest;
            if vm.tokenizer_sha256 != m.tokenizer_sha256 || vm.grid != m.grid || vm.vocab != m.vocab {
                return Err(Error::invalid(
                    "the validation shards come from another tokenizer or grid than the training shards",
                ));
            }
        }
        let vocab = m.vocab.unwrap_or(0);
        let gpt = prior.gpt(vocab, &m.class_names, data.seq_len)?;
        let config =
            RunConfig { prior, gpt: gpt.clone(), tokenizer_sha256: m.tokenizer_sha256.clone(), images: data.len() };
        let dev = Device::Cpu;
        let (run, ckpt) =
            if resume { RunDir::resume(root, &config, &dev)? } else { (RunDir::create(root, &config)?, None) };
        let mut rng = Rng::new(config.prior.train.seed);
        let mut init = init_tensors(&gpt, &mut rng)?;
        if config.prior.model.embedding_init == EmbeddingInit::Codebook {
            let cb = codebook.ok_or_else(|| {
                Error::config("model.embedding_init", "\"codebook\" needs the tokenizer (--tokenizer)")
            })?;
            if cb.dim(0)? != gpt.n_codes {
                return Err(Error::invalid(format!(
                    "the tokenizer's codebook has {} rows, the shards {} codes",
                    cb.dim(0)?,
                    gpt.n_codes
                )));
            }
            let codes = codebook_embedding(cb, gpt.n_embd, &mut rng)?;
            let rest = init["tok_emb.weight"].narrow(0, gpt.n_codes, gpt.vocab() - gpt.n_codes)?;
            init.insert("tok_emb.weight".into(), Tensor::cat(&[&codes, &rest], 0)?);
        }
        let (params, tensors) = Params::from_tensors(&init, |_| true)?;
        let model = Gpt::new(Weights::new("init", tensors).var_builder(DType::F32, &dev), &gpt)?;
        let opt = AdamW::new(params.vars.clone(), config.prior.optim.adamw())?;
        let t = &config.prior.train;
        let loop_cfg =
            LoopConfig { total_steps: t.steps, log_every: t.log_every, checkpoint_every: t.checkpoint_every };
        let mut trainer = Trainer::new(run, params.vars, opt, config.prior.schedule(), loop_cfg, rng);
        if let Some(c) = ckpt {
            trainer.restore(c)?;
        }
        Ok(PriorTrainer { trainer, config, model, data, val })
    }

    fn vars(&self) -> Vec<Var> {
        self.trainer.model.iter().map(|(_, v)| v.clone()).collect()
    }

    /// Trains until `until` steps (default: all); `on_step(step)` after each (a progress bar).
    pub fn train(&mut self, until: Option<u64>, mut on_step: impl FnMut(u64, f64)) -> Result<()> {
        let t = self.config.prior.train.clone();
        let gpt = self.config.gpt.clone();
        let (n, seq) = (self.data.len(), self.data.seq_len);
        let vars = self.vars();
        let names: Vec<String> = self.trainer.model.iter().map(|(n, _)| n.clone()).collect();
        let until = until.unwrap_or(t.steps);
        let dev = Device::Cpu;
        let (model, data, val) = (&self.model, &self.data, &self.val);
        let mut order: Option<(u64, Vec<usize>)> = None;
        let checkpoint_every = t.checkpoint_every;
        self.trainer.run_until(until, |ctx| {
            // the batch: the next images of this epoch's order
            let mut ids = Vec::with_capacity(t.batch_size);
            while ids.len() < t.batch_size {
                if *ctx.cursor as usize >= n {
                    *ctx.cursor = 0;
                    *ctx.epoch += 1;
                }
                let epoch = *ctx.epoch;
                if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    order = Some((epoch, shuffled(n, epoch_seed(t.seed, epoch, 0x6E7))));
                }
                ids.push(order.as_ref().map_or(0, |(_, o)| o[*ctx.cursor as usize]));
                *ctx.cursor += 1;
            }
            let classes: Vec<u32> = ids
                .iter()
                .map(|&i| {
                    let drop = t.class_dropout > 0.0 && ctx.rng.uniform() < t.class_dropout;
                    gpt.class_token(if drop { None } else { Some(data.labels[i] as usize) })
                })
                .collect();
            let targets: Vec<u32> = ids.iter().flat_map(|&i| data.row(i).iter().copied()).collect();
            let fed = if t.pkeep < 1.0 {
                Corruption::draw(ctx.rng, targets.len(), t.pkeep, gpt.vocab()).apply(&targets)
            } else {
                targets.clone()
            };
            let inputs = shifted_inputs(&classes, &fed, &dev)?;
            let targets = Tensor::from_vec(targets, (ids.len(), seq), &dev)?;
            let x = Tensor::cat(&[&inputs, &targets], 1)?;
            let (loss, grads) = gen_nn::batch::par_batch_grads(&x, &vars, |xs, share| {
                let targets = xs.narrow(1, seq, seq)?.flatten_all()?.to_vec1::<u32>()?;
                model.loss(&xs.narrow(1, 0, seq)?, &targets, t.label_smoothing)? * share
            })?;
            let mut out = StepOutput::with_grads(loss, grads, &dev)?;
            let number = ctx.step + 1;
            if let Some(v) = val {
                if checkpoint_every > 0 && (number.is_multiple_of(checkpoint_every) || number == t.steps) {
                    // on detached weights: no gradients to compute (the update of this step comes after)
                    let weights: HashMap<String, Tensor> =
                        names.iter().zip(&vars).map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
                    let eval = Gpt::new(Weights::new("eval", weights).var_builder(DType::F32, &dev), &gpt)?;
                    out.metrics.push(("val_loss".into(), validation_loss(&eval, v, t.batch_size)?));
                }
            }
            on_step(number, loss);
            Ok(out)
        })?;
        write_plots(self.trainer.run.root())
    }

    /// The trained weights (f16 with `export_f16`).
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let dtype = if self.config.prior.train.export_f16 { DType::F16 } else { DType::F32 };
        let mut out = self
            .trainer
            .model
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(dtype)?)))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Writes the model folder `out` (config, weights, card); `tokenizer` is recorded relative to it.
    pub fn write_model(&self, out: &Path, tokenizer: Option<&Path>, card: &str) -> Result<String> {
        let mut extra = vec![("tokenizer_sha256".to_string(), self.config.tokenizer_sha256.clone())];
        if let Some(t) = tokenizer {
            extra.push(("tokenizer".to_string(), gen_runtime::model_dir::relative_path(t, out).display().to_string()));
        }
        let tensors = self.tensors()?;
        let meta = HashMap::from([("format".to_string(), "gen-gpt".to_string())]);
        NewModelDir {
            kind: ModelKind::Gpt,
            architecture: &self.config.gpt,
            extra,
            tables: vec![],
            tensors: &tensors,
            metadata: meta,
            card: card.to_string(),
        }
        .write(out)
    }
}

/// Mean cross-entropy on a validation set (no corruption, no dropout), batch by batch over the threads.
pub fn validation_loss(model: &Gpt, v: &TokenSet, batch: usize) -> Result<f64> {
    let dev = Device::Cpu;
    let c = &model.config;
    let (mut sum, mut count) = (0.0, 0usize);
    for start in (0..v.len()).step_by(batch.max(1)) {
        let ids: Vec<usize> = (start..(start + batch).min(v.len())).collect();
        let classes: Vec<u32> = ids.iter().map(|&i| c.class_token(Some(v.labels[i] as usize))).collect();
        let targets: Vec<u32> = ids.iter().flat_map(|&i| v.row(i).iter().copied()).collect();
        let inputs = shifted_inputs(&classes, &targets, &dev)?;
        let x = Tensor::cat(&[&inputs, &Tensor::from_vec(targets, (ids.len(), v.seq_len), &dev)?], 1)?;
        let parts = gen_nn::batch::par_batch(&x, |xs| {
            let targets = xs.narrow(1, v.seq_len, v.seq_len)?.flatten_all()?.to_vec1::<u32>()?;
            let l = model.loss(&xs.narrow(1, 0, v.seq_len)?, &targets, 0.0)?;
            Ok((l.to_scalar::<f32>()? as f64, xs.dim(0)?))
        })?;
        for (l, k) in parts {
            sum += l * k as f64;
            count += k;
        }
    }
    Ok(sum / count.max(1) as f64)
}

/// `loss.png` (training and validation loss) of a run folder.
pub fn write_plots(root: &Path) -> Result<()> {
    let lines = gen_train::plots::read_log(root)?;
    let s = gen_train::plots::present(&lines, &[("loss", 1.0), ("val_loss", 1.0)]);
    gen_runtime::plot::line_chart(&root.join("loss.png"), "GPT prior: cross-entropy", "step", "nats per token", &s)
}
