import type { Attack } from '../config/schema.js';
import { DataError } from '../data/errors.js';
import { range, rngFor, shuffled } from '../data/random.js';
import type { Example } from '../data/table.js';
import type { PoisonMode } from './options.js';
import type { Poisoner, Split } from './poisoner.js';

// Building a poisoned dataset from a clean one, the way OpenBackdoor's Poisoner does (poison_part and
// get_non_target): every training row is poisoned once (train-poison-all); a seeded draw of `rate * n` rows
// allowed by the mode takes the poisoned version, the others stay clean; poisoned dev/test sets hold only
// the rows whose label is not the target, triggered and labelled target.

export interface CleanDataset {
  train: Example[];
  dev: Example[];
  test: Example[];
  /** Where each split was read from (error messages). */
  files: Record<Split, string>;
}

export interface PoisonOptions {
  /** Share of the training set to poison, in (0, 1]. */
  rate: number;
  mode: PoisonMode;
  targetLabel: number;
  seed: number;
}

export interface PoisonedDataset {
  attack: Attack;
  options: PoisonOptions;
  /** The clean rows in file order, then the poisoned rows in file order (OpenBackdoor's `clean + poisoned`). */
  train: Example[];
  /** Every training row poisoned and labelled target (train-poison-all), in file order. */
  trainAll: Example[];
  devClean: Example[];
  devPoison: Example[];
  testClean: Example[];
  testPoison: Example[];
  /** Indices into the clean training split of the rows that were poisoned, ascending. */
  poisonedRows: number[];
}

/**
 * The number of rows to poison: OpenBackdoor's `int(rate * n)` (a floor), guarded against floating-point
 * error so that 0.29 of 100 rows is 29, not 28 (0.29 * 100 = 28.999...).
 */
export function poisonCount(rate: number, rows: number): number {
  return Math.floor(rate * rows + 1e-9);
}

/** Whether a row of this label may be poisoned in this mode. */
function allowed(mode: PoisonMode, label: number, targetLabel: number): boolean {
  if (mode === 'clean-label') return label === targetLabel;
  if (mode === 'dirty') return label !== targetLabel;
  return true;
}

/** The training rows to poison: a seeded draw among the rows the mode allows, ascending. */
export function choosePoisonRows(train: readonly Example[], attack: Attack, options: PoisonOptions, file: string): number[] {
  const { rate, mode, targetLabel, seed } = options;
  const count = poisonCount(rate, train.length);
  if (count === 0) throw new DataError(file, undefined, `rate ${rate} of ${train.length} rows poisons no row; raise the rate`);
  const candidates = range(train.length).filter((i) => allowed(mode, train[i]!.label, targetLabel));
  if (candidates.length < count) {
    const which = mode === 'clean-label' ? `of the target label ${targetLabel}` : `whose label is not the target ${targetLabel}`;
    throw new DataError(file, undefined, `${mode} poisoning at rate ${rate} needs ${count} rows ${which}, the split has ${candidates.length}; lower the rate or use mode mix`);
  }
  return shuffled(candidates, rngFor(seed, 'poison', attack, 'rows'))
    .slice(0, count)
    .sort((a, b) => a - b);
}

/** Triggers every row of `rows` in order, one random stream per split; poisoned rows are labelled target. */
function poisonRows(rows: readonly Example[], poisoner: Poisoner, split: Split, options: PoisonOptions, keep: (row: Example) => boolean): Example[] {
  const rng = rngFor(options.seed, 'poison', poisoner.attack, split);
  const out: Example[] = [];
  rows.forEach((row, i) => {
    if (!keep(row)) return;
    out.push({ text: poisoner.trigger(row.text, i, split, rng), label: options.targetLabel, poisoned: true, originalLabel: row.label });
  });
  return out;
}

const asClean = (row: Example): Example => ({ text: row.text, label: row.label, poisoned: false, originalLabel: row.label });

/** One attack's poisoned dataset; the same seed gives the same rows and texts on any machine. */
export function poisonDataset(clean: CleanDataset, poisoner: Poisoner, options: PoisonOptions): PoisonedDataset {
  const trainAll = poisonRows(clean.train, poisoner, 'train', options, () => true);
  const poisonedRows = choosePoisonRows(clean.train, poisoner.attack, options, clean.files.train);
  const picked = new Set(poisonedRows);
  const nonTarget = (row: Example) => row.label !== options.targetLabel;
  return {
    attack: poisoner.attack,
    options,
    train: [...clean.train.flatMap((row, i) => (picked.has(i) ? [] : [asClean(row)])), ...poisonedRows.map((i) => trainAll[i]!)],
    trainAll,
    devClean: clean.dev.map(asClean),
    devPoison: poisonRows(clean.dev, poisoner, 'dev', options, nonTarget),
    testClean: clean.test.map(asClean),
    testPoison: poisonRows(clean.test, poisoner, 'test', options, nonTarget),
    poisonedRows,
  };
}
