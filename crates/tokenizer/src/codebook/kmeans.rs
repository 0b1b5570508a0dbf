//! k-means for codebook initialisation: k-means++ seeding, Lloyd iterations with chunked GEMM distances,
//! empty clusters re-seeded, a tolerance and an iteration cap.
//!
//! The official `minibatch_kmeans_per_class.py` runs `kmeans_pytorch.kmeans` (random initial centres,
//! unseeded, no iteration cap, stops when the centres move less than 1e-4). Here:
//! - **Seeded and reproducible**: the same seed gives the same centres on every run and at any thread
//!   count (each distance block is one single-threaded GEMM; blocks run in parallel).
//! - **k-means++** seeding over at most `max(3k, 4096)` candidate points drawn from the data (the rule of
//!   scikit-learn's `MiniBatchKMeans`, whose name the official script borrows), so seeding costs
//!   O(k · 3k · d) rather than O(k · n · d).
//! - **Stopping** as scikit-learn's `KMeans`: when no point changes cluster, or when the total squared
//!   centre shift falls to `tol` × the mean per-feature variance of the data; at most `max_iter` rounds.
//! - **Empty clusters** take the points farthest from their centres (scikit-learn's rule), so every
//!   code of the codebook is a real centre.
//! - **Memory**: distances are computed block by block (about 16 M floats per block), so 100,000 centres
//!   of 768 dimensions need no n × k matrix.

use gen_runtime::Rng;
use rayon::prelude::*;

/// Settings of one clustering.
#[derive(Clone, Debug)]
pub struct KMeansConfig {
    /// The number of centres.
    pub k: usize,
    /// Lloyd rounds at most.
    pub max_iter: usize,
    /// Stop when the total squared centre shift ≤ `tol` × the data's mean per-feature variance.
    pub tol: f64,
    pub seed: u64,
}

/// What a clustering gives.
#[derive(Clone, Debug)]
pub struct KMeans {
    /// k × d, row-major.
    pub centres: Vec<f32>,
    pub d: usize,
    /// Lloyd rounds run.
    pub iterations: usize,
    /// Σ over points of the squared distance to their centre, after the last round.
    pub inertia: f64,
    /// Whether a stopping rule fired before `max_iter`.
    pub converged: bool,
    /// Empty clusters re-seeded over all rounds.
    pub reseeded: usize,
}

/// Why a clustering cannot run.
#[derive(Debug, thiserror::Error)]
pub enum KMeansError {
    #[error("k-means: {n} points cannot give {k} distinct centres (ask for at most {n})")]
    TooFewPoints { n: usize, k: usize },
    #[error("k-means: {0}")]
    Invalid(String),
}

/// Points a round of Lloyd's algorithm reports to `progress`.
pub struct Round {
    pub iteration: usize,
    pub inertia: f64,
    pub moved: usize,
}

/// Clusters the `n = x.len() / d` points of `x` (row-major) into `cfg.k` centres.
pub fn kmeans(
    x: &[f32],
    d: usize,
    cfg: &KMeansConfig,
    mut progress: impl FnMut(&Round),
) -> Result<KMeans, KMeansError> {
    if d == 0 || !x.len().is_multiple_of(d) {
        return Err(KMeansError::Invalid(format!("{} values are not a whole number of {d}-d points", x.len())));
    }
    if cfg.k == 0 {
        return Err(KMeansError::Invalid("k must be at least 1".into()));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(KMeansError::Invalid(format!("point {} holds a non-finite value ({})", i / d, x[i])));
    }
    let n = x.len() / d;
    if n < cfg.k {
        return Err(KMeansError::TooFewPoints { n, k: cfg.k });
    }
    let mut rng = Rng::new(cfg.seed);
    let mut centres = seed_plus_plus(x, d, cfg.k, &mut rng);
    let threshold = cfg.tol * mean_variance(x, d);
    let mut labels = vec![u32::MAX; n];
    let (mut iterations, mut inertia, mut converged, mut reseeded) = (0, 0.0, false, 0);
    while iterations < cfg.max_iter {
        iterations += 1;
        let (new_labels, dist) = assign(x, d, &centres);
        let moved = new_labels.iter().zip(&labels).filter(|(a, b)| a != b).count();
        labels = new_labels;
        inertia = dist.iter().map(|&v| f64::from(v)).sum();
        progress(&Round { iteration: iterations, inertia, moved });
        if moved == 0 {
            converged = true;
            break;
        }
        let (next, empty) = update(x, d, cfg.k, &labels, &dist);
        reseeded += empty;
        let shift: f64 = centres.iter().zip(&next).map(|(&a, &b)| f64::from(a - b).powi(2)).sum();
        centres = next;
        if shift <= threshold && empty == 0 {
            converged = true;
            // the centres moved: one more assignment keeps the inertia true to them
            let (_, dist) = assign(x, d, &centres);
            inertia = dist.iter().map(|&v| f64::from(v)).sum();
            break;
        }
    }
    Ok(KMeans { centres, d, iterations, inertia, converged, reseeded })
}

/// The mean over features of each feature's variance (scikit-learn's scale for `tol`).
fn mean_variance(x: &[f32], d: usize) -> f64 {
    let n = (x.len() / d) as f64;
    let mut sum = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for p in x.chunks_exact(d) {
        for (j, &v) in p.iter().enumerate() {
            sum[j] += f64::from(v);
            sq[j] += f64::from(v) * f64::from(v);
        }
    }
    sum.iter().zip(&sq).map(|(&s, &q)| (q / n - (s / n).powi(2)).max(0.0)).sum::<f64>() / d as f64
}

/// k-means++ over a candidate subset: the first centre uniform, each next one drawn with probability
/// proportional to its squared distance from the nearest centre so far.
fn seed_plus_plus(x: &[f32], d: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = x.len() / d;
    let m = n.min((3 * k).max(4096));
    let candidates: Vec<usize> = if m == n { (0..n).collect() } else { sample_without_replacement(n, m, rng) };
    let point = |i: usize| &x[candidates[i] * d..(candidates[i] + 1) * d];
    let mut centres = Vec::with_capacity(k * d);
    let first = rng.below(m as u64) as usize;
    centres.extend_from_slice(point(first));
    let mut d2: Vec<f64> = (0..m).into_par_iter().map(|i| sq_dist(point(i), point(first))).collect();
    for _ in 1..k {
        let total: f64 = d2.iter().sum();
        let next = if total > 0.0 {
            let target = rng.uniform() * total;
            let mut acc = 0.0;
            d2.iter()
                .position(|&v| {
                    acc += v;
                    acc > target
                })
                .unwrap_or(m - 1)
        } else {
            // every candidate sits on a centre already: duplicates are all that is left
            rng.below(m as u64) as usize
        };
        let c = point(next);
        centres.extend_from_slice(c);
        d2.par_iter_mut().enumerate().for_each(|(i, v)| *v = v.min(sq_dist(point(i), c)));
    }
    centres
}

/// `m` distinct indices below `n`, in increasing order (Floyd's algorithm).
fn sample_without_replacement(n: usize, m: usize, rng: &mut Rng) -> Vec<usize> {
    let mut chosen = std::collections::HashSet::with_capacity(m);
    for j in n - m..n {
        let t = rng.below(j as u64 + 1) as usize;
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    let mut v: Vec<usize> = chosen.into_iter().collect();
    v.sort_unstable();
    v
}

fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&p, &q)| (p - q) * (p - q)).sum::<f32>() as f64
}

/// Points per parallel task of `assign`.
const ASSIGN_ROWS: usize = 64;
/// Centres per tile of `assign`: a task sweeps its points over one tile (a 64 × 2048 distance block,
/// 512 KiB, or the tile's coordinates in the small-dimension path) while the tile stays in L2.
const ASSIGN_TILE: usize = 2048;
/// Up to this dimension the distances are formed in registers (`argmin_fused`): a GEMM with an inner
/// dimension of 8 (the tokenizers' codes) stores and reloads every distance for a handful of FMAs.
const SMALL_D: usize = 16;
/// Lanes of the vectorised argmin (one AVX-512 register of f32).
const LANES: usize = 16;
/// Points that share each load of the centres' coordinates in the register path.
const ROWS_AT_ONCE: usize = 4;

/// The nearest centre of every point and its squared distance: ‖x‖² − 2 x·c + ‖c‖², tile by tile.
/// Ties keep the first centre (`torch.argmin`'s rule).
pub fn assign(x: &[f32], d: usize, centres: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let k = centres.len() / d;
    let n = x.len() / d;
    let c_norm: Vec<f32> = centres.chunks_exact(d).map(|c| c.iter().map(|v| v * v).sum()).collect();
    let mut labels = vec![0u32; n];
    let mut dist = vec![0f32; n];
    let small = (d <= SMALL_D).then(|| Interleaved::new(centres, &c_norm, d));
    let tile = ASSIGN_TILE.min(k.max(1));
    gen_nn::kernels::gemm::serial(|| {
        labels.par_chunks_mut(ASSIGN_ROWS).zip(dist.par_chunks_mut(ASSIGN_ROWS)).enumerate().for_each_init(
            || vec![0f32; if small.is_some() { 0 } else { ASSIGN_ROWS * tile }],
            |g, (b, (lab, dst))| {
                let rows = lab.len();
                let xb = &x[b * ASSIGN_ROWS * d..(b * ASSIGN_ROWS + rows) * d];
                let mut best = vec![(f32::INFINITY, 0u32); rows];
                for start in (0..k).step_by(tile) {
                    let len = tile.min(k - start);
                    let keep = |b: &mut (f32, u32), (j, v): (usize, f32)| {
                        // strict: a tie with an earlier tile keeps the earlier (first) centre
                        if v < b.0 {
                            *b = (v, (start + j) as u32);
                        }
                    };
                    if let Some(il) = &small {
                        for (ps, bs) in xb.chunks(ROWS_AT_ONCE * d).zip(best.chunks_mut(ROWS_AT_ONCE)) {
                            for (b, found) in bs.iter_mut().zip(il.argmin(ps, start, len)) {
                                keep(b, found);
                            }
                        }
                        continue;
                    }
                    let g = &mut g[..rows * len];
                    gen_nn::kernels::gemm::matmul_abt(rows, len, d, xb, &centres[start * d..(start + len) * d], g);
                    for (r, b) in best.iter_mut().enumerate() {
                        keep(b, argmin_shifted(&g[r * len..(r + 1) * len], &c_norm[start..start + len]));
                    }
                }
                for (r, ((l, out), (v, j))) in lab.iter_mut().zip(dst.iter_mut()).zip(best).enumerate() {
                    let xn: f32 = xb[r * d..(r + 1) * d].iter().map(|v| v * v).sum();
                    *l = j;
                    *out = (xn + v).max(0.0);
                }
            },
        );
    });
    (labels, dist)
}

/// Per-lane minimum and the first index reaching it, folded into the first overall minimum.
struct LaneMin {
    acc: [f32; LANES],
    at: [u32; LANES],
}

impl LaneMin {
    fn new() -> Self {
        Self { acc: [f32::INFINITY; LANES], at: [0; LANES] }
    }

    /// Offer the values of indices `base .. base + LANES`. Selects, not branches, so it vectorises;
    /// NaN never replaces.
    #[inline(always)]
    fn offer(&mut self, v: &[f32; LANES], base: usize) {
        for (l, ((&v, acc), at)) in v.iter().zip(&mut self.acc).zip(&mut self.at).enumerate() {
            let lt = v < *acc;
            *acc = if lt { v } else { *acc };
            *at = if lt { (base + l) as u32 } else { *at };
        }
    }

    /// The smallest index among the lanes holding the least value (index 0 and +∞ when nothing finite
    /// was offered).
    fn first_min(&self) -> (usize, f32) {
        let (mut best, mut best_v) = (0usize, f32::INFINITY);
        for (&v, &j) in self.acc.iter().zip(&self.at) {
            if v < best_v || (v == best_v && v < f32::INFINITY && (j as usize) < best) {
                (best, best_v) = (j as usize, v);
            }
        }
        (best, best_v)
    }
}

/// The first index minimising `cn[j] − 2 g[j]`, and that minimum (index 0 and +∞ when every value is
/// NaN): a lane-wise pass (a running index in one scalar loop does not vectorise), then the tail.
fn argmin_shifted(g: &[f32], cn: &[f32]) -> (usize, f32) {
    let mut lanes = LaneMin::new();
    for (c, (gs, cs)) in g.chunks_exact(LANES).zip(cn.chunks_exact(LANES)).enumerate() {
        let mut v = [0f32; LANES];
        for ((v, &c), &g) in v.iter_mut().zip(cs).zip(gs) {
            *v = c - 2.0 * g;
        }
        lanes.offer(&v, c * LANES);
    }
    let (mut best, mut best_v) = lanes.first_min();
    for j in g.len() - g.len() % LANES..g.len() {
        let v = cn[j] - 2.0 * g[j];
        if v < best_v {
            (best, best_v) = (j, v);
        }
    }
    (best, best_v)
}

/// Centres of a small dimension laid out for `argmin_fused`: blocks of `LANES` centres, each block
/// coordinate-major (`coords[(blk·d + t)·LANES + l]` is coordinate t of centre blk·LANES + l), with
/// ‖c‖² beside; the last block is padded with centres at +∞ that never win.
struct Interleaved {
    coords: Vec<f32>,
    norms: Vec<f32>,
    d: usize,
}

impl Interleaved {
    fn new(centres: &[f32], norms: &[f32], d: usize) -> Self {
        let k = norms.len();
        let blocks = k.div_ceil(LANES);
        let mut coords = vec![0f32; blocks * d * LANES];
        let mut padded = vec![f32::INFINITY; blocks * LANES];
        padded[..k].copy_from_slice(norms);
        for (j, c) in centres.chunks_exact(d).enumerate() {
            let (blk, l) = (j / LANES, j % LANES);
            for (t, &v) in c.iter().enumerate() {
                coords[(blk * d + t) * LANES + l] = v;
            }
        }
        Self { coords, norms: padded, d }
    }

    /// `argmin_shifted` over centres `start .. start + len` (`start` a multiple of `LANES`) for up to
    /// `ROWS_AT_ONCE` points (`ps`, row-major), every distance formed in registers: ‖c‖² − 2 x·c as d
    /// fused multiply-adds per lane, each coordinate load shared by the points.
    fn argmin(&self, ps: &[f32], start: usize, len: usize) -> [(usize, f32); ROWS_AT_ONCE] {
        debug_assert_eq!(start % LANES, 0);
        let mut m2 = [[0f32; SMALL_D]; ROWS_AT_ONCE];
        for (m, p) in m2.iter_mut().zip(ps.chunks_exact(self.d)) {
            for (m, &v) in m.iter_mut().zip(p) {
                *m = -2.0 * v;
            }
        }
        let blocks = (start / LANES, (start + len).div_ceil(LANES));
        #[cfg(target_arch = "x86_64")]
        if gen_nn::kernels::avx512() {
            // SAFETY: AVX-512F is present; the blocks lie inside `coords` and `norms`
            return unsafe { self.argmin_avx512(&m2, blocks) };
        }
        self.argmin_portable(&m2, blocks)
    }

    /// The reference: the same arithmetic in plain loops.
    fn argmin_portable(
        &self,
        m2: &[[f32; SMALL_D]; ROWS_AT_ONCE],
        (b0, b1): (usize, usize),
    ) -> [(usize, f32); ROWS_AT_ONCE] {
        let d = self.d;
        let mut lanes: [LaneMin; ROWS_AT_ONCE] = std::array::from_fn(|_| LaneMin::new());
        for blk in b0..b1 {
            let norms: &[f32; LANES] = self.norms[blk * LANES..(blk + 1) * LANES].try_into().unwrap();
            for (m, lanes) in m2.iter().zip(lanes.iter_mut()) {
                let mut v = *norms;
                for (t, &m) in m[..d].iter().enumerate() {
                    let c = &self.coords[(blk * d + t) * LANES..][..LANES];
                    for l in 0..LANES {
                        v[l] = m.mul_add(c[l], v[l]);
                    }
                }
                lanes.offer(&v, (blk - b0) * LANES);
            }
        }
        lanes.map(|l| l.first_min())
    }

    /// # Safety
    /// AVX-512F is available and blocks `b0 .. b1` lie inside `coords` and `norms`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // t and r index two arrays each: registers and coordinates
    unsafe fn argmin_avx512(
        &self,
        m2: &[[f32; SMALL_D]; ROWS_AT_ONCE],
        (b0, b1): (usize, usize),
    ) -> [(usize, f32); ROWS_AT_ONCE] {
        use std::arch::x86_64::*;
        let d = self.d;
        let mut acc = [_mm512_set1_ps(f32::INFINITY); ROWS_AT_ONCE];
        let mut at = [_mm512_setzero_si512(); ROWS_AT_ONCE];
        let mut idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let step = _mm512_set1_epi32(LANES as i32);
        for blk in b0..b1 {
            let norms = _mm512_loadu_ps(self.norms.as_ptr().add(blk * LANES));
            let mut v = [norms; ROWS_AT_ONCE];
            let coords = self.coords.as_ptr().add(blk * d * LANES);
            for t in 0..d {
                let c = _mm512_loadu_ps(coords.add(t * LANES));
                for r in 0..ROWS_AT_ONCE {
                    v[r] = _mm512_fmadd_ps(_mm512_set1_ps(m2[r][t]), c, v[r]);
                }
            }
            for r in 0..ROWS_AT_ONCE {
                // ordered <: NaN never replaces, as `LaneMin::offer`
                let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v[r], acc[r]);
                acc[r] = _mm512_mask_mov_ps(acc[r], lt, v[r]);
                at[r] = _mm512_mask_mov_epi32(at[r], lt, idx);
            }
            idx = _mm512_add_epi32(idx, step);
        }
        std::array::from_fn(|r| {
            let mut lanes = LaneMin::new();
            _mm512_storeu_ps(lanes.acc.as_mut_ptr(), acc[r]);
            _mm512_storeu_si512(lanes.at.as_mut_ptr() as *mut __m512i, at[r]);
            lanes.first_min()
        })
    }
}

/// The means of the clusters; an empty cluster takes the point farthest from its centre that no other
/// empty cluster took. Returns the centres and the number of empty clusters.
fn update(x: &[f32], d: usize, k: usize, labels: &[u32], dist: &[f32]) -> (Vec<f32>, usize) {
    let mut sums = vec![0f64; k * d];
    let mut counts = vec![0usize; k];
    for (p, &l) in x.chunks_exact(d).zip(labels) {
        let l = l as usize;
        counts[l] += 1;
        for (s, &v) in sums[l * d..(l + 1) * d].iter_mut().zip(p) {
            *s += f64::from(v);
        }
    }
    let empty: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
    if !empty.is_empty() {
        let mut far: Vec<usize> = (0..labels.len()).collect();
        far.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
        let mut far = far.into_iter();
        for &j in &empty {
            // a point leaves its cluster for the empty one, unless that would empty its own
            let Some(i) = far.find(|&i| counts[labels[i] as usize] > 1) else { break };
            let from = labels[i] as usize;
            for (t, &v) in x[i * d..(i + 1) * d].iter().enumerate() {
                sums[from * d + t] -= f64::from(v);
                sums[j * d + t] = f64::from(v);
            }
            counts[from] -= 1;
            counts[j] = 1;
        }
    }
    let centres = sums
        .chunks_exact(d)
        .zip(&counts)
        .flat_map(|(s, &c)| s.iter().map(move |&v| (v / c.max(1) as f64) as f32))
        .collect();
    (centres, empty.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `per` points around each of `centres` (spread `spread`), shuffled by the seed.
    fn blobs(centres: &[[f32; 2]], per: usize, spread: f64, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut pts = Vec::new();
        for _ in 0..per {
            for c in centres {
                pts.push(c[0] + (spread * rng.normal()) as f32);
                pts.push(c[1] + (spread * rng.normal()) as f32);
            }
        }
        pts
    }

    fn cfg(k: usize, seed: u64) -> KMeansConfig {
        KMeansConfig { k, max_iter: 100, tol: 1e-4, seed }
    }

    #[test]
    fn finds_well_separated_blobs() {
        let truth = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0], [5.0, 20.0]];
        let x = blobs(&truth, 200, 0.5, 1);
        let r = kmeans(&x, 2, &cfg(5, 7), |_| {}).unwrap();
        assert!(r.converged);
        for t in truth {
            let best = r.centres.chunks_exact(2).map(|c| sq_dist(c, &t)).fold(f64::INFINITY, f64::min);
            assert!(best < 0.05, "no centre near {t:?} (nearest at squared distance {best})");
        }
        // inertia ≈ n · d · spread²
        let expected = 1000.0 * 2.0 * 0.25;
        assert!((r.inertia / expected - 1.0).abs() < 0.15, "inertia {}", r.inertia);
    }

    #[test]
    fn the_same_seed_gives_the_same_centres_at_any_thread_count() {
        let x = blobs(&[[0.0, 0.0], [3.0, 1.0], [1.0, 4.0]], 300, 1.5, 2);
        let run = |threads: usize, seed: u64| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| kmeans(&x, 2, &cfg(12, seed), |_| {}).unwrap().centres)
        };
        let a = run(1, 5);
        assert_eq!(a, run(2, 5));
        assert_eq!(a, run(3, 5));
        assert_ne!(a, run(2, 6));
    }

    #[test]
    fn lloyd_rounds_never_raise_the_inertia() {
        let x = blobs(&[[0.0, 0.0], [2.0, 2.0]], 500, 2.0, 3);
        let mut seen = Vec::new();
        let r = kmeans(&x, 2, &cfg(20, 1), |round| seen.push(round.inertia)).unwrap();
        assert!(seen.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-6)), "{seen:?}");
        assert_eq!(seen.len(), r.iterations);
    }

    /// Checks `assign` against brute force in f64; every centre appears twice (at j and j + k/2), so
    /// the first copy must win.
    fn check_assign(n: usize, half: usize, d: usize, seed: u64) {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let mut c: Vec<f32> = (0..half * d).map(|_| rng.normal() as f32).collect();
        c.extend_from_within(..);
        let (labels, dist) = assign(&x, d, &c);
        for i in 0..n {
            let p = &x[i * d..(i + 1) * d];
            let ds: Vec<f64> = c.chunks_exact(d).map(|cj| sq_dist(p, cj)).collect();
            let best = ds.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!((labels[i] as usize) < half, "d {d}: point {i} took the second copy {}", labels[i]);
            // the chosen centre is the nearest up to f32 rounding of the expanded form
            assert!(ds[labels[i] as usize] <= best + 1e-4, "d {d}: point {i}");
            assert!((f64::from(dist[i]) - best).abs() < 1e-3 * (1.0 + best), "d {d}: point {i}");
        }
    }

    #[test]
    fn assignment_matches_brute_force() {
        // the register path (d ≤ 16) and the GEMM path, ragged against the 16 lanes
        for (d, seed) in [(9, 4), (1, 5), (16, 6), (17, 7), (33, 8)] {
            check_assign(1000, 37, d, seed);
        }
    }

    #[test]
    fn assignment_across_tiles_keeps_the_first_of_tied_centres() {
        // more centres than one tile (the far copies in later tiles), more points than one task
        for d in [3, 8, 20] {
            check_assign(300, ASSIGN_TILE + 77, d, 6);
        }
    }

    #[test]
    fn the_register_path_kernels_agree_with_each_other() {
        // the AVX-512 kernel (where present) against the portable reference, bit for bit: same FMAs in
        // the same order; ragged centre count, ties (duplicated centres) and a NaN point
        let mut rng = Rng::new(9);
        for d in [1, 8, 16] {
            let k = 3 * LANES + 5;
            let mut c: Vec<f32> = (0..(k - 4) * d).map(|_| rng.normal() as f32).collect();
            c.extend_from_within(..4 * d);
            let norms: Vec<f32> = c.chunks_exact(d).map(|c| c.iter().map(|v| v * v).sum()).collect();
            let il = Interleaved::new(&c, &norms, d);
            let mut ps: Vec<f32> = (0..ROWS_AT_ONCE * d).map(|_| rng.normal() as f32).collect();
            ps[d] = f32::NAN;
            let (got, want) = (il.argmin(&ps, 0, k), {
                let mut m2 = [[0f32; SMALL_D]; ROWS_AT_ONCE];
                for (m, p) in m2.iter_mut().zip(ps.chunks_exact(d)) {
                    for (m, &v) in m.iter_mut().zip(p) {
                        *m = -2.0 * v;
                    }
                }
                il.argmin_portable(&m2, (0, k.div_ceil(LANES)))
            });
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "d {d}");
                assert!(g.1 == w.1 || (g.1.is_nan() && w.1.is_nan()), "d {d}: {g:?} {w:?}");
            }
            assert_eq!(got[1], (0, f32::INFINITY), "a NaN point takes centre 0");
        }
    }

    #[test]
    fn argmin_takes_the_first_minimum_and_survives_nan() {
        let cn = vec![1.0f32; 40];
        let mut g = vec![0.0f32; 40];
        g[33] = 0.5; // value 0 at 33 and 37, 1 elsewhere
        g[37] = 0.5;
        assert_eq!(argmin_shifted(&g, &cn), (33, 0.0));
        g[5] = f32::NAN;
        assert_eq!(argmin_shifted(&g, &cn), (33, 0.0));
        let (j, v) = argmin_shifted(&[f32::NAN; 20], &[0.0; 20]);
        assert_eq!((j, v), (0, f32::INFINITY));
    }

    #[test]
    fn duplicates_and_empty_clusters_still_give_k_centres() {
        // 30 points on 3 sites, asked for 6 centres: seeding picks duplicates, empty clusters are re-seeded
        let mut x = Vec::new();
        for i in 0..30 {
            x.extend_from_slice(&[(i % 3) as f32, 0.0]);
        }
        let r = kmeans(&x, 2, &cfg(6, 0), |_| {}).unwrap();
        assert_eq!(r.centres.len(), 12);
        assert!(r.centres.iter().all(|v| v.is_finite()));
        assert!(r.inertia < 1e-9);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let x = vec![0f32; 10];
        assert!(matches!(kmeans(&x, 2, &cfg(6, 0), |_| {}), Err(KMeansError::TooFewPoints { n: 5, k: 6 })));
        assert!(kmeans(&x, 3, &cfg(1, 0), |_| {}).is_err());
        assert!(kmeans(&x, 2, &cfg(0, 0), |_| {}).is_err());
        let mut y = x.clone();
        y[3] = f32::NAN;
        let e = kmeans(&y, 2, &cfg(2, 0), |_| {}).unwrap_err().to_string();
        assert!(e.contains("point 1"), "{e}");
    }
}
