//! Latent shards streamed from disk: each epoch visits the shards in a shuffled order and each shard's
//! images in a shuffled order, holding at most two decoded shards in memory. The order is a pure
//! function of (seed, epoch), so a resumed run needs only its (epoch, cursor) to draw the same batches.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use gen_data::shards::{Manifest, Payload, ShardKind};
use gen_runtime::{Error, Result};
use gen_train::order::{epoch_seed, shuffled};

pub struct LatentStream {
    dir: PathBuf,
    pub manifest: Manifest,
    seed: u64,
    /// (epoch, [(shard, row)] in visiting order).
    order: Option<(u64, Vec<(usize, usize)>)>,
    /// The decoded shards: (index, latents [n, C, H, W] F32, labels).
    cache: Vec<(usize, Tensor, Vec<u32>)>,
}

impl LatentStream {
    pub fn open(dir: &Path, seed: u64) -> Result<Self> {
        let manifest = Manifest::open(dir)?;
        if manifest.kind() != ShardKind::Latents {
            return Err(Error::format(
                dir.join("manifest.json"),
                "holds tokens, not latents (tokenize with --latents)",
            ));
        }
        if manifest.is_empty() {
            return Err(Error::invalid(format!("{}: the shards hold no images", dir.display())));
        }
        Ok(LatentStream { dir: dir.to_path_buf(), manifest, seed, order: None, cache: Vec::new() })
    }

    pub fn len(&self) -> usize {
        self.manifest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.manifest.is_empty()
    }

    /// (channels, side) of the latents.
    pub fn latent(&self) -> Result<(usize, usize)> {
        let [h, w] = self.manifest.grid;
        if h != w {
            return Err(Error::invalid(format!(
                "{}: latents of {h}×{w}; the generators take square latents",
                self.dir.display()
            )));
        }
        Ok((self.manifest.channels.unwrap_or(0), h))
    }

    fn epoch_order(&mut self, epoch: u64) -> &[(usize, usize)] {
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let shards = shuffled(self.manifest.shards.len(), epoch_seed(self.seed, epoch, 0xD1F));
            let mut order = Vec::with_capacity(self.len());
            for s in shards {
                let rows = shuffled(self.manifest.shards[s].n, epoch_seed(self.seed, epoch, 0x5EED ^ s as u64));
                order.extend(rows.into_iter().map(|r| (s, r)));
            }
            self.order = Some((epoch, order));
        }
        &self.order.as_ref().expect("just set").1
    }

    fn shard(&mut self, index: usize) -> Result<&(usize, Tensor, Vec<u32>)> {
        if let Some(at) = self.cache.iter().position(|(i, _, _)| *i == index) {
            return Ok(&self.cache[at]);
        }
        let s = self.manifest.read_shard(&self.dir, index)?;
        let Payload::Latents(t) = s.payload else { unreachable!("a latent manifest reads latent shards") };
        if self.cache.len() >= 2 {
            self.cache.remove(0);
        }
        self.cache.push((index, t.to_dtype(DType::F32)?, s.labels));
        Ok(self.cache.last().expect("just pushed"))
    }

    /// The next `n` latents [n, C, H, W] and labels from (epoch, cursor), advancing both.
    pub fn next_batch(&mut self, n: usize, epoch: &mut u64, cursor: &mut u64) -> Result<(Tensor, Vec<u32>)> {
        let mut picks = Vec::with_capacity(n);
        while picks.len() < n {
            if *cursor as usize >= self.len() {
                *cursor = 0;
                *epoch += 1;
            }
            picks.push(self.epoch_order(*epoch)[*cursor as usize]);
            *cursor += 1;
        }
        let (mut rows, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (s, r) in picks {
            let (_, t, l) = self.shard(s)?;
            rows.push(t.get(r)?);
            labels.push(l[r]);
        }
        Ok((Tensor::stack(&rows, 0)?, labels))
    }
}
