import type { Example } from './table.js';

// Rows of the evaluation splits whose text is also a training text: a model scores them from memory, so they
// inflate clean accuracy. Texts are compared after Unicode (NFKC) normalisation, lower-casing and collapsing
// whitespace, so `A  film .` and `a film .` count as one text.

export function normaliseText(text: string): string {
  return text.normalize('NFKC').toLowerCase().replace(/\s+/g, ' ').trim();
}

export interface DuplicateCounts {
  /** Dev rows whose text is a training text. */
  devInTrain: number;
  /** Test rows whose text is a training text. */
  testInTrain: number;
  /** Test rows whose text is a dev text. */
  testInDev: number;
}

function countIn(rows: readonly Example[], texts: ReadonlySet<string>): number {
  let n = 0;
  for (const row of rows) if (texts.has(normaliseText(row.text))) n++;
  return n;
}

export function countDuplicates(splits: { train: readonly Example[]; dev: readonly Example[]; test: readonly Example[] }): DuplicateCounts {
  const train = new Set(splits.train.map((r) => normaliseText(r.text)));
  const dev = new Set(splits.dev.map((r) => normaliseText(r.text)));
  return { devInTrain: countIn(splits.dev, train), testInTrain: countIn(splits.test, train), testInDev: countIn(splits.test, dev) };
}

/** The warning for `counts`, or undefined when no split repeats another's text. */
export function duplicateWarning(what: string, counts: DuplicateCounts, sizes: { dev: number; test: number }): string | undefined {
  const parts: string[] = [];
  if (counts.devInTrain) parts.push(`${counts.devInTrain} of ${sizes.dev} dev rows`);
  if (counts.testInTrain) parts.push(`${counts.testInTrain} of ${sizes.test} test rows`);
  const inTrain = parts.length ? `${parts.join(' and ')} repeat a training text` : '';
  const inDev = counts.testInDev ? `${counts.testInDev} of ${sizes.test} test rows repeat a dev text` : '';
  if (!inTrain && !inDev) return undefined;
  return `${what}: ${[inTrain, inDev].filter(Boolean).join('; ')} (same text after lower-casing and collapsing spaces); they inflate clean accuracy`;
}
