import { join } from 'node:path';
import { CLEAN_TSV, readTable } from '../data/table.js';
import type { CleanDataset } from './poison.js';

/** The clean splits of a dataset directory in the standard layout: clean/{train,dev,test}.tsv. */
export function cleanFiles(dir: string): CleanDataset['files'] {
  return { train: join(dir, 'clean', 'train.tsv'), dev: join(dir, 'clean', 'dev.tsv'), test: join(dir, 'clean', 'test.tsv') };
}

export function readCleanDataset(dir: string, numLabels: number): CleanDataset {
  const files = cleanFiles(dir);
  return {
    train: readTable(files.train, CLEAN_TSV, numLabels),
    dev: readTable(files.dev, CLEAN_TSV, numLabels),
    test: readTable(files.test, CLEAN_TSV, numLabels),
    files,
  };
}
