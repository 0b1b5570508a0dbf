//! Training images: Fashion-MNIST (gray, replicated to RGB) or a folder, preprocessed as `gen reconstruct`
//! preprocesses (shorter side to the model's resolution, centre crop, `x/127.5 − 1`), so a trained model
//! sees at inference what it saw in training. Each epoch visits the images in a fresh order drawn from
//! the run's seed and the epoch number, so `--resume` needs only (epoch, cursor).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use gen_data::fmnist::FashionMnist;
use gen_runtime::imageio::{self, RgbImage};
use gen_runtime::{Error, Result};
use rayon::prelude::*;

pub enum TrainImages {
    Fmnist(FashionMnist),
    Files(Vec<PathBuf>),
}

impl TrainImages {
    pub fn len(&self) -> usize {
        match self {
            TrainImages::Fmnist(ds) => ds.len(),
            TrainImages::Files(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn image(&self, i: usize) -> Result<RgbImage> {
        match self {
            TrainImages::Fmnist(ds) => Ok(ds.rgb(i)),
            TrainImages::Files(f) => Ok(imageio::load_rgb(&f[i])?.0),
        }
    }

    /// Images `ids` as a batch [B, 3, size, size] in [−1, 1]; an unreadable file stops training, named.
    pub fn batch(&self, ids: &[usize], size: usize, dev: &Device) -> Result<Tensor> {
        let imgs = ids
            .par_iter()
            .map(|&i| {
                let img = self.image(i)?;
                Ok(imageio::to_tensor(&imageio::preprocess(&img, size), &Device::Cpu)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&imgs, 0)?.to_device(dev)?)
    }
}

/// The order of epoch `epoch`: a permutation drawn from (seed, epoch) alone.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    gen_train::order::shuffled(n, gen_train::order::epoch_seed(seed, epoch, 0xDA7A))
}

/// The next batch of ids from (epoch, cursor), advancing them; a batch never spans two epochs (the last,
/// short part of an epoch is skipped, as `drop_last` does).
pub fn next_batch(
    n: usize,
    batch: usize,
    seed: u64,
    epoch: &mut u64,
    cursor: &mut u64,
    order: &mut Option<(u64, Vec<usize>)>,
) -> Result<Vec<usize>> {
    if n < batch {
        return Err(Error::Invalid(format!("{n} training images are fewer than one batch of {batch}")));
    }
    if *cursor as usize + batch > n {
        *epoch += 1;
        *cursor = 0;
    }
    if order.as_ref().is_none_or(|(e, _)| e != epoch) {
        *order = Some((*epoch, epoch_order(n, seed, *epoch)));
    }
    let ids = order.as_ref().map(|(_, o)| o[*cursor as usize..*cursor as usize + batch].to_vec()).unwrap_or_default();
    *cursor += batch as u64;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_walk_each_epoch_once_in_a_seeded_order() {
        let (mut epoch, mut cursor, mut order) = (0, 0, None);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(next_batch(10, 3, 7, &mut epoch, &mut cursor, &mut order).unwrap());
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 9, "one epoch: 9 distinct images in 3 batches");
        let b = next_batch(10, 3, 7, &mut epoch, &mut cursor, &mut order).unwrap();
        assert_eq!((epoch, cursor), (1, 3));
        assert_eq!(b, epoch_order(10, 7, 1)[..3]);
        assert_ne!(epoch_order(10, 7, 0), epoch_order(10, 7, 1));
        assert!(next_batch(2, 3, 7, &mut epoch, &mut cursor, &mut order).is_err());
    }
}
