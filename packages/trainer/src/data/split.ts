import { range, rngFor, shuffled } from './random.js';
import type { Example } from './table.js';

/**
 * A dev split drawn from train where a dataset ships none (Lingspam, AG News): `floor(fraction * n)` rows
 * chosen at random under `seed` (OpenBackdoor's split_dev takes the same share), both parts kept in file order.
 */
export function splitDev(train: readonly Example[], fraction: number, seed: number): { train: Example[]; dev: Example[] } {
  const size = Math.floor(fraction * train.length);
  const picked = new Set(shuffled(range(train.length), rngFor(seed, 'dev-split')).slice(0, size));
  return {
    train: train.filter((_, i) => !picked.has(i)),
    dev: train.filter((_, i) => picked.has(i)),
  };
}
