import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Attack } from '../config/schema.js';
import { poisonedTrainFile, sampleRows, type AttackData, type DataOptions } from '../data/layout.js';
import type { Example } from '../data/table.js';
import { readCleanDataset } from './clean.js';
import type { CleanDataset } from './poison.js';
import { isParaphraseAttack } from './paraphrase.js';
import { poisonAttack } from './poisoners.js';

/** The target label when the options name none (the run config's default). */
const DEFAULT_TARGET_LABEL = 1;

// `muscle run` on a clean dataset: where an attack has no pre-poisoned folder, poison in memory with the
// run's seed, poisonRate and targetLabel. The result is exactly what `muscle poison` with the same settings
// would write and the loader would read back, `limit` samples included.

/**
 * Whether `attack` is poisoned in memory: the dataset has clean/ but no <attack>/ folder, and the attack
 * needs no paraphrase model or the run config's `poison:` section names its paraphrase files.
 */
export function canPoisonInMemory(options: DataOptions, attack: Attack): boolean {
  if (existsSync(join(options.dataset, attack)) || !existsSync(join(options.dataset, 'clean'))) return false;
  return !isParaphraseAttack(attack) || options.poison?.[attack] !== undefined;
}

/** Every split of one attack, poisoned in memory, each cut to a seeded random `limit` rows where set. */
export function poisonInMemory(options: DataOptions, attack: Attack): AttackData {
  return poisonClean(readCleanDataset(options.dataset, options.numLabels), options, attack);
}

/** The same from clean splits already read (a registry dataset, or the user's own files in any format). */
export function poisonClean(clean: CleanDataset, options: Omit<DataOptions, 'dataset'>, attack: Attack): AttackData {
  const seed = options.seed ?? 0;
  const data = poisonAttack(clean, attack, options.poison ?? {}, { rate: options.poisonRate, targetLabel: options.targetLabel ?? DEFAULT_TARGET_LABEL, seed });
  // `limit` draws its sample by file name: take the names `muscle poison` would write, so both routes agree
  const cut = (rows: Example[], name: string) => (options.limit === undefined ? rows : sampleRows(rows, options.limit, seed, name));
  return {
    train: cut(data.train, poisonedTrainFile(options.poisonRate)),
    devClean: cut(data.devClean, 'dev-clean.csv'),
    devPoison: cut(data.devPoison, 'dev-poison.csv'),
    testClean: cut(data.testClean, 'test-clean.csv'),
    testPoison: cut(data.testPoison, 'test-poison.csv'),
    // the files the rows came from, for messages
    files: { train: clean.files.train, devClean: clean.files.dev, devPoison: clean.files.dev, testClean: clean.files.test, testPoison: clean.files.test },
  };
}
