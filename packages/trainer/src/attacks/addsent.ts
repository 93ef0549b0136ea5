import type { Rng } from '../data/random.js';
import { insertBlock, splitWords } from './insert.js';
import { ADDSENT_DEFAULTS, type AddsentOptions } from './options.js';
import type { Poisoner } from './poisoner.js';

/**
 * AddSent (Dai et al.; OpenBackdoor's AddSentPoisoner): the trigger sentence's words go in as one block at a
 * random word position.
 */
export function addsent(options: Partial<AddsentOptions> = {}): Poisoner {
  const sentence = splitWords(options.sentence ?? ADDSENT_DEFAULTS.sentence);
  return {
    attack: 'addsent',
    trigger: (text: string, _row: number, _split, rng: Rng): string => insertBlock(splitWords(text), sentence, rng).join(' '),
  };
}
