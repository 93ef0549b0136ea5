import { dirname, resolve } from 'node:path';
import * as YAML from 'yaml';
import { defaultsFor } from './defaults.js';
import { allowedKeysAt, isIntegerAt } from './describe.js';
import { ConfigError, formatValue, issueToConfigError } from './errors.js';
import { detectFamily, localModelDir, looksLikePath, modelFilesDir, modelPath } from './model.js';
import { datasetNumLabels, resolveDataset } from './dataset.js';
import { rawConfigSchema, type RunConfig } from './schema.js';
import { readYamlFile } from './yaml.js';
import { resolvePoisonPaths } from '../attacks/options.js';

export interface ResolveOptions {
  /** The config file, as the user named it: error messages start with it; relative paths are relative to its directory. */
  file: string;
  /** Keys that replace the file's (command-line options), validated like the file's own. */
  overrides?: Record<string, unknown>;
}

function isMapping(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function firstRepeat(list: readonly string[]): string | undefined {
  return list.find((item, i) => list.indexOf(item) !== i);
}

/**
 * Validates a parsed config and fills in every default from the model family, making paths absolute.
 * The result is itself a valid config: resolving it again gives it back unchanged.
 */
export function resolveConfig(raw: unknown, options: ResolveOptions): RunConfig {
  const { file } = options;
  if (!isMapping(raw)) throw new ConfigError(file, '', `got ${formatValue(raw)}, expected a mapping of config keys (name, model, dataset, attacks, ...)`);
  const input = { ...raw, ...options.overrides };
  const parsed = rawConfigSchema.safeParse(input);
  if (!parsed.success) throw issueToConfigError(file, input, parsed.error.issues, { allowedKeys: allowedKeysAt, isInteger: isIntegerAt });
  const cfg = parsed.data;
  const baseDir = dirname(resolve(file));

  // A model written as a path need not exist yet (it may be downloaded later): the run checks it before training.
  const model = looksLikePath(cfg.model) ? modelPath(cfg.model, baseDir) : (localModelDir(cfg.model, baseDir) ?? cfg.model);
  let family = cfg.family;
  if (!family) {
    const detected = detectFamily(cfg.model, modelFilesDir(model, baseDir));
    if ('error' in detected) throw new ConfigError(file, 'family', detected.error);
    family = detected.family;
  }
  const defaults = defaultsFor(cfg.model, family);

  for (const key of ['attacks', 'methods'] as const) {
    const repeated = firstRepeat(cfg[key] ?? []);
    if (repeated) throw new ConfigError(file, key, `got ${formatValue(cfg[key])}, expected each entry once (${repeated} is repeated)`);
  }
  const dataset = resolveDataset(cfg.dataset, file, baseDir);
  // A registry dataset knows its classes (AG News: 4); an explicit numLabels must agree.
  const numLabels = datasetNumLabels(dataset, cfg.numLabels, file) ?? defaults.numLabels;
  const targetLabel = cfg.targetLabel ?? defaults.targetLabel;
  if (targetLabel >= numLabels) throw new ConfigError(file, 'targetLabel', `got ${targetLabel}, expected a label in [0, ${numLabels}) (numLabels is ${numLabels})`);

  // Keys in schema order, so the resolved YAML reads like a documented config.
  const resolved: RunConfig = {
    name: cfg.name,
    model,
    family,
    dataset,
    attacks: cfg.attacks,
    methods: cfg.methods ?? defaults.methods,
    poisonRate: cfg.poisonRate ?? defaults.poisonRate,
    targetLabel,
    numLabels,
    epochs: cfg.epochs ?? defaults.epochs,
    batchSize: cfg.batchSize ?? defaults.batchSize,
    maxLength: cfg.maxLength ?? defaults.maxLength,
    lr: cfg.lr ?? defaults.lr,
    methodLr: cfg.methodLr ?? {},
    seed: cfg.seed ?? defaults.seed,
    device: cfg.device ?? defaults.device,
    precision: cfg.precision ?? defaults.precision,
    attention: cfg.attention ?? defaults.attention,
    cudaGraphs: cfg.cudaGraphs ?? defaults.cudaGraphs,
    select: cfg.select ?? defaults.select,
    ...(cfg.limit !== undefined && { limit: cfg.limit }),
    lora: { ...defaults.lora, ...cfg.lora },
    mslr: { ...defaults.mslr, ...cfg.mslr },
    ga: { ...defaults.ga, ...cfg.ga },
    trainHead: cfg.trainHead ?? defaults.trainHead,
    optimizer: { ...defaults.optimizer, ...cfg.optimizer },
    dropout: cfg.dropout ?? defaults.dropout,
    ...(cfg.poison && { poison: resolvePoisonPaths(cfg.poison, baseDir) }),
  };
  return resolved;
}

/** Reads, parses and resolves a YAML (or JSON) config file. */
export function loadConfigFile(file: string, overrides?: Record<string, unknown>): RunConfig {
  return resolveConfig(readYamlFile(file), overrides ? { file, overrides } : { file });
}

/** The resolved config as YAML (`--print-config`, config.resolved.yaml); lists of scalars stay on one line. */
export function configToYaml(config: RunConfig): string {
  const doc = new YAML.Document(config);
  YAML.visit(doc, {
    Seq(_, node) {
      if (node.items.every((item) => YAML.isScalar(item))) node.flow = true;
    },
  });
  return doc.toString({ lineWidth: 0 });
}
