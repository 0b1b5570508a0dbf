//! The nearest-code search: `argmin_n ‖z − c_n‖² = ‖z‖² + ‖c_n‖² − 2 z·c_n`, blocked over the latent rows
//! and the codebook so that any lookup (a 100k-entry codebook, any number of tokens) holds one distance
//! block of at most `BLOCK_BYTES` at a time.

use candle_core::{DType, Result, Tensor, D};

/// Bytes of one [rows × codes] f32 distance block; a few such temporaries exist at once.
const BLOCK_BYTES: usize = 64 << 20;
/// Codebook rows per chunk never go below this (smaller GEMMs waste time); rows are split instead.
const MIN_CHUNK: usize = 256;

/// How a search over `m` latent rows and `n` codes is blocked: (latent rows per block, codes per chunk).
/// Every block is at most `BLOCK_BYTES` of f32 distances.
pub fn plan(m: usize, n: usize) -> (usize, usize) {
    let chunk = (BLOCK_BYTES / 4 / m.max(1)).max(MIN_CHUNK).min(n.max(1));
    let rows = (BLOCK_BYTES / 4 / chunk).clamp(1, m.max(1));
    (rows, chunk)
}

/// Index of the nearest codebook row for each row of `z` [M, e], against `codebook` [N, e].
/// Ties keep the first minimum, as `torch.argmin`. Returns U32 [M].
pub fn nearest_codes(z: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() && codebook.device().is_cpu() {
        return nearest_codes_fused(z, codebook);
    }
    let (m, n) = (z.dim(0)?, codebook.dim(0)?);
    let (rows, chunk) = plan(m, n);
    nearest_codes_blocked(z, codebook, rows, chunk)
}

/// The CPU search: GEMM blocks and the argmin fused in one pass (k-means' assignment step), with no
/// distance tensor materialised. ‖z‖² does not change the argmin and is left out.
fn nearest_codes_fused(z: &Tensor, codebook: &Tensor) -> Result<Tensor> {
    let e = z.dim(1)?;
    if codebook.dim(1)? != e {
        candle_core::bail!("nearest codes: latent rows have {e} values, codebook rows {}", codebook.dim(1)?);
    }
    let flat = |t: &Tensor| t.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
    let (labels, _) = crate::codebook::kmeans::assign(&flat(z)?, e, &flat(codebook)?);
    Tensor::from_vec(labels, z.dim(0)?, z.device())
}

/// `nearest_codes` with explicit block sizes (tests cross every border with small ones).
fn nearest_codes_blocked(z: &Tensor, codebook: &Tensor, rows: usize, chunk: usize) -> Result<Tensor> {
    let z = z.detach().to_dtype(DType::F32)?;
    let cb = codebook.detach().to_dtype(DType::F32)?;
    let (m, _) = z.dims2()?;
    let (n, _) = cb.dims2()?;
    let csq = cb.sqr()?.sum(1)?.unsqueeze(0)?; // [1, N]
    let mut best_idx = Vec::with_capacity(m);
    let mut row = 0;
    while row < m {
        let zb = z.narrow(0, row, rows.min(m - row))?; // [Mb, e]
        best_idx.extend(search_block(&zb, &cb, &csq, chunk, n)?);
        row += rows;
    }
    Tensor::from_vec(best_idx, m, z.device())
}

/// One block of latent rows against the whole codebook, chunk by chunk.
fn search_block(z: &Tensor, cb: &Tensor, csq: &Tensor, chunk: usize, n: usize) -> Result<Vec<u32>> {
    let m = z.dim(0)?;
    let zsq = z.sqr()?.sum_keepdim(1)?; // [Mb, 1]
    let mut best = vec![f32::INFINITY; m];
    let mut best_idx = vec![0u32; m];
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let c = cb.narrow(0, start, len)?;
        let d = (zsq.broadcast_add(&csq.narrow(1, start, len)?)? - (z.matmul(&c.t()?)? * 2.0)?)?; // [Mb, len]
        let idx = d.argmin_keepdim(D::Minus1)?; // [Mb, 1]
        let val = d.gather(&idx, D::Minus1)?.squeeze(1)?.to_vec1::<f32>()?;
        let idx = idx.squeeze(1)?.to_vec1::<u32>()?;
        for r in 0..m {
            // strict: a tie with an earlier chunk keeps the earlier (first) index
            if val[r] < best[r] {
                best[r] = val[r];
                best_idx[r] = idx[r] + start as u32;
            }
        }
        start += len;
    }
    Ok(best_idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Brute-force argmin in f64, first index on ties.
    fn brute_force(z: &Tensor, cb: &Tensor) -> Vec<u32> {
        let (zv, cv) = (z.to_vec2::<f32>().unwrap(), cb.to_vec2::<f32>().unwrap());
        zv.iter()
            .map(|zr| {
                let d = |c: &Vec<f32>| zr.iter().zip(c).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
                (0..cv.len()).min_by(|&a, &b| d(&cv[a]).total_cmp(&d(&cv[b])).then(a.cmp(&b))).unwrap() as u32
            })
            .collect()
    }

    #[test]
    fn the_fused_cpu_search_equals_the_blocked_one() {
        let mut rng = gen_runtime::Rng::new(3);
        let dev = Device::Cpu;
        let z = rng.randn((700, 8), 1.0, &dev).unwrap();
        let cb = rng.randn((5000, 8), 1.0, &dev).unwrap();
        let fused = nearest_codes(&z, &cb).unwrap().to_vec1::<u32>().unwrap();
        let blocked = nearest_codes_blocked(&z, &cb, 64, 1000).unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(fused, blocked);
    }

    #[test]
    fn chunked_search_equals_brute_force_across_chunk_and_row_borders() {
        let mut rng = gen_runtime::Rng::new(1);
        let dev = Device::Cpu;
        let z = rng.randn((37, 3), 1.0, &dev).unwrap();
        let mut cb = rng.randn((1000, 3), 1.0, &dev).unwrap();
        // Make the nearest code of row 0 sit twice, on both sides of the border at 64: the first must win.
        let want0 = brute_force(&z.narrow(0, 0, 1).unwrap(), &cb)[0] as usize;
        let code = cb.narrow(0, want0, 1).unwrap();
        let rows: Vec<Tensor> =
            (0..1000).map(|i| if i == 63 || i == 64 { code.clone() } else { cb.narrow(0, i, 1).unwrap() }).collect();
        cb = Tensor::cat(&rows, 0).unwrap();
        let want = brute_force(&z, &cb);
        assert_eq!(want[0], 63);
        for (rows, chunk) in [(37, 64), (5, 64), (1, 7), (16, 1000)] {
            let got = nearest_codes_blocked(&z, &cb, rows, chunk).unwrap().to_vec1::<u32>().unwrap();
            assert_eq!(got, want, "rows {rows}, chunk {chunk}");
        }
        assert_eq!(nearest_codes(&z, &cb).unwrap().to_vec1::<u32>().unwrap(), want);
    }

    #[test]
    fn every_plan_keeps_its_distance_block_under_the_budget() {
        for m in [1, 256, 16_384, 64 * 256, 65_536, 65_537, 200_000, 10_000_000] {
            for n in [1, 1000, 100_000] {
                let (rows, chunk) = plan(m, n);
                assert!(rows * chunk * 4 <= BLOCK_BYTES, "m {m}, n {n}: {rows} × {chunk}");
                assert!(rows >= 1 && chunk >= 1 && chunk <= n);
            }
        }
        // above 65,536 rows the chunk sits at its floor and the rows are split instead
        assert_eq!(plan(200_000, 100_000), (BLOCK_BYTES / 4 / MIN_CHUNK, MIN_CHUNK));
    }

    #[test]
    fn a_search_over_more_than_65536_rows_splits_rows_and_stays_exact() {
        let mut rng = gen_runtime::Rng::new(2);
        let dev = Device::Cpu;
        let (m, n) = (70_000, 300);
        let (rows, chunk) = plan(m, n);
        assert!(rows < m && chunk < n, "the plan must split both {m} rows and {n} codes (got {rows} × {chunk})");
        let z = rng.randn((m, 4), 1.0, &dev).unwrap();
        let cb = rng.randn((n, 4), 1.0, &dev).unwrap();
        let got = nearest_codes(&z, &cb).unwrap().to_vec1::<u32>().unwrap();
        // compare a stride of rows, including both sides of the row-block border
        let picks: Vec<usize> = (0..m).step_by(997).chain([rows - 1, rows, rows + 1]).collect();
        let idx = Tensor::from_vec(picks.iter().map(|&i| i as u32).collect::<Vec<_>>(), picks.len(), &dev).unwrap();
        let want = brute_force(&z.index_select(&idx, 0).unwrap(), &cb);
        for (k, &i) in picks.iter().enumerate() {
            assert_eq!(got[i], want[k], "row {i}");
        }
    }
}
