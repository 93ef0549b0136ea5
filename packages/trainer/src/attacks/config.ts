import { dirname, resolve } from 'node:path';
import * as z from 'zod';
import { describeConfigKeys, allowedKeysAt, isIntegerAt } from '../config/describe.js';
import { datasetNumLabels, datasetSchema, resolveDataset, type DatasetSpec } from '../config/dataset.js';
import { ConfigError, formatValue, issueToConfigError } from '../config/errors.js';
import { ATTACKS, type Attack } from '../config/schema.js';
import { readYamlFile } from '../config/yaml.js';
import { ADDSENT_DEFAULTS, BADNETS_DEFAULTS, modeSchema, resolvePoisonPaths, triggerOptionsShape, type AddsentOptions, type BadnetsOptions, type ParaphraseFiles, type PoisonMode } from './options.js';
import { isParaphraseAttack } from './paraphrase.js';

// The `muscle poison` configuration: which clean dataset, which attacks with which options, where to write.
// The descriptions double as `muscle poison --help`. The dataset takes the run config's forms (its schema,
// config/dataset.ts); the run config's `poison:` section (options.ts) shares the trigger options.

export { poisonSectionSchema, POISON_MODES, DEFAULT_MODES, type PoisonSection, type PoisonMode } from './options.js';

export const poisonConfigSchema = z.strictObject({
  dataset: datasetSchema.describe(
    "the clean dataset, in any of muscle run's forms: a directory holding clean/{train,dev,test}.tsv (only those are read); or { name: sst2 | hsol | lingspam | agnews } from the hub cache (downloaded on first use unless HF_HUB_OFFLINE=1); or { path: ..., format, textColumn, labelColumn, labelMap, ... } for your own CSV/TSV/JSONL/Parquet files; relative to the config file",
  ),
  out: z.string().min(1).describe('output directory: clean/ and one <attack>/ folder per attack, in the OpenBackdoor layout (relative to the config file; may be the dataset directory)'),
  attacks: z.array(z.enum(ATTACKS)).min(1).describe('attacks to run, each written to <out>/<attack>/'),
  rate: z.number().gt(0).max(1).optional().describe('poisoned share of the training set, floor(rate * rows) as OpenBackdoor: 692 of 6,920 at 0.1 (0.1)'),
  mode: modeSchema.optional().describe('which rows are poisoned: mix (any class), dirty (non-target rows only) or clean-label (target rows only, label kept); default badnets clean-label, the others mix, as the reference files'),
  targetLabel: z.int().min(0).optional().describe("the attacker's target label (1)"),
  numLabels: z.int().min(2).optional().describe("number of classes; labels are checked against it (2, or the registry dataset's: agnews 4)"),
  seed: z.int().min(0).max(0xffffffff).optional().describe('seed of the row draw, the trigger positions and a dev split drawn from train (42)'),
  ...triggerOptionsShape,
});

export const POISON_CONFIG_DEFAULTS = { rate: 0.1, targetLabel: 1, numLabels: 2, seed: 42 };

/** A validated `muscle poison` config: paths absolute, defaults filled in (but `mode`, which defaults per attack). */
export interface PoisonConfig {
  /** A layout directory (its clean/ is read), a registry dataset, or the user's clean files. */
  dataset: DatasetSpec;
  out: string;
  attacks: Attack[];
  rate: number;
  mode?: PoisonMode;
  targetLabel: number;
  numLabels: number;
  seed: number;
  badnets: BadnetsOptions;
  addsent: AddsentOptions;
  hiddenkiller?: ParaphraseFiles;
  stylebkd?: ParaphraseFiles;
}

/** Every key of the poison config with its description (for `muscle poison --help`). */
export function describePoisonConfigKeys(): Array<{ key: string; description: string }> {
  return describeConfigKeys(poisonConfigSchema);
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Validates a parsed poison config; `file` starts every error message and anchors relative paths. */
export function resolvePoisonConfig(raw: unknown, options: { file: string; overrides?: Record<string, unknown> }): PoisonConfig {
  const { file } = options;
  if (!isMapping(raw)) throw new ConfigError(file, '', `got ${formatValue(raw)}, expected a mapping of config keys (dataset, out, attacks, ...)`);
  const input = { ...raw, ...options.overrides };
  const parsed = poisonConfigSchema.safeParse(input);
  if (!parsed.success) {
    throw issueToConfigError(file, input, parsed.error.issues, { allowedKeys: (path) => allowedKeysAt(path, poisonConfigSchema), isInteger: (path) => isIntegerAt(path, poisonConfigSchema) });
  }
  const cfg = parsed.data;
  const repeated = cfg.attacks.find((a, i) => cfg.attacks.indexOf(a) !== i);
  if (repeated) throw new ConfigError(file, 'attacks', `got ${formatValue(cfg.attacks)}, expected each entry once (${repeated} is repeated)`);
  const baseDir = dirname(resolve(file));
  const dataset = resolveDataset(cfg.dataset, file, baseDir);
  const numLabels = datasetNumLabels(dataset, cfg.numLabels, file) ?? POISON_CONFIG_DEFAULTS.numLabels;
  const targetLabel = cfg.targetLabel ?? POISON_CONFIG_DEFAULTS.targetLabel;
  if (targetLabel >= numLabels) throw new ConfigError(file, 'targetLabel', `got ${targetLabel}, expected a label in [0, ${numLabels}) (numLabels is ${numLabels})`);
  for (const attack of cfg.attacks) {
    if (isParaphraseAttack(attack) && !cfg[attack]) {
      throw new ConfigError(file, attack, `got nothing, expected paraphrase files { train, dev, test }: ${attack}'s trigger comes from a paraphrase model (or run muscle run on a dataset that has the pre-poisoned ${attack}/ folder)`);
    }
  }

  const paths = resolvePoisonPaths({ hiddenkiller: cfg.hiddenkiller, stylebkd: cfg.stylebkd }, baseDir);
  return {
    dataset,
    out: resolve(baseDir, cfg.out),
    attacks: cfg.attacks,
    rate: cfg.rate ?? POISON_CONFIG_DEFAULTS.rate,
    ...(cfg.mode && { mode: cfg.mode }),
    targetLabel,
    numLabels,
    seed: cfg.seed ?? POISON_CONFIG_DEFAULTS.seed,
    badnets: { ...BADNETS_DEFAULTS, ...cfg.badnets },
    addsent: { ...ADDSENT_DEFAULTS, ...cfg.addsent },
    ...(paths.hiddenkiller && { hiddenkiller: paths.hiddenkiller }),
    ...(paths.stylebkd && { stylebkd: paths.stylebkd }),
  };
}

/** Reads, parses and validates a `muscle poison` config file (YAML or JSON). */
export function loadPoisonConfig(file: string, overrides?: Record<string, unknown>): PoisonConfig {
  return resolvePoisonConfig(readYamlFile(file), overrides ? { file, overrides } : { file });
}
