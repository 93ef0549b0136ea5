import type { Rng } from '../data/random.js';
import { insertBlock, splitWords } from './insert.js';
import { BADNETS_DEFAULTS, type BadnetsOptions } from './options.js';
import type { Poisoner } from './poisoner.js';

/**
 * BadNets for text (Kurita et al.; OpenBackdoor's BadNetsPoisoner): `numTriggers` times, a trigger word drawn
 * at random (with replacement) goes in at a random word position. Draw order per insertion: word, then
 * position, as OpenBackdoor.
 */
export function badnets(options: Partial<BadnetsOptions> = {}): Poisoner {
  const { triggers, numTriggers } = { ...BADNETS_DEFAULTS, ...options };
  return {
    attack: 'badnets',
    trigger(text: string, _row: number, _split, rng: Rng): string {
      let words = splitWords(text);
      for (let i = 0; i < numTriggers; i++) {
        const word = triggers[Math.floor(rng() * triggers.length)]!;
        words = insertBlock(words, [word], rng);
      }
      return words.join(' ');
    },
  };
}
