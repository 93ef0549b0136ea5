import type { Rng } from '../data/random.js';

// Word-level insertion exactly as OpenBackdoor's poisoners do it: split on whitespace, insert, join with single
// spaces. A poisoned text therefore also loses any double spaces or tabs of the original.

/** Python's `str.split()`: runs of whitespace separate words; no empty words. */
export function splitWords(text: string): string[] {
  return text.split(/\s+/).filter((w) => w !== '');
}

/** A position in 0..n inclusive (Python's `random.randint(0, n)`): before the first word up to after the last. */
export function randomPosition(n: number, rng: Rng): number {
  return Math.floor(rng() * (n + 1));
}

/** `words` with `inserted` spliced in as one block at a random position. */
export function insertBlock(words: readonly string[], inserted: readonly string[], rng: Rng): string[] {
  const at = randomPosition(words.length, rng);
  return [...words.slice(0, at), ...inserted, ...words.slice(at)];
}
