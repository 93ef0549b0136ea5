//! Branch-free `exp` and `erf` for f32, written so that LLVM vectorises the loops that call them,
//! and the loops themselves, compiled twice: once for AVX2 + FMA (picked at run time) and once
//! for the baseline target.
//!
//! `erf` is fdlibm's `erff` (the algorithm and coefficients `libm::erff` uses) with its branches
//! turned into selects: every interval's rational is evaluated and the right one kept, which is
//! cheaper 8 lanes at a time than a scalar call with data-dependent branches. `exp` is a
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

// erf coefficients from FreeBSD's s_erff.c (via the `libm` crate), whose notice reads:
// Copyright (C) 1993 by Sun Microsystems, Inc. All rights reserved.
// Developed at SunPro, a Sun Microsystems, Inc. business.
// Permission to use, copy, modify, and distribute this software is freely granted, provided
// that this notice is preserved.
#[allow(clippy::excessive_precision)]
mod erf_coef {
    pub const ERX: f32 = 8.4506291151e-01;
    pub const EFX8: f32 = 1.0270333290e+00;
    pub const PP: [f32; 5] = [1.2837916613e-01, -3.2504209876e-01, -2.8481749818e-02, -5.7702702470e-03, -2.3763017452e-05];
    pub const QQ: [f32; 5] = [3.9791721106e-01, 6.5022252500e-02, 5.0813062117e-03, 1.3249473704e-04, -3.9602282413e-06];
    pub const PA: [f32; 7] = [-2.3621185683e-03, 4.1485610604e-01, -3.7220788002e-01, 3.1834661961e-01,
                              -1.1089469492e-01, 3.5478305072e-02, -2.1663755178e-03];
    pub const QA: [f32; 6] = [1.0642088205e-01, 5.4039794207e-01, 7.1828655899e-02, 1.2617121637e-01,
                              1.3637083583e-02, 1.1984500103e-02];
    pub const RA: [f32; 8] = [-9.8649440333e-03, -6.9385856390e-01, -1.0558626175e+01, -6.2375331879e+01,
                              -1.6239666748e+02, -1.8460508728e+02, -8.1287437439e+01, -9.8143291473e+00];
    pub const SA: [f32; 8] = [1.9651271820e+01, 1.3765776062e+02, 4.3456588745e+02, 6.4538726807e+02,
                              4.2900814819e+02, 1.0863500214e+02, 6.5702495575e+00, -6.0424413532e-02];
    // The [1/0.35, 6) set has one term fewer in each polynomial: padded with 0 so one Horner
    // evaluates either set.
    pub const RB: [f32; 8] = [-9.8649431020e-03, -7.9928326607e-01, -1.7757955551e+01, -1.6063638306e+02,
                              -6.3756646729e+02, -1.0250950928e+03, -4.8351919556e+02, 0.0];
    pub const SB: [f32; 8] = [3.0338060379e+01, 3.2579251099e+02, 1.5367296143e+03, 3.1998581543e+03,
                              2.5530502930e+03, 4.7452853394e+02, -2.2440952301e+01, 0.0];
}

/// `c0 + x c1 + x^2 c2 + ...` by Horner, written out: a loop here would be the innermost loop
/// and keep LLVM from vectorising the caller's loop over elements.
macro_rules! horner {
    ($x:expr; $c:expr) => { $c };
    ($x:expr; $c:expr, $($rest:expr),+) => { $c + $x * horner!($x; $($rest),+) };
}

/// The error function, as `libm::erff` up to the rounding of its `exp` calls.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    use erf_coef::*;
    let ax = x.abs();

    // |x| < 0.84375: x + x R(x^2) / S(x^2)
    let z = x * x;
    let r = horner!(z; PP[0], PP[1], PP[2], PP[3], PP[4]);
    let s = 1.0 + z * horner!(z; QQ[0], QQ[1], QQ[2], QQ[3], QQ[4]);
    let small = x + x * (r / s);
    // |x| < 2^-28: fdlibm's guard against underflow in x * R
    let tiny = 0.125 * (8.0 * x + EFX8 * x);

    // 0.84375 <= |x| < 1.25: erf = 1 - erfc, erfc = (1 - erx) - P(|x| - 1) / Q(|x| - 1), rounded
    // as fdlibm does.
    let t = ax - 1.0;
    let p = horner!(t; PA[0], PA[1], PA[2], PA[3], PA[4], PA[5], PA[6]);
    let q = 1.0 + t * horner!(t; QA[0], QA[1], QA[2], QA[3], QA[4], QA[5]);
    let mid = 1.0 - ((1.0 - ERX) - p / q);

    // 1.25 <= |x| < 6: 1 - exp(-x^2 - 0.5625 + R(1/x^2) / S(1/x^2)) / x, the coefficient set
    // chosen per lane.
    let near = ax < 1.0 / 0.35;
    let c = |a: f32, b: f32| if near { a } else { b };
    let w = 1.0 / (ax * ax);
    let rr = horner!(w; c(RA[0], RB[0]), c(RA[1], RB[1]), c(RA[2], RB[2]), c(RA[3], RB[3]), c(RA[4], RB[4]),
                        c(RA[5], RB[5]), c(RA[6], RB[6]), c(RA[7], RB[7]));
    let ss = 1.0
        + w * horner!(w; c(SA[0], SB[0]), c(SA[1], SB[1]), c(SA[2], SB[2]), c(SA[3], SB[3]), c(SA[4], SB[4]),
                         c(SA[5], SB[5]), c(SA[6], SB[6]), c(SA[7], SB[7]));
    // zt has its low 13 mantissa bits cleared, so zt * zt is exact: the large part of the
    // exponent carries no rounding from the squaring.
    let zt = f32::from_bits(ax.to_bits() & 0xffff_e000);
    let erfc = exp(-zt * zt - 0.5625) * exp((zt - ax) * (zt + ax) + rr / ss) / ax;
    let large = 1.0 - erfc;

    let y = if ax < 1.25 { mid } else if ax < 6.0 { large } else if ax.is_nan() { ax } else { 1.0 };
    let y = if x < 0.0 { -y } else { y };
    if ax < 3.725_290_3e-9 { tiny } else if ax < 0.843_75 { small } else { y }
}

/// The error function by Abramowitz & Stegun 7.1.26: `1 - (a1 t + ... + a5 t^5) e^{-x^2}` with
/// `t = 1 / (1 + p |x|)`, absolute error below 1.5e-7 in exact arithmetic and below 5e-7 in f32
/// (near 0 the result is `1 - (nearly 1)`, which costs a few ulp of 1).
/// One division and one `exp` against [`erf`]'s three rationals and two `exp`s: GELU calls it
/// for every hidden unit of every feed-forward layer, forward and backward, and there the
/// absolute error is what matters (GELU multiplies it by `x / 2`).
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * horner!(t; A[0], A[1], A[2], A[3], A[4]);
    let y = 1.0 - poly * exp(-ax * ax);
    let y = if x < 0.0 { -y } else { y };
    // below 1e-3 the Taylor term 2x/sqrt(pi) is exact to 4e-10 and keeps erf odd and 0 at 0
    if ax < 1e-3 { x * std::f32::consts::FRAC_2_SQRT_PI } else { y }
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

    #[test]
    fn erf_matches_libm() {
        let mut worst_abs = 0.0f64;
        let mut x = -7.0f32;
        while x < 7.0 {
            let got = erf(x);
            let want = libm::erf(x as f64);
            worst_abs = worst_abs.max((got as f64 - want).abs());
            // libm's own f32 answer, for the same rounding-level budget
            assert!((got - libm::erff(x)).abs() <= 2.5e-7, "erf({x}) = {got}, libm {}", libm::erff(x));
            x += 0.000_77;
        }
        assert!(worst_abs < 1.5e-7, "erf off by {worst_abs}");
        for x in [0.0f32, -0.0, 1e-12, -1e-12, 0.84375, 1.25, 1.0 / 0.35, 6.0, 30.0, -30.0] {
            assert!((erf(x) - libm::erff(x)).abs() <= 1.2e-7, "erf({x}) = {}, libm {}", erf(x), libm::erff(x));
        }
    }
}
