//! Lookup table of token embeddings (torch `nn.Embedding`).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// torch `nn.Embedding(vocab, dim)`: ids [..] of any integer dtype → rows of `weight` [.., dim].
/// An id outside `0..vocab` is an error naming the id and the vocabulary size.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: Tensor, // [vocab, dim]
}

impl Embedding {
    /// Reads `weight` [vocab, dim] under the builder's prefix.
    pub fn new(vb: VarBuilder, vocab: usize, dim: usize) -> Result<Self> {
        Ok(Embedding { weight: vb.get((vocab, dim), "weight")? })
    }

    pub fn vocab(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Checks every id against the vocabulary; returns them as a flat I64 tensor.
    fn checked_ids(&self, ids: &Tensor) -> Result<Tensor> {
        if !ids.dtype().is_int() {
            candle_core::bail!("embedding: ids must be integers, got {:?}", ids.dtype());
        }
        let flat = ids.flatten_all()?.to_dtype(DType::I64)?;
        let vocab = self.vocab();
        let host = flat.to_vec1::<i64>()?;
        if let Some((pos, id)) = host.iter().enumerate().find(|(_, &id)| id < 0 || id as u64 >= vocab as u64) {
            candle_core::bail!("embedding: id {id} (at position {pos}) is out of range for a vocabulary of {vocab}");
        }
        Ok(flat)
    }
}

impl Module for Embedding {
    /// ids [..] → [.., dim].
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let flat = self.checked_ids(ids)?;
        let mut out = ids.dims().to_vec();
        out.push(self.weight.dim(1)?);
        self.weight.index_select(&flat, 0)?.reshape(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    fn table(dev: &Device) -> Embedding {
        // row r = [r, 10·r]
        let w: Vec<f32> = (0..5).flat_map(|r| [r as f32, 10.0 * r as f32]).collect();
        Embedding { weight: Tensor::from_vec(w, (5, 2), dev).unwrap() }
    }

    #[test]
    fn embedding_gathers_rows_for_every_integer_dtype() {
        let dev = Device::Cpu;
        let emb = table(&dev);
        let want = vec![vec![vec![4.0, 40.0], vec![0.0, 0.0]], vec![vec![2.0, 20.0], vec![4.0, 40.0]]];
        let ids = Tensor::new(&[[4u32, 0], [2, 4]], &dev).unwrap();
        for dtype in [DType::U8, DType::U32, DType::I16, DType::I32, DType::I64] {
            let y = emb.forward(&ids.to_dtype(dtype).unwrap()).unwrap();
            assert_eq!(y.to_vec3::<f32>().unwrap(), want, "{dtype:?}");
        }
    }

    #[test]
    fn embedding_rejects_id_past_vocab_naming_id_and_vocab() {
        let dev = Device::Cpu;
        let emb = table(&dev);
        let err = emb.forward(&Tensor::new(&[1u32, 5, 2], &dev).unwrap()).unwrap_err().to_string();
        assert!(err.contains("id 5 (at position 1)") && err.contains("vocabulary of 5"), "{err}");
        let err = emb.forward(&Tensor::new(&[-1i64], &dev).unwrap()).unwrap_err().to_string();
        assert!(err.contains("id -1"), "{err}");
        let err = emb.forward(&Tensor::new(&[1f32], &dev).unwrap()).unwrap_err().to_string();
        assert!(err.contains("must be integers"), "{err}");
    }

    #[test]
    fn embedding_gradient_adds_up_over_repeated_ids() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&table(&dev).weight).unwrap();
        let emb = Embedding { weight: w.as_tensor().clone() };
        let y = emb.forward(&Tensor::new(&[1u8, 3, 1], &dev).unwrap()).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gw = g.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gw, vec![vec![0.0, 0.0], vec![2.0, 2.0], vec![0.0, 0.0], vec![1.0, 1.0], vec![0.0, 0.0]]);
    }

    #[test]
    fn embedding_reads_torch_key() {
        let dev = Device::Cpu;
        let ts = HashMap::from([("tok.weight".to_string(), table(&dev).weight)]);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let emb = Embedding::new(vb.pp("tok"), 5, 2).unwrap();
        assert_eq!(emb.vocab(), 5);
        assert!(Embedding::new(vb.pp("tok"), 6, 2).is_err());
    }
}
