//! One training step: batch shards forward and backward on their own threads, the adaptive GAN weight
//! from the batch's gradients on `conv_out.weight`, the tokenizer's and the discriminator's updates.

use candle_core::{DType, Module, Tensor, Var};
use gen_runtime::{Error, Result, Rng};
use rayon::prelude::*;

use super::TokenizerTrainer;
use crate::discriminator;
use crate::quantizer::Quantizer;

/// The numbers of one step, for the log.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    pub rec: f64,
    pub q: f64,
    pub p: Option<f64>,
    pub g: Option<f64>,
    pub d: Option<f64>,
    pub d_weight: Option<f64>,
}

impl TokenizerTrainer {
    /// One training step on images `x` [B, 3, S, S] in [−1, 1]; the weights move only when every loss
    /// is finite. Returns the step's numbers and the code ids it used.
    ///
    /// The batch is split into one shard per thread; each shard runs forward and backward on its own
    /// thread with single-threaded BLAS (no hand-offs between thread pools), its losses weighted by its
    /// share of the batch, and the shards' gradients are summed in shard order: the batch's gradient,
    /// the same bits on every run at a given thread count.
    pub fn step(&mut self, x: &Tensor, step: u64) -> Result<(StepStats, Vec<u32>)> {
        let number = step + 1;
        let gan_on = self.disc.is_some() && step > self.cfg.loss.disc_start;
        let b = x.dim(0)?;
        let parts = rayon::current_num_threads().clamp(1, b);
        let bounds: Vec<(usize, usize)> = (0..parts).map(|i| (i * b / parts, (i + 1) * b / parts)).collect();
        let seeds: Vec<u64> = bounds.iter().map(|_| self.rng.next_u64()).collect();
        let ema = matches!(self.model.quantizer, Quantizer::Ema(_));
        if let Quantizer::Ema(q) = &self.model.quantizer {
            q.lock().map_err(|_| Error::Invalid("EMA state poisoned".into()))?.updating = false;
        }
        let (rate_p, rate_q, rate_d) = (self.cfg.loss.rate_p, self.cfg.loss.rate_q, self.cfg.loss.rate_d);
        let use_p = self.lpips.is_some() && rate_p > 0.0;

        // phase 1, per shard: forward, and the reconstruction-side gradients at the reconstruction
        let this = &*self;
        let shards: Vec<Shard> = gen_nn::kernels::gemm::serial(|| {
            bounds
                .par_iter()
                .zip(&seeds)
                .map(|(&(lo, hi), &seed)| {
                    this.forward_shard(
                        &x.narrow(0, lo, hi - lo)?,
                        (hi - lo) as f64 / b as f64,
                        seed,
                        gan_on,
                        use_p,
                        ema,
                    )
                })
                .collect::<Result<Vec<_>>>()
        })?;

        // phase 2: the adaptive GAN weight from the batch's gradients on conv_out.weight
        let mut stats = StepStats::default();
        for sh in &shards {
            stats.rec += sh.rec;
            stats.q += sh.q;
            if let Some(p) = sh.p {
                *stats.p.get_or_insert(0.0) += p;
            }
            if let Some(g) = sh.g {
                *stats.g.get_or_insert(0.0) += g;
            }
        }
        let dw = if gan_on {
            let sum = |f: &dyn Fn(&Shard) -> Option<&Tensor>| -> Result<f64> {
                let mut acc: Option<Tensor> = None;
                for sh in &shards {
                    let t = f(sh).ok_or_else(|| Error::Invalid("a shard lacks its GAN gradient".into()))?;
                    acc = Some(match acc {
                        Some(a) => (a + t)?,
                        None => t.clone(),
                    });
                }
                scalar(&acc.ok_or_else(|| Error::Invalid("no shards".into()))?.sqr()?.sum_all()?.sqrt()?)
            };
            let (n_nll, n_gan) = (sum(&|s| Some(&s.w_nll))?, sum(&|s| s.w_gan.as_ref())?);
            let dw = (n_nll / (n_gan + 1e-4)).clamp(0.0, 1e4) * rate_d;
            stats.d_weight = Some(dw);
            dw
        } else {
            0.0
        };
        stats.loss = stats.rec + rate_p * stats.p.unwrap_or(0.0) + rate_q * stats.q + dw * stats.g.unwrap_or(0.0);
        if !stats.loss.is_finite() {
            let last = match self.run.latest()? {
                Some(dir) => format!("the last good checkpoint is {}", dir.display()),
                None => "no checkpoint was written yet".to_string(),
            };
            return Err(Error::Invalid(format!("step {number}: the loss is {}; training stopped, {last}", stats.loss)));
        }

        // phase 3, per shard: one backward through the tokenizer; the shards' gradients summed in order
        let grads = gen_nn::kernels::gemm::serial(|| {
            shards
                .par_iter()
                .map(|sh| {
                    let mut g = sh.g_nll.clone();
                    if let Some(gg) = &sh.g_gan {
                        g = (g + (gg * dw)?)?;
                    }
                    let total = ((&sh.xrec * g.detach())?.sum_all()? + (&sh.q_loss * (rate_q * sh.share))?)?;
                    Ok(total.backward()?)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        self.opt_ae.step(&sum_grads(grads, &self.ae)?)?;
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for sh in &shards {
            ids.extend_from_slice(&sh.ids);
            rows.extend_from_slice(&sh.z_rows);
        }
        if let Quantizer::Ema(q) = &self.model.quantizer {
            let mut q = q.lock().map_err(|_| Error::Invalid("EMA state poisoned".into()))?;
            q.apply_update(&ids, &rows);
            q.updating = true;
        }

        // the discriminator: hinge loss on real and reconstructed images, shard by shard
        if gan_on {
            let gan = self.disc.as_ref().expect("gan_on implies a discriminator");
            let d = &gan.net;
            let out = gen_nn::kernels::gemm::serial(|| {
                bounds
                    .par_iter()
                    .zip(&shards)
                    .map(|(&(lo, hi), sh)| {
                        let xs = x.narrow(0, lo, hi - lo)?;
                        let l = discriminator::hinge_d_loss(
                            &d.forward_batch_stats(&xs)?,
                            &d.forward_batch_stats(&sh.xrec.detach())?,
                        )?;
                        let l = (l * sh.share)?;
                        Ok((scalar(&l)?, l.backward()?))
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            let dl: f64 = out.iter().map(|(l, _)| l).sum();
            if !dl.is_finite() {
                return Err(Error::Invalid(format!("step {number}: the discriminator loss is {dl}; training stopped")));
            }
            let g = sum_grads(out.into_iter().map(|(_, g)| g).collect(), &gan.vars)?;
            self.disc.as_mut().expect("checked").opt.step(&g)?;
            stats.d = Some(dl);
        }
        Ok((stats, ids))
    }

    /// Phase 1 of a step on one shard (`share` of the batch): forward, losses weighted by the share, and
    /// their gradients at the reconstruction and on `conv_out.weight`.
    fn forward_shard(&self, x: &Tensor, share: f64, seed: u64, gan_on: bool, use_p: bool, ema: bool) -> Result<Shard> {
        let z = self.model.encode_latent(x)?;
        let q = self.model.quantizer.quantize(&z)?;
        let (head, xrec) =
            self.model.decoder.forward_with_head_input(&self.model.post_quant_conv.forward(&q.z_q)?, &mut |_, _| {})?;
        let leaf = Var::from_tensor(&xrec.detach())?;
        let rec = ((x - leaf.as_tensor())?.abs()?.mean_all()? * share)?;
        let p = match &self.lpips {
            Some(l) if use_p => Some(
                (if self.cfg.loss.lpips_dropout {
                    l.loss_train(x, leaf.as_tensor(), &mut Rng::new(seed))?
                } else {
                    l.loss(x, leaf.as_tensor())?
                } * share)?,
            ),
            _ => None,
        };
        let nll = match &p {
            Some(p) => (&rec + (p * self.cfg.loss.rate_p)?)?,
            None => rec.clone(),
        };
        let g_nll = grad_of(&nll, &leaf)?;
        let w = &self.model.decoder.conv_out.weight;
        let w_nll = conv_weight_grad(&head, w, &g_nll)?;
        let (g, g_gan, w_gan) = if gan_on {
            let d = &self.disc.as_ref().expect("gan_on implies a discriminator").net;
            let g = (discriminator::g_loss(&d.forward_batch_stats(leaf.as_tensor())?)? * share)?;
            let g_gan = grad_of(&g, &leaf)?;
            let w_gan = conv_weight_grad(&head, w, &g_gan)?;
            (Some(scalar(&g)?), Some(g_gan), Some(w_gan))
        } else {
            (None, None, None)
        };
        let z_rows = if ema { crate::quantizer::rows(&z)?.flatten_all()?.to_vec1::<f32>()? } else { Vec::new() };
        Ok(Shard {
            share,
            rec: scalar(&rec)?,
            q: scalar(&q.loss)? * share,
            p: p.as_ref().map(scalar).transpose()?,
            g,
            ids: q.indices.flatten_all()?.to_vec1::<u32>()?,
            z_rows,
            q_loss: q.loss,
            xrec,
            g_nll,
            g_gan,
            w_nll,
            w_gan,
        })
    }
}

/// What phase 1 of a step leaves for the rest, per shard.
struct Shard {
    share: f64,
    rec: f64,
    q: f64,
    p: Option<f64>,
    g: Option<f64>,
    ids: Vec<u32>,
    /// The shard's latents as rows, for the EMA update (empty for other quantizers).
    z_rows: Vec<f32>,
    q_loss: Tensor,
    xrec: Tensor,
    g_nll: Tensor,
    g_gan: Option<Tensor>,
    w_nll: Tensor,
    w_gan: Option<Tensor>,
}

/// The shards' gradients of `vars`, summed in shard order.
fn sum_grads(
    stores: Vec<candle_core::backprop::GradStore>,
    vars: &[(String, Var)],
) -> Result<candle_core::backprop::GradStore> {
    let vars: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    Ok(gen_nn::batch::sum_grad_stores(stores, &vars)?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// d loss / d leaf.
fn grad_of(loss: &Tensor, leaf: &Var) -> Result<Tensor> {
    let g = loss.backward()?;
    g.get(leaf.as_tensor())
        .cloned()
        .ok_or_else(|| Error::Invalid("the loss does not depend on the reconstruction".into()))
}

/// The gradient on a 3×3 `conv_out` weight `w` of the output gradient `g`, given the layer's input `head`.
fn conv_weight_grad(head: &Tensor, w: &Tensor, g: &Tensor) -> Result<Tensor> {
    let wv = Var::from_tensor(&w.detach())?;
    let y = gen_nn::kernels::conv2d(&head.detach(), wv.as_tensor(), None, 1, 1)?;
    let gw = (y * g.detach())?.sum_all()?.backward()?;
    gw.get(wv.as_tensor()).cloned().ok_or_else(|| Error::Invalid("conv_out weight has no gradient".into()))
}
