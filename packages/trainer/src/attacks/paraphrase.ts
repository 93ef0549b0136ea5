import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { parse } from 'csv-parse/sync';
import { DataError } from '../data/errors.js';
import type { Example } from '../data/table.js';
import type { ParaphraseFiles } from './options.js';
import type { Poisoner, Split } from './poisoner.js';

// HiddenKiller (syntactic paraphrases, SCPN) and StyleBkd (style transfer) hide their trigger in the whole
// sentence: a paraphrase model rewrites the row. We run no paraphrase model; the user brings its output, one
// paraphrase per row, and the poisoner swaps it in for the rows it poisons. An empty paraphrase is kept: it
// is what the paraphraser gave (the shared hiddenkiller/train-poison-all.csv has one), and dropping it would
// shift every later row onto the wrong sentence.

export const PARAPHRASE_ATTACKS = ['hiddenkiller', 'stylebkd'] as const;
export type ParaphraseAttack = (typeof PARAPHRASE_ATTACKS)[number];

export function isParaphraseAttack(attack: string): attack is ParaphraseAttack {
  return (PARAPHRASE_ATTACKS as readonly string[]).includes(attack);
}

/** Column names that hold the paraphrase in a CSV/TSV file, in order of preference (`0`: OpenBackdoor's text column). */
const TEXT_COLUMNS = ['paraphrase', 'text', 'sentence', '0'];

function readTableColumn(file: string, text: string, delimiter: string): string[] {
  let records: Array<{ record: string[]; info: { lines: number } }>;
  try {
    records = parse(text, { delimiter, info: true, bom: true, relax_quotes: true, relax_column_count: true, skip_empty_lines: false }) as unknown as typeof records;
  } catch (err) {
    const { lines, message } = err as { lines?: number; message: string };
    throw new DataError(file, lines, message);
  }
  const [head, ...rows] = records;
  if (!head) throw new DataError(file, 1, `empty file; expected a header line naming a column ${TEXT_COLUMNS.join(', ')}`);
  const header = head.record.map((h) => h.trim().toLowerCase());
  const column = header.length === 1 ? 0 : TEXT_COLUMNS.map((name) => header.indexOf(name)).find((i) => i >= 0);
  if (column === undefined) {
    throw new DataError(file, head.info.lines, `no paraphrase column in the header "${head.record.join(delimiter === '\t' ? '<TAB>' : delimiter)}"; name it one of ${TEXT_COLUMNS.join(', ')}`);
  }
  // a blank line is an empty paraphrase in a one-column file, and nothing in a file with more columns
  const data = header.length === 1 ? rows : rows.filter(({ record }) => !(record.length === 1 && record[0] === ''));
  return data.map(({ record }) => record[column] ?? '');
}

function readJsonLines(file: string, text: string): string[] {
  const out: string[] = [];
  text.split(/\r?\n/).forEach((line, i) => {
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new DataError(file, i + 1, 'not valid JSON; expected one JSON string or object per line');
    }
    const field = typeof value === 'object' && value !== null ? TEXT_COLUMNS.map((k) => (value as Record<string, unknown>)[k]).find((v) => typeof v === 'string') : value;
    if (typeof field !== 'string') throw new DataError(file, i + 1, `expected a JSON string or an object with a string field ${TEXT_COLUMNS.slice(0, 3).join(', ')}`);
    out.push(field);
  });
  return out;
}

function readLines(file: string, text: string): string[] {
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  if (lines.at(-1) === '') lines.pop(); // the newline that ends the last line
  return lines;
}

/**
 * The paraphrases of a file, in file order: `.csv`/`.tsv` with a header (column paraphrase, text, sentence or
 * 0, or the only column), `.jsonl` (a string or an object with such a field per line), anything else one
 * paraphrase per line.
 */
export function readParaphraseFile(file: string): string[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new DataError(file, undefined, `cannot read the paraphrase file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const ext = extname(file).toLowerCase();
  if (ext === '.csv') return readTableColumn(file, text, ',');
  if (ext === '.tsv') return readTableColumn(file, text, '\t');
  if (ext === '.jsonl' || ext === '.ndjson') return readJsonLines(file, text);
  return readLines(file, text);
}

/** Paraphrases of one split, by row of the whole split; `undefined` where the file has none (target rows). */
export type AlignedParaphrases = Array<string | undefined>;

/**
 * Lines the paraphrases up with the rows of a clean split. A training file covers every row; a dev or test
 * file covers every row or only the non-target rows (the only ones a poisoned dev/test set holds; a pre-poisoned
 * dev-poison.csv or test-poison.csv has exactly those).
 */
export function alignParaphrases(file: string, paraphrases: readonly string[], split: Split, rows: readonly Example[], splitFile: string, targetLabel: number): AlignedParaphrases {
  if (paraphrases.length === rows.length) return [...paraphrases];
  const nonTarget = rows.filter((r) => r.label !== targetLabel).length;
  if (split !== 'train' && paraphrases.length === nonTarget) {
    let next = 0;
    return rows.map((r) => (r.label === targetLabel ? undefined : paraphrases[next++]));
  }
  const expected = split === 'train' ? `${rows.length}, one per row of ${splitFile} in its order` : `${rows.length} (one per row of ${splitFile}) or ${nonTarget} (one per row whose label is not the target ${targetLabel})`;
  throw new DataError(file, undefined, `${paraphrases.length} paraphrases for ${split}, expected ${expected}`);
}

/** A paraphrase attack's poisoner: a poisoned row is replaced by its paraphrase. */
export function paraphrasePoisoner(attack: ParaphraseAttack, paraphrases: Record<Split, AlignedParaphrases>, files: ParaphraseFiles): Poisoner {
  return {
    attack,
    trigger(_text, row, split) {
      const paraphrase = paraphrases[split][row];
      // alignParaphrases leaves gaps only at target rows, which no poisoned dev/test set holds
      if (paraphrase === undefined) throw new DataError(files[split], undefined, `no paraphrase for row ${row} of ${split}`);
      return paraphrase;
    },
  };
}
