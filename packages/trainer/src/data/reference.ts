import type { Example } from './table.js';
import { rngFor, range, shuffled } from './random.js';

/**
 * The defender's trusted clean samples for gradient alignment: `size` rows drawn at random from the clean
 * dev split and removed from it, so model selection never scores the model on data it aligned to.
 */
export function splitReference(dev: readonly Example[], size: number, seed: number): { reference: Example[]; dev: Example[] } {
  const picked = new Set(shuffled(range(dev.length), rngFor(seed, 'reference')).slice(0, size));
  return {
    reference: [...picked].sort((a, b) => a - b).map((i) => dev[i]!),
    dev: dev.filter((_, i) => !picked.has(i)),
  };
}
