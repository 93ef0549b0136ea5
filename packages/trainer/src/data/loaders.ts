import { readdirSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { mapRows, type ColumnMapping, type ColumnRef } from './columns.js';
import { parseDelimited } from './delimited.js';
import { countDuplicates, duplicateWarning, type DuplicateCounts } from './duplicates.js';
import { DataError } from './errors.js';
import { parseJsonl } from './jsonl.js';
import { readParquet } from './parquet.js';
import { extensionsOf, formatOfPath, FORMATS, type DataFormat, type RawTable } from './raw.js';
import { splitDev } from './split.js';
import type { Example } from './table.js';

// A user's clean dataset, in CSV, TSV, JSONL or Parquet, from a directory of split files (train/dev/test,
// hub-style shards data/train-00000-of-00002.parquet included) or named files. These are the clean splits an
// attack poisons; the pre-poisoned OpenBackdoor layout is layout.ts's.

export type SplitName = 'train' | 'dev' | 'test';

/** How to read a dataset's files; the config's `dataset: { path: ... }` form. */
export interface DatasetFiles {
  /** A directory holding the splits, or the training file itself. */
  path: string;
  /** Format of every file; from each file's extension when left out. */
  format?: DataFormat;
  /** CSV/TSV: the first line names the columns (true). */
  header?: boolean;
  /** Text column(s): a name or 0-based index; a list is joined with a space. Default: `text`, else `sentence`. */
  textColumn?: ColumnRef | ColumnRef[];
  /** Default: `label`. */
  labelColumn?: ColumnRef;
  labelMap?: Record<string, number>;
  poisonColumn?: ColumnRef;
  /** Split files, relative to `path` (a directory); `*` matches within a file name. Found by name when left out. */
  train?: string;
  dev?: string;
  test?: string;
  /** Share of train drawn (seeded) as dev when there is no dev file (0.1). */
  devFraction?: number;
}

export interface LoadOptions {
  numLabels: number;
  /** Seeds the dev split drawn from train. */
  seed: number;
  /** How the dataset reads in warnings (its path, or its registry name). */
  label?: string;
  /** A fix-up of every text after reading (the registry's AG News replaces the source's backslashes). */
  transformText?: (text: string) => string;
}

export interface CleanSplits {
  train: Example[];
  dev: Example[];
  test: Example[];
  /** The files each split was read from; dev is `null` when drawn from train. */
  files: { train: string[]; dev: string[] | null; test: string[] };
  duplicates: DuplicateCounts;
  /** One-line warnings for the run's warning channel (duplicates across splits). */
  warnings: string[];
}

/** File names each split goes by, as OpenBackdoor and the hub name them. */
const SPLIT_NAMES: Record<SplitName, string[]> = { train: ['train'], dev: ['dev', 'validation', 'valid', 'val'], test: ['test'] };

const escapeRe = (s: string) => s.replace(/[.+^${}()|[\]\\]/g, '\\$&');

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

function listFiles(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true }).filter((e) => e.isFile() || e.isSymbolicLink()).map((e) => e.name).sort();
  } catch {
    return [];
  }
}

/** Files matching `pattern` (relative to `root`; `*` matches within the last path segment only), sorted. */
export function matchFiles(root: string, pattern: string): string[] {
  const dir = join(root, dirname(pattern));
  const name = basename(pattern);
  if (!name.includes('*')) return listFiles(dir).includes(name) ? [join(dir, name)] : [];
  const re = new RegExp(`^${name.split('*').map(escapeRe).join('[^/]*')}$`);
  return listFiles(dir).filter((f) => re.test(f)).map((f) => join(dir, f));
}

/**
 * The files of one split in a directory, looked up by name: `<name>.<ext>` or shards `<name>-*.<ext>`, in the
 * directory or its `data/` folder (the hub's layout), for the format's extensions (any known one when unset).
 */
function findSplit(dir: string, split: SplitName, format: DataFormat | undefined): string[] {
  const exts = (format ? extensionsOf(format) : FORMATS.flatMap(extensionsOf)).map((e) => escapeRe(e.slice(1)));
  for (const where of [dir, join(dir, 'data')]) {
    for (const name of SPLIT_NAMES[split]) {
      const re = new RegExp(`^${name}(?:[-_][^/]*)?\\.(?:${exts.join('|')})$`, 'i');
      const found = listFiles(where).filter((f) => re.test(f));
      if (found.length) return found.map((f) => join(where, f));
    }
  }
  return [];
}

function splitFiles(spec: DatasetFiles, split: SplitName): string[] {
  const named = spec[split];
  if (isDirectory(spec.path)) {
    if (!named) return findSplit(spec.path, split, spec.format);
    const files = matchFiles(spec.path, named);
    if (files.length === 0) throw new DataError(join(spec.path, named), undefined, `no such ${split} file (dataset.${split} is relative to dataset.path)`);
    return files;
  }
  // A file as path is the training set; other splits are named beside it.
  if (split === 'train' && !named) return [spec.path];
  return named ? matchFiles(dirname(spec.path), named) : [];
}

function formatOf(file: string, format: DataFormat | undefined): DataFormat {
  const detected = format ?? formatOfPath(file);
  if (!detected) throw new DataError(file, undefined, `cannot tell the format from the file name; set dataset.format (${FORMATS.join(' | ')})`);
  return detected;
}

/** Reads one file into a raw table. */
export async function readRawTable(file: string, format: DataFormat, header = true): Promise<RawTable> {
  if (format === 'parquet') return readParquet(file);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new DataError(file, undefined, `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (format === 'jsonl') return parseJsonl(file, text);
  return parseDelimited(file, text, { delimiter: format === 'tsv' ? '\t' : ',', header });
}

/** The default text column: `text`, else `sentence` (any case), as most classification sets name it. */
function defaultTextColumn(table: RawTable): ColumnRef {
  const found = ['text', 'sentence'].find((name) => table.columns?.some((c) => c.toLowerCase() === name));
  if (found) return found;
  const columns = table.columns ? `columns: ${table.columns.map((c) => JSON.stringify(c)).join(', ')}` : 'the file has no header: give a 0-based index';
  throw new DataError(table.file, table.headerLine, `no "text" or "sentence" column; set dataset.textColumn (${columns})`);
}

/** How to read one table: the dataset's column mapping, and the number of classes to check labels against. */
export type TableOptions = Pick<DatasetFiles, 'format' | 'header' | 'textColumn' | 'labelColumn' | 'labelMap' | 'poisonColumn'> & {
  numLabels: number;
};

/** One file of examples, in any format, through the column mapping. */
export async function loadTable(file: string, options: TableOptions): Promise<Example[]> {
  const table = await readRawTable(file, formatOf(file, options.format), options.header ?? true);
  const mapping: ColumnMapping = {
    text: options.textColumn ?? defaultTextColumn(table),
    label: options.labelColumn ?? 'label',
    ...(options.labelMap && { labelMap: options.labelMap }),
    ...(options.poisonColumn !== undefined && { poison: options.poisonColumn }),
  };
  return mapRows(table, mapping, options.numLabels);
}

async function loadFiles(files: string[], spec: DatasetFiles, numLabels: number): Promise<Example[]> {
  const out: Example[] = [];
  for (const file of files) out.push(...(await loadTable(file, { ...spec, numLabels })));
  return out;
}

/**
 * The clean train/dev/test splits of a dataset, dev drawn from train (seeded) where there is no dev file, and
 * a warning where dev or test rows repeat training texts.
 */
export async function loadCleanSplits(spec: DatasetFiles, options: LoadOptions): Promise<CleanSplits> {
  const where = isDirectory(spec.path) ? spec.path : dirname(spec.path);
  const files = { train: splitFiles(spec, 'train'), dev: splitFiles(spec, 'dev'), test: splitFiles(spec, 'test') };
  for (const split of ['train', 'test'] as const) {
    if (files[split].length === 0) {
      const names = SPLIT_NAMES[split].join('|');
      throw new DataError(where, undefined, `no ${split} split (looked for ${names}.<ext> and ${names}-*.<ext> here and in data/); name it with dataset.${split}`);
    }
  }
  const read = async (list: string[]) => {
    const rows = await loadFiles(list, spec, options.numLabels);
    return options.transformText ? rows.map((r) => ({ ...r, text: options.transformText!(r.text) })) : rows;
  };
  let train = await read(files.train);
  const test = await read(files.test);
  let dev: Example[];
  if (files.dev.length) dev = await read(files.dev);
  else ({ train, dev } = splitDev(train, spec.devFraction ?? 0.1, options.seed));
  for (const [split, rows] of [['train', train], ['dev', dev], ['test', test]] as const) {
    if (rows.length === 0) throw new DataError(split === 'dev' && !files.dev.length ? files.train[0]! : files[split][0]!, undefined, `empty ${split} split${split === 'dev' ? ` (devFraction ${spec.devFraction ?? 0.1} of ${train.length} training rows)` : ''}`);
  }
  const duplicates = countDuplicates({ train, dev, test });
  const warning = duplicateWarning(options.label ?? spec.path, duplicates, { dev: dev.length, test: test.length });
  return { train, dev, test, files: { ...files, dev: files.dev.length ? files.dev : null }, duplicates, warnings: warning ? [warning] : [] };
}
