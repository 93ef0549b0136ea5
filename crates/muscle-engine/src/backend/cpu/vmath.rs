//! Branch-free `exp` and `erf` for f32, written so that LLVM vectorises the loops that call them,
//! and the loops themselves, compiled twice: once for AVX2 + FMA (picked at run time) and once
//! for the baseline target.
//!
//! `erf_fast` is Abramowitz & Stegun's 7.1.26 (one division and one `exp`), branch-free. `exp` is a
//! Cody-Waite range reduction and a degree-6 polynomial (Cephes' `expf` coefficients), within
//! 2 ulp of the correctly rounded result on the range used here.

/// `e^x`; underflows to 0 below -87.3 and saturates at `e^88.3` above (never reached: callers
/// pass arguments <= 0).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.3, 88.3);
    let n = (xc * LOG2E).round_ties_even();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // SAFETY: `n` is an integer in [-126, 128) because `xc` is clamped; the unchecked
    // conversion vectorises where `as` (saturating, NaN-checking) is scalarised lane by lane.
    let ni: i32 = unsafe { n.to_int_unchecked() };
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { er * scale }
}

/// Partial sums per reduction: one AVX2 vector of f32. Reductions keep this many interleaved
/// accumulators so LLVM can hold them in one register instead of a serial chain it may not reorder.
pub const LANES: usize = 8;

/// Adds up `LANES` partial sums pairwise.
#[inline(always)]
pub fn sum_lanes(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `sum a[i] b[i]` in f32 over `LANES` interleaved partial sums (vectorises; for short rows such
/// as attention's, where f32 is as exact as the surrounding arithmetic).
#[inline(always)]
pub fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    let mut acc = [0.0f32; LANES];
    for (x, y) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = sum_lanes(acc);
    for (x, y) in a[full..n].iter().zip(&b[full..n]) {
        s += x * y;
    }
    s
}

/// `sum x[i]` over `LANES` interleaved partial sums.
#[inline(always)]
pub fn sum_slice(x: &[f32]) -> f32 {
    let full = x.len() / LANES * LANES;
    let mut acc = [0.0f32; LANES];
    for c in x[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    x[full..].iter().fold(sum_lanes(acc), |s, &v| s + v)
}

/// The largest `x[i]` with `mask[i] != 0` (-inf when none), over `LANES` interleaved partials.
#[inline(always)]
pub fn max_lanes(x: &[f32], mask: &[i32]) -> f32 {
    let n = x.len().min(mask.len());
    let full = n / LANES * LANES;
    let mut acc = [f32::NEG_INFINITY; LANES];
    for (c, m) in x[..full].chunks_exact(LANES).zip(mask[..full].chunks_exact(LANES)) {
        for l in 0..LANES {
            let v = if m[l] != 0 { c[l] } else { f32::NEG_INFINITY };
            acc[l] = if v > acc[l] { v } else { acc[l] };
        }
    }
    let mut max = acc.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for (&v, &m) in x[full..n].iter().zip(&mask[full..n]) {
        if m != 0 && v > max {
            max = v;
        }
    }
    max
}

/// `c0 + x c1 + x^2 c2 + ...` by Horner, written out: a loop here would be the innermost loop
/// and keep LLVM from vectorising the caller's loop over elements.
macro_rules! horner {
    ($x:expr; $c:expr) => { $c };
    ($x:expr; $c:expr, $($rest:expr),+) => { $c + $x * horner!($x; $($rest),+) };
}

/// The error function by Abramowitz & Stegun 7.1.26: `1 - (a1 t + ... + a5 t^5) e^{-x^2}` with
/// `t = 1 / (1 + p |x|)`, absolute error below 1.5e-7 in exact arithmetic and below 5e-7 in f32
/// (near 0 the result is `1 - (nearly 1)`, which costs a few ulp of 1).
/// One division and one `exp` against [`erf`]'s three rationals and two `exp`s: GELU calls it
/// for every hidden unit of every feed-forward layer, forward and backward, and there the
/// absolute error is what matters (GELU multiplies it by `x / 2`).
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    erf_and_gauss(x).0
}

/// `(erf_fast(x), e^{-x^2})`: the Gaussian is computed on the way, and GELU's derivative needs
/// both, so its backward pays for one `exp` instead of two.
#[inline(always)]
pub fn erf_and_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * horner!(t; A[0], A[1], A[2], A[3], A[4]);
    let gauss = exp(-ax * ax);
    let y = 1.0 - poly * gauss;
    let y = if x < 0.0 { -y } else { y };
    // below 1e-3 the Taylor term 2x/sqrt(pi) is exact to 4e-10 and keeps erf odd and 0 at 0
    (if ax < 1e-3 { x * std::f32::consts::FRAC_2_SQRT_PI } else { y }, gauss)
}

/// Compiles `$body` (a loop over slices) twice, AVX2+FMA and baseline, and picks one at run time.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_within_two_ulp() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 0.5 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
            x += 0.000_37;
        }
        assert!(worst <= 2, "exp off by {worst} ulp");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_fast_within_5e7_of_erf() {
        let mut worst = 0.0f64;
        let mut x = -7.0f32;
        while x < 7.0 {
            worst = worst.max((erf_fast(x) as f64 - libm::erf(x as f64)).abs());
            x += 0.000_37;
        }
        assert!(worst < 5e-7, "erf_fast off by {worst:e}");
        assert_eq!(erf_fast(0.0), 0.0);
        assert_eq!(erf_fast(10.0), 1.0);
    }
}
