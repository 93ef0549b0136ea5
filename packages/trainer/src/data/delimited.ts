import { parse } from 'csv-parse/sync';
import { DataError } from './errors.js';
import type { RawTable, Row } from './raw.js';

// CSV and TSV with RFC 4180 quoting (csv-parse): a field may be quoted, quotes inside it doubled, and then it
// may hold the delimiter and newlines. Quoting is strict here: a stray quote is reported rather than guessed at,
// since a guess silently merges or splits rows.

export interface DelimitedOptions {
  delimiter: ',' | '\t';
  /** The first record names the columns (default true). */
  header: boolean;
}

/** A csv-parse record with `info: true`. */
export interface ParsedRecord {
  record: string[];
  info: { lines: number };
}

/** The line a record starts on (csv-parse reports the line it ends on; quoted fields may span lines). */
export function startLine({ record, info }: ParsedRecord): number {
  let breaks = 0;
  for (const field of record) for (const ch of field) if (ch === '\n') breaks++;
  return info.lines - breaks;
}

const QUOTING: Record<string, string> = {
  CSV_QUOTE_NOT_CLOSED: 'a quoted field is never closed',
  CSV_INVALID_CLOSING_QUOTE: 'text after the closing quote of a field',
  INVALID_OPENING_QUOTE: 'a quote inside an unquoted field',
};

export function parseDelimited(file: string, text: string, options: DelimitedOptions): RawTable {
  const format = options.delimiter === '\t' ? 'tsv' : 'csv';
  if (text.trim() === '') throw new DataError(file, 1, `empty file${options.header ? '; expected a header line' : ''}`);
  let records: ParsedRecord[];
  try {
    records = parse(text, { delimiter: options.delimiter, info: true, bom: true, relax_column_count: true, skip_empty_lines: true }) as unknown as ParsedRecord[];
  } catch (err) {
    const { code, lines, message } = err as { code?: string; lines?: number; message: string };
    const what = code && QUOTING[code];
    if (what) throw new DataError(file, lines, `bad quoting: ${what} (RFC 4180: quote the whole field and double the quotes inside it)`);
    throw new DataError(file, lines, message);
  }
  const head = options.header ? records.shift() : undefined;
  const columns = head?.record.map((c) => c.trim());
  if (head && records.length === 0) throw new DataError(file, head.info.lines + 1, 'no data rows after the header');
  const width = columns?.length ?? records[0]!.record.length;
  const rows: Row[] = records.map((r, index) => {
    const line = startLine(r);
    if (r.record.length !== width) {
      const expected = columns ? `${width} columns as the header (${columns.join(options.delimiter === '\t' ? '<TAB>' : ',')})` : `${width} columns as the first row`;
      throw new DataError(file, line, `expected ${expected}, found ${r.record.length}`);
    }
    return { index, line, cells: r.record };
  });
  return { file, format, ...(columns && { columns, headerLine: startLine(head!) }), rowsAreObjects: false, rows };
}
