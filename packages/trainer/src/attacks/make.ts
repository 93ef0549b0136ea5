import { readCleanDataset } from './clean.js';
import type { PoisonConfig } from './config.js';
import { poisonAttack } from './poisoners.js';
import type { PoisonedDataset } from './poison.js';
import { writePoisonedDatasets, type WriteSummary } from './write.js';

export interface MadeDatasets {
  /** Rows of the clean training split. */
  trainRows: number;
  poisoned: PoisonedDataset[];
  written: WriteSummary;
}

/**
 * `muscle poison`: reads the clean dataset, poisons it with every attack of the config, then writes the
 * standard layout under `config.out`. Everything is poisoned in memory before the first file is written, so a
 * bad paraphrase file or rate leaves the output directory untouched.
 */
export async function makePoisonedDatasets(config: PoisonConfig, options: { force?: boolean } = {}): Promise<MadeDatasets> {
  const clean = readCleanDataset(config.dataset, config.numLabels);
  const poisoned = config.attacks.map((attack) => poisonAttack(clean, attack, config, { rate: config.rate, targetLabel: config.targetLabel, seed: config.seed }));
  const written = await writePoisonedDatasets(config.out, config.dataset, clean, poisoned, options);
  return { trainRows: clean.train.length, poisoned, written };
}
