import { resolve } from 'node:path';
import * as z from 'zod';
import { FORMATS } from '../data/raw.js';
import { REGISTRY, REGISTRY_NAMES, type RegistryName } from '../data/registry.js';
import type { DatasetFiles } from '../data/loaders.js';
import { ConfigError, formatValue } from './errors.js';

// The run config's `dataset`: a directory in the OpenBackdoor layout (a string, as always), a dataset of the
// paper by name (`{ name: sst2 }`, from the hub cache or downloaded), or the user's own clean files
// (`{ path, format, textColumn, labelColumn, labelMap, ... }`). The descriptions double as `--help` text.

const columnRef = z.union([z.string().min(1), z.int().min(0)]);

export const datasetObjectSchema = z.strictObject({
  name: z.enum(REGISTRY_NAMES).optional().describe(`a dataset of the paper from the Hugging Face hub, cached or downloaded on first use: ${REGISTRY_NAMES.map((n) => `${n} (${REGISTRY[n].repo})`).join(', ')}`),
  revision: z.string().min(1).optional().describe('with name: the hub revision, a branch, tag or commit (main)'),
  path: z.string().min(1).optional().describe('your own clean dataset: a directory with train, test and optionally dev files (train.csv, data/train-*.parquet, ...) or the training file itself (relative to the config file)'),
  format: z.enum(FORMATS).optional().describe('file format: csv, tsv (both RFC 4180 quoting), jsonl or parquet (from each file extension)'),
  header: z.boolean().optional().describe('csv/tsv: the first line names the columns (true)'),
  textColumn: z.union([columnRef, z.array(columnRef).min(1)]).optional().describe('the text column, by name or 0-based index; a list is joined with spaces, e.g. [1, 2] for AG News title and description (text, else sentence)'),
  labelColumn: columnRef.optional().describe('the label column, by name or 0-based index (label)'),
  labelMap: z.record(z.string(), z.int().min(0)).optional().describe('source label -> class index, e.g. { 1: 0, 2: 1, 3: 2, 4: 3 } or { negative: 0, positive: 1 }; without it labels must be integers in [0, numLabels)'),
  poisonColumn: columnRef.optional().describe('a 0/1 column marking rows that already carry a trigger (none)'),
  train: z.string().min(1).optional().describe('the training file(s) relative to path; * matches within a file name (train.<ext>, train-*.<ext>, also under data/)'),
  dev: z.string().min(1).optional().describe('the dev file(s) relative to path (dev, validation, valid or val; else devFraction of train)'),
  test: z.string().min(1).optional().describe('the test file(s) relative to path (test.<ext>, test-*.<ext>)'),
  devFraction: z.number().gt(0).lt(1).optional().describe('share of train drawn (seeded) as dev where no dev file exists (0.1, as OpenBackdoor)'),
});

export const datasetSchema = z
  .union([z.string().min(1), datasetObjectSchema])
  .describe('a directory in the OpenBackdoor layout: clean/{train,dev,test}.tsv and <attack>/*.csv; or { name: sst2 | hsol | lingspam | agnews }; or { path: ..., format, textColumn, labelColumn, ... } for your own clean data (poisoned per attack in memory); relative to the config file');

export interface RegistryDataset {
  name: RegistryName;
  revision?: string;
}

/** The resolved `dataset`: a layout directory, a registry dataset, or the user's clean files (path absolute). */
export type DatasetSpec = string | RegistryDataset | DatasetFiles;

export function isRegistryDataset(spec: DatasetSpec): spec is RegistryDataset {
  return typeof spec === 'object' && 'name' in spec;
}

/** How a dataset reads in messages and warnings. */
export function datasetLabel(spec: DatasetSpec): string {
  if (typeof spec === 'string') return spec;
  return isRegistryDataset(spec) ? `dataset ${spec.name}` : spec.path;
}

/**
 * The number of classes a config gets: a registry dataset's own (an explicit `numLabels` must agree; AG News
 * has 4), else the config's `numLabels` (undefined when it sets none: the caller's default applies).
 */
export function datasetNumLabels(dataset: DatasetSpec, numLabels: number | undefined, file: string): number | undefined {
  if (!isRegistryDataset(dataset)) return numLabels;
  const own = REGISTRY[dataset.name].numLabels;
  if (numLabels !== undefined && numLabels !== own) throw new ConfigError(file, 'numLabels', `got ${numLabels}, expected ${own}: dataset ${dataset.name} has ${own} classes`);
  return own;
}

const FILE_KEYS = ['format', 'header', 'textColumn', 'labelColumn', 'labelMap', 'poisonColumn', 'train', 'dev', 'test', 'devFraction'] as const;

/** Checks what the schema cannot (name or path, not both) and makes paths absolute, relative to `baseDir`. */
export function resolveDataset(raw: z.infer<typeof datasetSchema>, file: string, baseDir: string): DatasetSpec {
  if (typeof raw === 'string') return resolve(baseDir, raw);
  if ((raw.name === undefined) === (raw.path === undefined)) {
    throw new ConfigError(file, 'dataset', `got ${formatValue(raw)}, expected either name (${REGISTRY_NAMES.join(', ')}) or path (your own files), not ${raw.name ? 'both' : 'neither'}`);
  }
  if (raw.name !== undefined) {
    const extra = FILE_KEYS.find((k) => raw[k] !== undefined);
    if (extra) throw new ConfigError(file, `dataset.${extra}`, `got ${formatValue(raw[extra])}, expected nothing: ${raw.name} comes with its own files and columns (${extra} goes with dataset.path)`);
    return { name: raw.name, ...(raw.revision !== undefined && { revision: raw.revision }) };
  }
  if (raw.revision !== undefined) throw new ConfigError(file, 'dataset.revision', `got ${formatValue(raw.revision)}, expected nothing: revision goes with dataset.name`);
  const { name: _name, revision: _revision, ...files } = raw;
  return { ...files, path: resolve(baseDir, raw.path!) } as DatasetFiles;
}
