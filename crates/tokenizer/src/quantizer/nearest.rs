//! The nearest-code search: `argmin_n ‖z − c_n‖² = ‖z‖² + ‖c_n‖² − 2 z·c_n`, chunked over the codebook so
//! a 100k-entry lookup of 64 images × 256 tokens stays under a fixed memory budget.

use candle_core::{DType, Result, Tensor, D};

/// Bytes of one [rows × codes] f32 distance block; a few such temporaries exist at once.
const BLOCK_BYTES: usize = 64 << 20;

/// Codebook rows per chunk for `m` latent vectors.
pub fn chunk_size(m: usize, n: usize) -> usize {
    (BLOCK_BYTES / 4 / m.max(1)).max(256).min(n.max(1))
}

/// Index of the nearest codebook row for each row of `z` [M, e], against `codebook` [N, e].
/// Ties keep the first minimum, as `torch.argmin`. Returns U32 [M].
pub fn nearest_codes(z: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let z = z.detach().to_dtype(DType::F32)?;
    let cb = codebook.detach().to_dtype(DType::F32)?;
    let (m, _) = z.dims2()?;
    let (n, _) = cb.dims2()?;
    let zsq = z.sqr()?.sum_keepdim(1)?; // [M, 1]
    let chunk = chunk_size(m, n);
    let mut best = vec![f32::INFINITY; m];
    let mut best_idx = vec![0u32; m];
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let c = cb.narrow(0, start, len)?;
        let csq = c.sqr()?.sum(1)?.unsqueeze(0)?; // [1, len]
        let d = (zsq.broadcast_add(&csq)? - (z.matmul(&c.t()?)? * 2.0)?)?; // [M, len]
        let idx = d.argmin_keepdim(D::Minus1)?; // [M, 1]
        let val = d.gather(&idx, D::Minus1)?.squeeze(1)?.to_vec1::<f32>()?;
        let idx = idx.squeeze(1)?.to_vec1::<u32>()?;
        for r in 0..m {
            if val[r] < best[r] {
                best[r] = val[r];
                best_idx[r] = idx[r] + start as u32;
            }
        }
        start += len;
    }
    Tensor::from_vec(best_idx, m, z.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn chunked_search_equals_brute_force_across_chunk_borders() {
        let mut rng = gen_runtime::Rng::new(1);
        let dev = Device::Cpu;
        let z = rng.randn((7, 3), 1.0, &dev).unwrap();
        let cb = rng.randn((1000, 3), 1.0, &dev).unwrap();
        let got = nearest_codes(&z, &cb).unwrap().to_vec1::<u32>().unwrap();
        let zv = z.to_vec2::<f32>().unwrap();
        let cv = cb.to_vec2::<f32>().unwrap();
        for (r, zr) in zv.iter().enumerate() {
            let d = |c: &Vec<f32>| zr.iter().zip(c).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
            let want = (0..cv.len()).min_by(|&a, &b| d(&cv[a]).total_cmp(&d(&cv[b]))).unwrap();
            assert_eq!(got[r] as usize, want, "row {r}");
        }
    }

    #[test]
    fn chunk_keeps_a_batch_of_64x256_tokens_under_the_budget() {
        let m = 64 * 256;
        let c = chunk_size(m, 100_000);
        assert!(m * c * 4 <= BLOCK_BYTES);
    }
}
