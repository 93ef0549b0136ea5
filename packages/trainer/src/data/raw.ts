import { extname } from 'node:path';

// A table as a file format gives it, before column mapping: rows of cells, with where each row is.

export const FORMATS = ['csv', 'tsv', 'jsonl', 'parquet'] as const;
export type DataFormat = (typeof FORMATS)[number];

/** What a cell may hold: text formats give strings, JSONL and Parquet typed values (Parquet int64 as bigint). */
export type Cell = string | number | bigint | boolean | null | undefined | object;

export interface Row {
  /** 0-based position among the data rows. */
  index: number;
  /** 1-based line the row starts on, where the format has lines. */
  line?: number;
  /** Cells by column position (CSV, TSV) or by column name (JSONL objects, Parquet). */
  cells: Cell[] | Record<string, Cell>;
}

export interface RawTable {
  file: string;
  format: DataFormat;
  /** Column names: the header (CSV/TSV with a header), the schema (Parquet), the first object's keys (JSONL). */
  columns?: string[];
  /** The line of the header, for messages about columns. */
  headerLine?: number;
  /** Rows are objects keyed by column name (JSONL, Parquet): columns must be named, not numbered. */
  rowsAreObjects: boolean;
  rows: Row[];
}

const EXTENSIONS: Record<string, DataFormat> = { '.csv': 'csv', '.tsv': 'tsv', '.jsonl': 'jsonl', '.ndjson': 'jsonl', '.parquet': 'parquet' };

/** The format a file name says (`.csv`, `.tsv`, `.jsonl`/`.ndjson`, `.parquet`), if any. */
export function formatOfPath(path: string): DataFormat | undefined {
  return EXTENSIONS[extname(path).toLowerCase()];
}

/** File extensions of a format, the first being the usual one. */
export function extensionsOf(format: DataFormat): string[] {
  return Object.entries(EXTENSIONS).flatMap(([ext, f]) => (f === format ? [ext] : []));
}
