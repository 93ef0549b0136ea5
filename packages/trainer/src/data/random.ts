// Seeded randomness for everything the trainer draws (shuffles, the reference set), so a run repeats exactly
// on any machine. Each use gets its own stream, named by labels, so adding a draw in one place never shifts
// the draws of another.

/** mulberry32: a small, fast 32-bit generator; returns floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** FNV-1a over the seed and labels: the seed of one named stream. */
function streamSeed(seed: number, labels: readonly (string | number)[]): number {
  let h = 0x811c9dc5;
  for (const ch of `${seed}:${labels.join(':')}`) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193);
  return h >>> 0;
}

export type Rng = () => number;

/** The random stream named by `labels` under `seed`, e.g. `rngFor(42, 'shuffle', 'badnets', 3)`. */
export function rngFor(seed: number, ...labels: (string | number)[]): Rng {
  return mulberry32(streamSeed(seed, labels));
}

/** A shuffled copy (Fisher-Yates). */
export function shuffled<T>(items: readonly T[], rng: Rng): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** 0, 1, ..., n - 1. */
export function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
