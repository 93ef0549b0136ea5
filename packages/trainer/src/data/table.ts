import { readFileSync } from 'node:fs';
import { parse } from 'csv-parse/sync';
import { startLine, type ParsedRecord } from './delimited.js';
import { DataError } from './errors.js';

// One text-classification table: a header line and one example per row. CSV and TSV share the quoting rules
// of RFC 4180 (csv-parse); only the delimiter differs.

export interface Example {
  text: string;
  label: number;
  /** The row carries the attacker's trigger (the poison_label column); false where the file has none. */
  poisoned: boolean;
  /** The label before poisoning, where a file records it (the OpenBackdoor CSVs do not). */
  originalLabel?: number;
}

export interface TableFormat {
  delimiter: string;
  /** The expected header, matched case-insensitively. */
  header: readonly string[];
  /** How the header reads in messages. */
  headerText: string;
  toExample(fields: string[], check: FieldCheck): Example;
}

interface FieldCheck {
  label(value: string, column: string): number;
  flag(value: string, column: string): boolean;
}

/** Clean splits: `sentence<TAB>label`. */
export const CLEAN_TSV: TableFormat = {
  delimiter: '\t',
  header: ['sentence', 'label'],
  headerText: 'sentence<TAB>label',
  toExample: ([text, label], check) => ({ text: text!, label: check.label(label!, 'label'), poisoned: false }),
};

/** Poisoned and clean sets of an attack (OpenBackdoor's format): `,0,1,2` = index, text, label, poison_label. */
export const ATTACK_CSV: TableFormat = {
  delimiter: ',',
  header: ['', '0', '1', '2'],
  headerText: ',0,1,2',
  toExample: ([, text, label, poisoned], check) => ({ text: text!, label: check.label(label!, 'label'), poisoned: check.flag(poisoned!, 'poison_label') }),
};


/** Parses a table and validates every row; errors name the file and line. */
export function parseTable(file: string, text: string, format: TableFormat, numLabels: number): Example[] {
  if (text.trim() === '') throw new DataError(file, 1, `empty file; expected a header line "${format.headerText}"`);
  let records: ParsedRecord[];
  try {
    records = parse(text, { delimiter: format.delimiter, info: true, bom: true, relax_column_count: true, relax_quotes: true, skip_empty_lines: true }) as unknown as ParsedRecord[];
  } catch (err) {
    const { lines, message } = err as { lines?: number; message: string };
    throw new DataError(file, lines, message);
  }
  const [head, ...rows] = records;
  const header = head!.record.map((h) => h.trim().toLowerCase());
  if (header.length !== format.header.length || header.some((h, i) => h !== format.header[i])) {
    throw new DataError(file, startLine(head!), `bad header "${head!.record.join(format.delimiter === '\t' ? '<TAB>' : format.delimiter)}"; expected "${format.headerText}"`);
  }
  if (rows.length === 0) throw new DataError(file, head!.info.lines + 1, 'no data rows after the header');

  return rows.map((row) => {
    const line = startLine(row);
    if (row.record.length !== format.header.length) {
      throw new DataError(file, line, `expected ${format.header.length} columns (${format.headerText}), found ${row.record.length}`);
    }
    const check: FieldCheck = {
      label(value, column) {
        const n = Number(value.trim());
        if (value.trim() === '' || !Number.isInteger(n) || n < 0 || n >= numLabels) {
          throw new DataError(file, line, `${column} ${JSON.stringify(value)} is not an integer in [0, ${numLabels})`);
        }
        return n;
      },
      flag(value, column) {
        if (value.trim() !== '0' && value.trim() !== '1') throw new DataError(file, line, `${column} ${JSON.stringify(value)} is not 0 or 1`);
        return value.trim() === '1';
      },
    };
    return format.toExample(row.record, check);
  });
}

export function readTable(file: string, format: TableFormat, numLabels: number): Example[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new DataError(file, undefined, `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return parseTable(file, text, format, numLabels);
}
