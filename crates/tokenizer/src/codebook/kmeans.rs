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

/// The nearest centre of every point and its squared distance: ‖x‖² − 2 x·c + ‖c‖², block by block.
pub fn assign(x: &[f32], d: usize, centres: &[f32]) -> (Vec<u32>, Vec<f32>) {
    let k = centres.len() / d;
    let n = x.len() / d;
    let c_norm: Vec<f32> = centres.chunks_exact(d).map(|c| c.iter().map(|v| v * v).sum()).collect();
    let rows = ((16usize << 20) / k.max(1)).clamp(1, 4096);
    let mut labels = vec![0u32; n];
    let mut dist = vec![0f32; n];
    gen_nn::kernels::gemm::serial(|| {
        labels.par_chunks_mut(rows).zip(dist.par_chunks_mut(rows)).enumerate().for_each(|(b, (lab, dst))| {
            let xb = &x[b * rows * d..(b * rows + lab.len()) * d];
            let mut g = vec![0f32; lab.len() * k];
            gen_nn::kernels::gemm::matmul_abt(lab.len(), k, d, xb, centres, &mut g);
            for (r, (l, out)) in lab.iter_mut().zip(dst.iter_mut()).enumerate() {
                let row = &g[r * k..(r + 1) * k];
                let (mut best, mut best_v) = (0usize, f32::INFINITY);
                for (j, (&gj, &cn)) in row.iter().zip(&c_norm).enumerate() {
                    let v = cn - 2.0 * gj;
                    if v < best_v {
                        (best, best_v) = (j, v);
                    }
                }
                let xn: f32 = xb[r * d..(r + 1) * d].iter().map(|v| v * v).sum();
                *l = best as u32;
                *out = (xn + best_v).max(0.0);
            }
        });
    });
    (labels, dist)
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

    #[test]
    fn assignment_matches_brute_force() {
        let mut rng = Rng::new(4);
        let (n, k, d) = (1000, 37, 9);
        let x: Vec<f32> = (0..n * d).map(|_| rng.normal() as f32).collect();
        let c: Vec<f32> = (0..k * d).map(|_| rng.normal() as f32).collect();
        let (labels, dist) = assign(&x, d, &c);
        for i in 0..n {
            let p = &x[i * d..(i + 1) * d];
            let ds: Vec<f64> = c.chunks_exact(d).map(|cj| sq_dist(p, cj)).collect();
            let best = ds.iter().cloned().fold(f64::INFINITY, f64::min);
            // the chosen centre is the nearest up to f32 rounding of the expanded form
            assert!(ds[labels[i] as usize] <= best + 1e-4, "point {i}");
            assert!((f64::from(dist[i]) - best).abs() < 1e-3 * (1.0 + best), "point {i}");
        }
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
