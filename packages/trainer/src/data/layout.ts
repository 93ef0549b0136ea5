import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { canPoisonInMemory, poisonInMemory } from '../attacks/in-memory.js';
import type { Attack, RunConfig } from '../config/schema.js';
import { DataError } from './errors.js';
import { range, rngFor, shuffled } from './random.js';
import { ATTACK_CSV, CLEAN_TSV, readTable, type Example } from './table.js';

// The dataset directory layout of the reference implementation (OpenBackdoor's):
//   clean/{train,dev,test}.tsv                    sentence<TAB>label
//   <attack>/train-poison-<rate>.csv               the poisoned training set (rate 1: train-poison-all.csv)
//   <attack>/{dev,test}-clean.csv                  clean sets (clean/{dev,test}.tsv where absent) -> CACC
//   <attack>/{dev,test}-poison.csv                 triggered non-target rows, labelled target -> ASR

/** `dataset` is the layout directory; `seed` draws the `limit` sample; with `targetLabel` and `poison` it also poisons a clean dataset in memory. */
export type DataOptions = { dataset: string } & Pick<RunConfig, 'poisonRate' | 'numLabels' | 'limit'> & Partial<Pick<RunConfig, 'targetLabel' | 'poison'>> & { seed?: number };

export interface AttackFiles {
  train: string;
  devClean: string;
  devPoison: string;
  testClean: string;
  testPoison: string;
}

export type AttackData = { [K in keyof AttackFiles]: Example[] } & { files: AttackFiles };

export function poisonedTrainFile(rate: number): string {
  return `train-poison-${rate === 1 ? 'all' : String(rate)}.csv`;
}

export function attackFiles(dataset: string, attack: Attack, poisonRate: number): AttackFiles {
  const dir = join(dataset, attack);
  const clean = (split: 'dev' | 'test'): string => {
    const own = join(dir, `${split}-clean.csv`);
    return existsSync(own) ? own : join(dataset, 'clean', `${split}.tsv`);
  };
  return {
    train: join(dir, poisonedTrainFile(poisonRate)),
    devClean: clean('dev'),
    devPoison: join(dir, 'dev-poison.csv'),
    testClean: clean('test'),
    testPoison: join(dir, 'test-poison.csv'),
  };
}

/** Fails fast, before any training, when a file of any attack is missing. */
export function checkDataset(options: DataOptions, attacks: readonly Attack[]): void {
  for (const attack of attacks) {
    if (canPoisonInMemory(options, attack)) {
      poisonInMemory(options, attack); // reads and checks every input (paraphrase counts too) now, not mid-run
      continue;
    }
    for (const file of Object.values(attackFiles(options.dataset, attack, options.poisonRate))) {
      if (!existsSync(file)) throw new DataError(file, undefined, `missing (dataset layout: clean/{train,dev,test}.tsv, ${attack}/{${poisonedTrainFile(options.poisonRate)},dev-clean.csv,dev-poison.csv,test-clean.csv,test-poison.csv})`);
    }
  }
}

/**
 * `limit` rows drawn at random (seeded by the file name), kept in file order. Not the first rows:
 * the OpenBackdoor files put every poisoned row at the end, so a prefix holds no poison at all.
 */
export function sampleRows<T>(rows: readonly T[], limit: number, seed: number, file: string): T[] {
  if (limit >= rows.length) return [...rows];
  const keep = shuffled(range(rows.length), rngFor(seed, 'limit', basename(file))).slice(0, limit).sort((a, b) => a - b);
  return keep.map((i) => rows[i]!);
}

/** Reads one split; `.tsv` files are clean splits, `.csv` files are in the attack format. */
export function readSplit(file: string, numLabels: number, limit?: number, seed = 0): Example[] {
  const rows = readTable(file, file.endsWith('.tsv') ? CLEAN_TSV : ATTACK_CSV, numLabels);
  return limit === undefined ? rows : sampleRows(rows, limit, seed, file);
}

/** Every split of one attack, each cut to a seeded random `limit` rows where set. */
export function loadAttackData(options: DataOptions, attack: Attack): AttackData {
  if (canPoisonInMemory(options, attack)) return poisonInMemory(options, attack);
  const files = attackFiles(options.dataset, attack, options.poisonRate);
  const read = (file: string) => readSplit(file, options.numLabels, options.limit, options.seed ?? 0);
  return {
    train: read(files.train),
    devClean: read(files.devClean),
    devPoison: read(files.devPoison),
    testClean: read(files.testClean),
    testPoison: read(files.testPoison),
    files,
  };
}
