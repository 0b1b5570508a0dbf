//! `VQModel` of VQGAN-LC: encoder → quant_conv → LC quantizer → post_quant_conv → decoder.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::Conv2d;

use crate::config::{QuantizerKind, VqConfig};
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::quantizer::{EmaQuantizer, EmaStart, LcQuantizer, LearnedQuantizer, Quantized, Quantizer};

pub struct VqModel {
    pub config: VqConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Conv2d,
    pub post_quant_conv: Conv2d,
    pub quantizer: Quantizer,
}

impl VqModel {
    /// Builds from official state-dict keys. An EMA quantizer is built frozen (`updating` off); its
    /// moving averages come from `cluster_size` / `embed_avg` when stored, else start consistent.
    pub fn new(vb: VarBuilder, config: &VqConfig) -> Result<Self> {
        config.validate().map_err(gen_runtime::Error::into_candle)?;
        let quantizer = match config.quantizer {
            QuantizerKind::Lc | QuantizerKind::Simvq => Quantizer::Lc(LcQuantizer::new(vb.clone(), config)?),
            QuantizerKind::Vqgan => Quantizer::Learned(LearnedQuantizer::new(vb.clone(), config, false)?),
            QuantizerKind::Fc => Quantizer::Learned(LearnedQuantizer::new(vb.clone(), config, true)?),
            QuantizerKind::Ema => {
                let (n, e) = (config.codebook_size, config.embed_dim);
                let embedding = vb.get((n, e), "tok_embeddings.weight")?;
                let mut q = if vb.contains_tensor("cluster_size") {
                    EmaQuantizer::from_state(&embedding, &vb.get(n, "cluster_size")?, &vb.get((n, e), "embed_avg")?)?
                } else {
                    EmaQuantizer::start(&embedding, EmaStart::Consistent)?
                };
                q.updating = false;
                Quantizer::Ema(std::sync::Mutex::new(q))
            }
        };
        Ok(VqModel {
            config: config.clone(),
            encoder: Encoder::new(vb.pp("encoder"), config)?,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            quant_conv: Conv2d::new(vb.pp("quant_conv"), config.z_channels, config.embed_dim, 1, 1, 0)?,
            post_quant_conv: Conv2d::new(vb.pp("post_quant_conv"), config.embed_dim, config.z_channels, 1, 1, 0)?,
            quantizer,
        })
    }

    /// The continuous latent `quant_conv(encoder(x))` [B, e, h, w]: what DiT/SiT/LDM train on.
    /// Official quirk: with `embed_dim == 768` the latent is L2-normalised over channels.
    pub fn encode_latent(&self, x: &Tensor) -> Result<Tensor> {
        let z = self.quant_conv.forward(&self.encoder.forward(x)?)?;
        if self.config.embed_dim == 768 {
            return z.broadcast_div(&z.sqr()?.sum_keepdim(1)?.sqrt()?);
        }
        Ok(z)
    }

    /// `encode`: latent, then quantise.
    pub fn encode(&self, x: &Tensor) -> Result<Quantized> {
        self.quantizer.quantize(&self.encode_latent(x)?)
    }

    /// `decode(z_q) = decoder(post_quant_conv(z_q))`; the output is not clamped.
    pub fn decode(&self, z_q: &Tensor) -> Result<Tensor> {
        self.decoder.forward(&self.post_quant_conv.forward(z_q)?)
    }

    /// Ids [B, h·w] → images, as the official `z_to_image`. The grid is square unless given.
    pub fn decode_indices(&self, indices: &Tensor, grid: Option<(usize, usize)>) -> Result<Tensor> {
        let l = indices.dim(1)?;
        let (h, w) = match grid {
            Some(g) => g,
            None => {
                let s = (l as f64).sqrt().round() as usize;
                if s * s != l {
                    candle_core::bail!("{l} tokens per image is not a square grid; give the grid explicitly");
                }
                (s, s)
            }
        };
        self.decode(&self.quantizer.embed(indices, h, w)?)
    }

    /// A continuous latent [B, e, h, w] (a DiT / SiT / LDM sample) → images and code ids, as the official
    /// `vae.decode`: each position snapped to its nearest projected code, then decoded.
    pub fn decode_latent(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let q = self.quantizer.quantize(z)?;
        Ok((self.decode(&q.z_q)?, q.indices))
    }

    /// Encode then decode (images in [−1, 1] → reconstructions, unclamped) and the token ids.
    pub fn reconstruct(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let q = self.encode(x)?;
        Ok((self.decode(&q.z_q)?, q.indices))
    }
}
