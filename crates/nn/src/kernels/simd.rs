//! Small numeric helpers written so the compiler vectorises them: fixed-width lane accumulators, and an
//! `exp` that is a polynomial (libm's `expf` is a scalar call per element, which keeps SiLU from
//! vectorising).

/// Σ f(x) as f64: f32 lane sums over short blocks, blocks added in f64 (accurate, and vectorised).
#[inline(always)]
fn block_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in xs.chunks(1024) {
        let mut acc = [0f32; 16];
        let mut it = block.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                acc[i] += f(c[i]);
            }
        }
        let tail: f32 = it.remainder().iter().map(|&x| f(x)).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// Σ x as f64.
#[inline]
pub fn sum_f32(xs: &[f32]) -> f64 {
    block_sum(xs, |x| x)
}

/// Σ (x − m)² as f64.
#[inline]
pub fn sum_sq_dev_f32(xs: &[f32], m: f32) -> f64 {
    block_sum(xs, |x| (x - m) * (x - m))
}

/// (Σ (x − k), Σ (x − k)²) as f64 in one pass: with k a sample of the data (near the mean) the
/// variance `Σ(x−k)²/n − (Σ(x−k)/n)²` does not cancel catastrophically.
#[inline]
pub fn shifted_moments_f32(xs: &[f32], k: f32) -> (f64, f64) {
    let (mut t1, mut t2) = (0f64, 0f64);
    for block in xs.chunks(1024) {
        let (mut a1, mut a2) = ([0f32; 16], [0f32; 16]);
        let mut it = block.chunks_exact(16);
        for c in &mut it {
            for i in 0..16 {
                let d = c[i] - k;
                a1[i] += d;
                a2[i] += d * d;
            }
        }
        for &x in it.remainder() {
            t1 += (x - k) as f64;
            t2 += ((x - k) * (x - k)) as f64;
        }
        t1 += a1.iter().map(|&a| a as f64).sum::<f64>();
        t2 += a2.iter().map(|&a| a as f64).sum::<f64>();
    }
    (t1, t2)
}

/// Σ a·b as f64.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f64 {
    let mut total = 0f64;
    for (ba, bb) in a.chunks(1024).zip(b.chunks(1024)) {
        let mut acc = [0f32; 16];
        let mut ia = ba.chunks_exact(16);
        let mut ib = bb.chunks_exact(16);
        for (ca, cb) in (&mut ia).zip(&mut ib) {
            for i in 0..16 {
                acc[i] += ca[i] * cb[i];
            }
        }
        let tail: f32 = ia.remainder().iter().zip(ib.remainder()).map(|(x, y)| x * y).sum();
        total += acc.iter().map(|&a| a as f64).sum::<f64>() + tail as f64;
    }
    total
}

/// e^x for f32, branch-free (Cephes-style range reduction + degree-6 polynomial, ≤ 2 ulp on [−87, 88]).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // round to nearest by the 1.5·2²³ trick: plain adds, and n's bits sit in the low mantissa of t,
    // so 2ⁿ is built with integer ops (a float→int `as` cast is saturating and would not vectorise)
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23);
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4; // ln2 split in hi/lo parts
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    y * two_n
}

/// σ(x) = 1 / (1 + e^−x) for f32.
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_2_ulp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_f32(x), x.exp());
            assert!(((a - b) / b).abs() < 2.5e-7, "exp({x}): {a} vs {b}");
            x += 0.0137;
        }
    }

    #[test]
    fn blocked_sums_are_accurate() {
        let xs: Vec<f32> = (0..100_003).map(|i| ((i * 7919) % 1000) as f32 * 0.001 + 1000.0).collect();
        let exact: f64 = xs.iter().map(|&x| x as f64).sum();
        assert!((sum_f32(&xs) - exact).abs() / exact < 1e-6);
        let m = (exact / xs.len() as f64) as f32;
        let exact_sq: f64 = xs.iter().map(|&x| (x as f64 - m as f64).powi(2)).sum();
        assert!((sum_sq_dev_f32(&xs, m) - exact_sq).abs() / exact_sq < 1e-4);
    }
}
