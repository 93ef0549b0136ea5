import type { Attack } from '../config/schema.js';
import type { Rng } from '../data/random.js';

export type Split = 'train' | 'dev' | 'test';

/** Puts an attack's trigger into texts. */
export interface Poisoner {
  readonly attack: Attack;
  /**
   * The triggered version of `text`, row `row` of `split` (its index in the whole split: paraphrase attacks
   * look the row up). Insertion attacks draw their positions from `rng`, one stream per split.
   */
  trigger(text: string, row: number, split: Split, rng: Rng): string;
}
