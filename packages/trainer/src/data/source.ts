import { poisonClean } from '../attacks/in-memory.js';
import { isParaphraseAttack } from '../attacks/paraphrase.js';
import type { CleanDataset } from '../attacks/poison.js';
import { datasetLabel, isRegistryDataset, type DatasetSpec } from '../config/dataset.js';
import type { Attack, RunConfig } from '../config/schema.js';
import { countDuplicates, duplicateWarning } from './duplicates.js';
import { DataError } from './errors.js';
import { checkDataset, loadAttackData, type AttackData, type DataOptions } from './layout.js';
import { loadCleanSplits, type CleanSplits } from './loaders.js';
import { loadRegistryDataset, type DatasetDownload } from './registry.js';

// What a run trains and evaluates on, whichever form its `dataset` takes: the OpenBackdoor layout (pre-poisoned
// <attack>/ folders, or clean/ poisoned in memory), or clean splits from the registry or the user's own files,
// poisoned in memory per attack. Everything is read and checked before training starts.

export type RunDataConfig = Pick<RunConfig, 'dataset' | 'attacks' | 'poisonRate' | 'numLabels' | 'targetLabel' | 'seed' | 'limit' | 'poison'>;

export interface RunDataOptions {
  /** Fetches a registry dataset the hub cache lacks (the hub client's snapshotDownload). */
  download?: DatasetDownload;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
}

export interface RunData {
  /** Each attack's splits, in the order of `attacks`. */
  attacks: Map<Attack, AttackData>;
  /** One-line warnings for the run's warning channel (dev/test rows that repeat training texts). */
  warnings: string[];
}

/** The clean splits of an object-form dataset (a registry name, or the user's files). */
export async function loadDatasetSplits(spec: Exclude<DatasetSpec, string>, config: Pick<RunConfig, 'numLabels' | 'seed'>, options: RunDataOptions = {}): Promise<CleanSplits> {
  if (isRegistryDataset(spec)) {
    return loadRegistryDataset(spec.name, {
      numLabels: config.numLabels,
      seed: config.seed,
      ...(spec.revision !== undefined && { revision: spec.revision }),
      ...(options.env && { env: options.env }),
      ...(options.download && { download: options.download }),
      ...(options.signal && { signal: options.signal }),
    });
  }
  return loadCleanSplits(spec, { numLabels: config.numLabels, seed: config.seed, label: spec.path });
}

/** The poisoners' view of clean splits: one file per split (the first shard; the train file where dev was drawn from it). */
export function asCleanDataset(splits: CleanSplits): CleanDataset {
  const train = splits.files.train[0]!;
  return { train: splits.train, dev: splits.dev, test: splits.test, files: { train, dev: splits.files.dev?.[0] ?? train, test: splits.files.test[0]! } };
}

export async function loadRunData(config: RunDataConfig, options: RunDataOptions = {}): Promise<RunData> {
  const attacks = new Map<Attack, AttackData>();
  const warnings: string[] = [];
  const spec = config.dataset;
  if (typeof spec === 'string') {
    const layout: DataOptions = { ...config, dataset: spec };
    checkDataset(layout, config.attacks);
    for (const attack of config.attacks) {
      const data = loadAttackData(layout, attack);
      attacks.set(attack, data);
      const warning = duplicateWarning(`${spec} (${attack})`, countDuplicates({ train: data.train, dev: data.devClean, test: data.testClean }), { dev: data.devClean.length, test: data.testClean.length });
      if (warning) warnings.push(warning);
    }
    return { attacks, warnings };
  }

  for (const attack of config.attacks) {
    if (isParaphraseAttack(attack) && !config.poison?.[attack]) {
      throw new DataError(datasetLabel(spec), undefined, `${attack} needs paraphrase files (poison.${attack}: { train, dev, test }): its trigger comes from a paraphrase model, and this dataset has no pre-poisoned ${attack} set`);
    }
  }
  const splits = await loadDatasetSplits(spec, config, options);
  warnings.push(...splits.warnings);
  const clean = asCleanDataset(splits);
  for (const attack of config.attacks) attacks.set(attack, poisonClean(clean, config, attack));
  return { attacks, warnings };
}
