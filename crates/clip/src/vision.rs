//! The CLIP vision tower as VQGAN-LC's codebook recipe uses it (`codebook_generation/clip_encoder/model.py`
//! `VisionTransformer.forward` and `clip_feature_generation.py`): every token after `ln_post` and the
//! projection, the class token dropped, the 16×16 patch tokens of ViT-L/14 at 224² average-pooled 4×4 →
//! 16 vectors of 768 dims per image.
//!
//! Weights: Hugging Face's `openai/clip-vit-large-patch14` layout (`model.safetensors`, or a `.pth` state
//! dict of it): `vision_model.*` and `visual_projection.weight`; the text half is ignored. OpenAI's own
//! `ViT-L-14.pt` is a TorchScript archive, which the safe reader does not execute. The architecture
//! (width, layers, heads of 64 dims, patch size, image size, output dims) is read from the shapes.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use gen_nn::attention::Mask;
use gen_nn::{LayerNorm, Linear};
use gen_runtime::imageio::RgbImage;

use crate::layer::{count_layers, encoder_layers, EncoderLayer};

/// CLIP's normalisation (`clip._transform`), the constants as published.
#[allow(clippy::excessive_precision)]
const MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
const STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The architecture, read off the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipVisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch: usize,
    pub image_size: usize,
    pub output_dim: usize,
}

pub struct ClipVision {
    pub config: ClipVisionConfig,
    patch_embedding: Tensor,    // [width, 3, p, p], no bias
    class_embedding: Tensor,    // [width]
    position_embedding: Tensor, // [tokens, width]
    pre_ln: LayerNorm,
    blocks: Vec<EncoderLayer>,
    post_ln: LayerNorm,
    projection: Linear, // width → output_dim, no bias
}

impl ClipVisionConfig {
    /// The architecture from tensor shapes (names → shapes); errors name the key at fault.
    pub fn infer(shape: &dyn Fn(&str) -> Option<Vec<usize>>) -> gen_runtime::Result<Self> {
        let need = |k: &str| {
            shape(k).ok_or_else(|| {
                gen_runtime::Error::config(
                    k,
                    "missing: expected Hugging Face's CLIP layout (openai/clip-vit-large-patch14 model.safetensors)",
                )
            })
        };
        let patch = need("vision_model.embeddings.patch_embedding.weight")?;
        let pos = need("vision_model.embeddings.position_embedding.weight")?;
        let proj = need("visual_projection.weight")?;
        if patch.len() != 4 || patch[2] == 0 || pos.len() != 2 || proj.len() != 2 {
            return Err(gen_runtime::Error::config("vision_model.embeddings", "unexpected tensor ranks"));
        }
        let (width, p) = (patch[0], patch[2]);
        let grid = ((pos[0].saturating_sub(1)) as f64).sqrt().round() as usize;
        if grid * grid + 1 != pos[0] || width % 64 != 0 {
            return Err(gen_runtime::Error::config(
                "vision_model.embeddings.position_embedding.weight",
                format!("{} positions is not a square grid + 1, or width {width} is not a multiple of 64", pos[0]),
            ));
        }
        let layers = count_layers(shape, "vision_model");
        Ok(ClipVisionConfig { width, layers, heads: width / 64, patch: p, image_size: grid * p, output_dim: proj[0] })
    }
}

impl ClipVision {
    pub fn new(vb: VarBuilder, config: ClipVisionConfig) -> Result<Self> {
        let (w, p) = (config.width, config.patch);
        let tokens = (config.image_size / p).pow(2) + 1;
        let vm = vb.pp("vision_model");
        let emb = vm.pp("embeddings");
        let blocks = encoder_layers(vm.clone(), w, config.layers)?;
        Ok(ClipVision {
            patch_embedding: emb.get((w, 3, p, p), "patch_embedding.weight")?,
            class_embedding: emb.get(w, "class_embedding")?,
            position_embedding: emb.get((tokens, w), "position_embedding.weight")?,
            pre_ln: LayerNorm::new(vm.pp("pre_layrnorm"), w, 1e-5)?,
            blocks,
            post_ln: LayerNorm::new(vm.pp("post_layernorm"), w, 1e-5)?,
            projection: Linear::new_no_bias(vb.pp("visual_projection"), w, config.output_dim)?,
            config,
        })
    }

    /// Every token after `ln_post` and the projection, the class token dropped: [B, grid², output_dim].
    pub fn patch_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let b = x.dim(0)?;
        let h = gen_nn::kernels::conv2d(x, &self.patch_embedding, None, c.patch, 0)?; // [B, W, g, g]
        let h = h.flatten_from(2)?.transpose(1, 2)?; // [B, g², W]
        let cls = self.class_embedding.reshape((1, 1, c.width))?.broadcast_as((b, 1, c.width))?;
        let mut h = Tensor::cat(&[&cls.contiguous()?, &h.contiguous()?], 1)?.broadcast_add(&self.position_embedding)?;
        h = self.pre_ln.forward(&h)?;
        for blk in &self.blocks {
            h = blk.forward(&h, c.heads, Mask::None)?;
        }
        let h = self.projection.forward(&self.post_ln.forward(&h)?)?;
        h.narrow(1, 1, h.dim(1)? - 1)
    }

    /// The codebook features: patch tokens on their grid, average-pooled by `pool` (official 4), as rows
    /// [B · (g/pool)², output_dim] in (image, y, x) order.
    pub fn pooled_features(&self, x: &Tensor, pool: usize) -> Result<Tensor> {
        let t = self.patch_tokens(x)?; // [B, g², D]
        let (b, n, d) = t.dims3()?;
        let g = (n as f64).sqrt() as usize;
        let map = t.transpose(1, 2)?.reshape((b, d, g, g))?;
        let map = if pool > 1 { map.avg_pool2d(pool)? } else { map };
        let (gh, gw) = (map.dim(2)?, map.dim(3)?);
        map.permute((0, 2, 3, 1))?.reshape((b * gh * gw, d))
    }
}

/// Loads the vision half of a CLIP checkpoint (safetensors or a `.pth` state dict).
pub fn load_clip_vision(path: &Path, dev: &Device) -> gen_runtime::Result<ClipVision> {
    let tensors = crate::read_weights(path)?;
    let config = ClipVisionConfig::infer(&|k| tensors.get(k).map(|t| t.dims().to_vec())).map_err(|e| e.at(path))?;
    let w = gen_nn::Weights::new(path.display().to_string(), tensors);
    Ok(ClipVision::new(w.var_builder(DType::F32, dev), config)?)
}

/// The official preprocessing (`clip._transform(224)`): shorter side to the model's size with PIL
/// bicubic (antialiased; rounded to 8 bits as a PIL RGB image is), centre crop, `/255`, CLIP mean/std.
/// CHW floats.
pub fn clip_input(img: &RgbImage, size: usize) -> Vec<f32> {
    let (w, h) = (img.width, img.height);
    let (nw, nh) = if w <= h { (size, (size * h) / w) } else { ((size * w) / h, size) };
    let resized = gen_eval::preprocess::pil_bicubic_resize(img, nw, nh);
    let (top, left) = (((nh - size) as f64 / 2.0).round() as usize, ((nw - size) as f64 / 2.0).round() as usize);
    let mut out = vec![0f32; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let v = resized[((top + y) * nw + left + x) * 3 + c].round() / 255.0;
                out[c * size * size + y * size + x] = (v - MEAN[c]) / STD[c];
            }
        }
    }
    out
}

/// Images as a CLIP input batch [B, 3, size, size].
pub fn clip_batch(images: &[RgbImage], size: usize, dev: &Device) -> Result<Tensor> {
    let flat: Vec<f32> = images.iter().flat_map(|im| clip_input(im, size)).collect();
    Tensor::from_vec(flat, (images.len(), 3, size, size), dev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gen_runtime::Rng;
    use std::collections::HashMap;

    /// A tiny CLIP in Hugging Face's layout: width 64, 2 layers, patch 4, 16² images, output 8.
    fn tiny() -> HashMap<String, Tensor> {
        let mut rng = Rng::new(0);
        let dev = &Device::Cpu;
        let mut t = HashMap::new();
        let mut put = |k: &str, shape: &[usize], std: f64| {
            t.insert(k.to_string(), rng.randn(shape, std, dev).unwrap());
        };
        put("vision_model.embeddings.patch_embedding.weight", &[64, 3, 4, 4], 0.1);
        put("vision_model.embeddings.class_embedding", &[64], 0.1);
        put("vision_model.embeddings.position_embedding.weight", &[17, 64], 0.1);
        for n in ["pre_layrnorm", "post_layernorm"] {
            put(&format!("vision_model.{n}.weight"), &[64], 0.1);
            put(&format!("vision_model.{n}.bias"), &[64], 0.1);
        }
        for i in 0..2 {
            let l = format!("vision_model.encoder.layers.{i}");
            for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                put(&format!("{l}.self_attn.{p}.weight"), &[64, 64], 0.1);
                put(&format!("{l}.self_attn.{p}.bias"), &[64], 0.1);
            }
            for n in ["layer_norm1", "layer_norm2"] {
                put(&format!("{l}.{n}.weight"), &[64], 0.1);
                put(&format!("{l}.{n}.bias"), &[64], 0.1);
            }
            put(&format!("{l}.mlp.fc1.weight"), &[256, 64], 0.1);
            put(&format!("{l}.mlp.fc1.bias"), &[256], 0.1);
            put(&format!("{l}.mlp.fc2.weight"), &[64, 256], 0.1);
            put(&format!("{l}.mlp.fc2.bias"), &[64], 0.1);
        }
        put("visual_projection.weight", &[8, 64], 0.1);
        put("text_model.embeddings.token_embedding.weight", &[10, 4], 0.1); // ignored
        t
    }

    #[test]
    fn the_architecture_is_read_off_the_weights_and_features_are_pooled_patch_tokens() {
        let dir = std::env::temp_dir().join(format!("gen-clip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clip.safetensors");
        let tensors: Vec<(String, Tensor)> = tiny().into_iter().collect();
        gen_runtime::io::save_safetensors(&path, &tensors, None).unwrap();
        let m = load_clip_vision(&path, &Device::Cpu).unwrap();
        let want = ClipVisionConfig { width: 64, layers: 2, heads: 1, patch: 4, image_size: 16, output_dim: 8 };
        assert_eq!(m.config, want);
        let x = Rng::new(1).randn((2, 3, 16, 16), 1.0, &Device::Cpu).unwrap();
        let tokens = m.patch_tokens(&x).unwrap();
        assert_eq!(tokens.dims(), [2, 16, 8], "4×4 patch tokens, the class token dropped");
        // pooling 2×2 gives 4 vectors per image, each the mean of its 2×2 block of tokens
        let pooled = m.pooled_features(&x, 2).unwrap();
        assert_eq!(pooled.dims(), [8, 8]);
        let tok = tokens.to_vec3::<f32>().unwrap();
        let p = pooled.to_vec2::<f32>().unwrap();
        for d in 0..8 {
            let mean = (tok[0][0][d] + tok[0][1][d] + tok[0][4][d] + tok[0][5][d]) / 4.0;
            assert!((p[0][d] - mean).abs() < 1e-5);
        }
        // each image's tokens depend on that image only
        let one = m.patch_tokens(&x.narrow(0, 1, 1).unwrap()).unwrap().to_vec3::<f32>().unwrap();
        for (a, b) in one[0].iter().flatten().zip(tok[1].iter().flatten()) {
            assert!((a - b).abs() < 1e-5);
        }
        // a missing tensor is named
        let mut t = tiny();
        t.remove("vision_model.encoder.layers.1.mlp.fc2.bias");
        let bad = dir.join("bad.safetensors");
        gen_runtime::io::save_safetensors(&bad, &t.into_iter().collect::<Vec<_>>(), None).unwrap();
        let e = load_clip_vision(&bad, &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("layers.1.mlp.fc2.bias"), "{e}");
        let e = load_clip_vision(&dir.join("none.safetensors"), &Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("openai/clip-vit-large-patch14"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn preprocessing_crops_the_centre_and_normalises() {
        // a 40×20 image: shorter side 20 → 16, longer 40 → 32, centre crop 16×16
        let mut data = Vec::new();
        for _y in 0..20 {
            for x in 0..40 {
                let v = if (10..30).contains(&x) { 255 } else { 0 };
                data.extend_from_slice(&[v, v, v]);
            }
        }
        let out = clip_input(&RgbImage::new(40, 20, data), 16);
        assert_eq!(out.len(), 3 * 16 * 16);
        // the centre 16 columns of the 32-wide resize are inside the white band, up to the filter's edge
        let white = (1.0 - MEAN[0]) / STD[0];
        assert!((out[8 * 16 + 8] - white).abs() < 1e-5);
    }
}
