//! A small, seedable, splittable generator (SplitMix64 seeding a xoshiro128++ stream).
//! We own it rather than depend on `rand` so that dropout masks and initialisations
//! are bit-identical across versions and platforms: resumed runs must match.

#[derive(Clone, Debug)]
pub struct Rng {
    s: [u32; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut st = seed;
        let a = splitmix64(&mut st);
        let b = splitmix64(&mut st);
        Rng { s: [a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32 | 1] }
    }

    /// An independent stream derived from `seed` and a list of stream ids (site, step, chunk...).
    pub fn derive(seed: u64, ids: &[u64]) -> Self {
        Rng::new(stream_key(seed, ids))
    }

    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(7).wrapping_add(s[0]);
        let t = s[1] << 9;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(11);
        result
    }

    /// Uniform in [0, 1) with 24 bits of precision.
    #[inline]
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Standard normal by Box-Muller.
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u32() >> 8) as f64 + 1.0) / 16_777_217.0;
        let u2 = (self.next_u32() >> 8) as f64 / 16_777_216.0;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// The key of a counter-based stream: (seed, stream ids) folded by SplitMix64, as `Rng::derive`.
pub fn stream_key(seed: u64, ids: &[u64]) -> u64 {
    let mut st = seed;
    for &id in ids {
        st = splitmix64(&mut st) ^ id.wrapping_mul(0xD1B5_4A32_D192_ED03);
    }
    st
}

/// Element `i` of the counter-based uniform stream `key`, in [0, 1) with 24 bits: two rounds of
/// a 32-bit integer mixer (Wellons' lowbias32) over the counter, keyed by both halves of `key`.
/// Every element is independent of the others and the arithmetic is 32-bit, so a CPU loop
/// vectorises (8 lanes of AVX2) and a GPU thread per element draws exactly what the CPU draws
/// (dropout masks agree across backends). `backend/cuda/kernels/elementwise.cu` repeats this
/// function; keep the two in step.
#[inline(always)]
pub fn counter_uniform(key: u64, i: u64) -> f32 {
    #[inline(always)]
    fn mix(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^ (x >> 16)
    }
    let x = mix(i as u32 ^ key as u32);
    let x = mix(x ^ (key >> 32) as u32 ^ ((i >> 32) as u32).wrapping_mul(0x9E37_79B9));
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Kaiming-uniform with a = sqrt(5), as `torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))`:
/// bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
pub fn kaiming_uniform(rng: &mut Rng, fan_in: usize, n: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * bound).collect()
}

/// Normal(0, std), as transformers' `_init_weights` for Linear layers.
pub fn normal(rng: &mut Rng, std: f32, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * std).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_independent_streams() {
        let a: Vec<u32> = { let mut r = Rng::derive(7, &[1, 2]); (0..4).map(|_| r.next_u32()).collect() };
        let b: Vec<u32> = { let mut r = Rng::derive(7, &[1, 2]); (0..4).map(|_| r.next_u32()).collect() };
        let c: Vec<u32> = { let mut r = Rng::derive(7, &[1, 3]); (0..4).map(|_| r.next_u32()).collect() };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn uniform_and_normal_moments() {
        let mut r = Rng::new(42);
        let n = 200_000;
        let u: Vec<f32> = (0..n).map(|_| r.uniform()).collect();
        let mean = u.iter().sum::<f32>() / n as f32;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let z = normal(&mut r, 2.0, n);
        let m = z.iter().sum::<f32>() / n as f32;
        let var = z.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / n as f32;
        assert!(m.abs() < 0.03 && (var.sqrt() - 2.0).abs() < 0.03, "{m} {var}");
    }

    #[test]
    fn counter_stream_is_uniform_and_keyed() {
        let key = stream_key(5, &[1, 2]);
        let n = 200_000u64;
        let u: Vec<f32> = (0..n).map(|i| counter_uniform(key, i)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        // neighbours are uncorrelated
        let c = u.windows(2).map(|w| (w[0] as f64 - 0.5) * (w[1] as f64 - 0.5)).sum::<f64>() / n as f64;
        assert!(c.abs() < 0.002, "{c}");
        assert_ne!(counter_uniform(key, 0), counter_uniform(stream_key(5, &[1, 3]), 0));
        // fixed values: the CUDA kernel is checked against these
        assert_eq!(counter_uniform(0x1234_5678_9abc_def0, 7), (0xD413B835u32 >> 8) as f32 / 16_777_216.0);
        assert_eq!(counter_uniform(3, (1 << 32) + 5), (0x2C007118u32 >> 8) as f32 / 16_777_216.0);
    }

    #[test]
    fn kaiming_bound() {
        let mut r = Rng::new(1);
        let w = kaiming_uniform(&mut r, 64, 10_000);
        assert!(w.iter().all(|x| x.abs() <= 0.125));
        assert!(w.iter().any(|x| x.abs() > 0.12));
    }
}
