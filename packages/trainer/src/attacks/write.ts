import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'csv-stringify/sync';
import { DataError } from '../data/errors.js';
import { poisonedTrainFile } from '../data/layout.js';
import type { Example } from '../data/table.js';
import { writeFileAtomic } from '../report/atomic.js';
import type { CleanDataset, PoisonedDataset } from './poison.js';

// Writing the OpenBackdoor layout that the loader (data/layout.ts) and other tools read:
//   clean/{train,dev,test}.tsv    sentence<TAB>label
//   <attack>/train-poison-<rate>.csv, train-poison-all.csv, {dev,test}-{clean,poison}.csv    ,0,1,2
// csv-stringify quotes as pandas' to_csv does (only fields holding a delimiter, quote or line break), so a
// file read and written again comes out byte for byte the same.

/** The attack format: header `,0,1,2`, then row index, text, label, poison_label. */
export function attackCsv(rows: readonly Example[]): string {
  return stringify([['', '0', '1', '2'], ...rows.map((r, i) => [String(i), r.text, String(r.label), r.poisoned ? '1' : '0'])]);
}

/** A clean split: header `sentence<TAB>label`. */
export function cleanTsv(rows: readonly Example[]): string {
  return stringify([['sentence', 'label'], ...rows.map((r) => [r.text, String(r.label)])], { delimiter: '\t' });
}

/** The files of one attack's folder, by name. */
export function attackFolderFiles(data: PoisonedDataset): Record<string, string> {
  return {
    [poisonedTrainFile(data.options.rate)]: attackCsv(data.train),
    // at rate 1 the line above already wrote train-poison-all.csv, and with the same rows
    ...(data.options.rate !== 1 && { 'train-poison-all.csv': attackCsv(data.trainAll) }),
    'dev-clean.csv': attackCsv(data.devClean),
    'dev-poison.csv': attackCsv(data.devPoison),
    'test-clean.csv': attackCsv(data.testClean),
    'test-poison.csv': attackCsv(data.testPoison),
  };
}

export interface WrittenFolder {
  dir: string;
  files: string[];
}

export interface WriteSummary {
  /** clean/; no files where it was left as it is (the source dataset's own, or already holding the same splits). */
  clean: WrittenFolder;
  attacks: Array<WrittenFolder & { attack: PoisonedDataset['attack'] }>;
}

function sameDir(a: string, b: string): boolean {
  return existsSync(a) && existsSync(b) && realpathSync(a) === realpathSync(b);
}

/** Whether every file is already in `dir` with exactly this content (a second `muscle poison` into the same out). */
function holds(dir: string, files: Record<string, string>): boolean {
  return Object.entries(files).every(([name, content]) => existsSync(join(dir, name)) && readFileSync(join(dir, name), 'utf8') === content);
}

/**
 * Writes the clean splits and every attack's folder under `out` (`sourceDir`: the layout directory the clean
 * splits came from, if they did). Refuses, before writing anything, to replace
 * an existing folder unless `force`; an existing clean/ that is the source's own or already holds the same
 * splits is left as it is. Every file goes to a temporary name and is renamed into place, so a reader sees a
 * whole file or none.
 */
export async function writePoisonedDatasets(out: string, sourceDir: string | undefined, clean: CleanDataset, poisoned: readonly PoisonedDataset[], options: { force?: boolean } = {}): Promise<WriteSummary> {
  const cleanDir = join(out, 'clean');
  const cleanFiles = { 'train.tsv': cleanTsv(clean.train), 'dev.tsv': cleanTsv(clean.dev), 'test.tsv': cleanTsv(clean.test) };
  const writeClean = !(sourceDir !== undefined && sameDir(cleanDir, join(sourceDir, 'clean'))) && !holds(cleanDir, cleanFiles);
  const folders = [...(writeClean ? [cleanDir] : []), ...poisoned.map((p) => join(out, p.attack))];
  if (!options.force) {
    for (const dir of folders) {
      if (existsSync(dir)) throw new DataError(dir, undefined, 'already exists; pass --force to replace its files, or write to another output directory');
    }
  }

  const summary: WriteSummary = { clean: { dir: cleanDir, files: [] }, attacks: [] };
  if (writeClean) {
    for (const [name, content] of Object.entries(cleanFiles)) await writeFileAtomic(join(cleanDir, name), content);
    summary.clean.files = Object.keys(cleanFiles);
  }
  for (const data of poisoned) {
    const dir = join(out, data.attack);
    const files = attackFolderFiles(data);
    for (const [name, content] of Object.entries(files)) await writeFileAtomic(join(dir, name), content);
    summary.attacks.push({ attack: data.attack, dir, files: Object.keys(files) });
  }
  return summary;
}
