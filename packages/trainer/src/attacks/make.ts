import type { DatasetDownload } from '../data/registry.js';
import { asCleanDataset, loadDatasetSplits } from '../data/source.js';
import { readCleanDataset } from './clean.js';
import type { PoisonConfig } from './config.js';
import { poisonAttack } from './poisoners.js';
import type { CleanDataset, PoisonedDataset } from './poison.js';
import { writePoisonedDatasets, type WriteSummary } from './write.js';

export interface MadeDatasets {
  /** Rows of the clean training split. */
  trainRows: number;
  poisoned: PoisonedDataset[];
  written: WriteSummary;
  /** One-line warnings about the clean data (dev/test rows repeating training texts), for stderr. */
  warnings: string[];
}

export interface MakeOptions {
  /** Replace existing <out>/<attack>/ and <out>/clean/ folders. */
  force?: boolean;
  /** Fetches a registry dataset the hub cache lacks (the hub client's snapshotDownload); without it the cache must hold it. */
  download?: DatasetDownload;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
}

/**
 * The clean splits of the config's dataset: a layout directory's clean/{train,dev,test}.tsv, or through the
 * run's loader (loadDatasetSplits) a registry dataset or the user's own files, with their warnings.
 */
async function readClean(config: PoisonConfig, options: MakeOptions): Promise<{ clean: CleanDataset; warnings: string[] }> {
  const spec = config.dataset;
  if (typeof spec === 'string') return { clean: readCleanDataset(spec, config.numLabels), warnings: [] };
  const splits = await loadDatasetSplits(spec, config, {
    ...(options.download && { download: options.download }),
    ...(options.env && { env: options.env }),
    ...(options.signal && { signal: options.signal }),
  });
  return { clean: asCleanDataset(splits), warnings: splits.warnings };
}

/**
 * `muscle poison`: reads the clean dataset (any form of the run config's `dataset`), poisons it with every
 * attack of the config, then writes the standard layout under `config.out`. Everything is poisoned in memory
 * before the first file is written, so a bad paraphrase file or rate leaves the output directory untouched.
 */
export async function makePoisonedDatasets(config: PoisonConfig, options: MakeOptions = {}): Promise<MadeDatasets> {
  const { clean, warnings } = await readClean(config, options);
  const poisoned = config.attacks.map((attack) => poisonAttack(clean, attack, config, { rate: config.rate, targetLabel: config.targetLabel, seed: config.seed }));
  // a registry dataset or own files have no clean/ of their own: theirs is always written (unless out holds the same)
  const sourceDir = typeof config.dataset === 'string' ? config.dataset : undefined;
  const written = await writePoisonedDatasets(config.out, sourceDir, clean, poisoned, { force: options.force ?? false });
  return { trainRows: clean.train.length, poisoned, written, warnings };
}
