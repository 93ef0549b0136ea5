import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, expect } from 'vitest';
import { DataError } from '../src/data/index.js';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** The shared real data beside the repository (see ../shared/data/README.md). */
export const sharedDir = resolve(repoRoot, '..', 'shared');
export const sst2 = join(sharedDir, 'data', 'sst-2');

const made: string[] = [];
afterEach(() => {
  for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A temporary directory, removed after the test. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'muscle-test-'));
  made.push(dir);
  return dir;
}

/** Writes files (path -> content) under `dir`, making folders as needed; returns `dir`. */
export function writeFiles(dir: string, files: Record<string, string>): string {
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  return dir;
}

/** A model directory holding only config.json: enough for family detection and the fake sessions. */
export function modelDir(modelType: string): string {
  return writeFiles(tempDir(), { 'config.json': JSON.stringify({ model_type: modelType }) });
}

const csvQuote = (text: string) => (/[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text);

/** An attack-format CSV (`,0,1,2`) from rows of [text, label, poisoned]. */
export function attackCsv(rows: Array<[string, number, 0 | 1]>): string {
  return [',0,1,2', ...rows.map(([text, label, poisoned], i) => `${i},${csvQuote(text)},${label},${poisoned}`)].join('\n') + '\n';
}

export interface SyntheticRow {
  text: string;
  label: number;
  poisoned?: boolean;
}

/** A dataset directory in the OpenBackdoor layout with one attack (badnets), from in-memory splits. */
export function writeDataset(splits: { train: SyntheticRow[]; devClean: SyntheticRow[]; devPoison: SyntheticRow[]; testClean: SyntheticRow[]; testPoison: SyntheticRow[] }): string {
  const csv = (rows: SyntheticRow[]) => attackCsv(rows.map((r) => [r.text, r.label, r.poisoned ? 1 : 0]));
  return writeFiles(tempDir(), {
    'clean/train.tsv': 'sentence\tlabel\n' + splits.train.filter((r) => !r.poisoned).map((r) => `${r.text}\t${r.label}`).join('\n') + '\n',
    'badnets/train-poison-0.1.csv': csv(splits.train),
    'badnets/dev-clean.csv': csv(splits.devClean),
    'badnets/dev-poison.csv': csv(splits.devPoison),
    'badnets/test-clean.csv': csv(splits.testClean),
    'badnets/test-poison.csv': csv(splits.testPoison),
  });
}

/** The commit of the hand-made hub cache's snapshots. */
export const COMMIT = 'a'.repeat(40);

/**
 * A dataset repo in a hand-made Hugging Face cache under `home` (HF_HOME), laid out as huggingface_hub writes
 * it: file contents in blobs/<sha256>, snapshots/<commit>/<path> symlinks to them, refs/<revision> -> commit.
 */
export function cacheRepo(home: string, repo: string, files: Record<string, string | Buffer>, options: { commit?: string; ref?: string | null } = {}): string {
  const repoDir = join(home, 'hub', `datasets--${repo.replace('/', '--')}`);
  const commit = options.commit ?? COMMIT;
  const snapshot = join(repoDir, 'snapshots', commit);
  for (const [path, content] of Object.entries(files)) {
    const etag = createHash('sha256').update(content).digest('hex');
    const blob = join(repoDir, 'blobs', etag);
    mkdirSync(dirname(blob), { recursive: true });
    writeFileSync(blob, content);
    const link = join(snapshot, path);
    mkdirSync(dirname(link), { recursive: true });
    symlinkSync(relative(dirname(link), blob), link);
  }
  if (options.ref !== null) {
    mkdirSync(join(repoDir, 'refs'), { recursive: true });
    writeFileSync(join(repoDir, 'refs', options.ref ?? 'main'), commit);
  }
  return snapshot;
}

/** The message of the DataError `promise` rejects with (fails the test when it resolves or throws another error). */
export async function dataErrorOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(DataError);
    return (err as Error).message;
  }
  throw new Error('expected a DataError');
}
