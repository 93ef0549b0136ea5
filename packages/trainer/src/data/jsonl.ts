import { DataError } from './errors.js';
import type { Cell, RawTable, Row } from './raw.js';

// JSON Lines: one JSON object per line; blank lines are skipped.

/**
 * V8's parse message without its position (given as a column instead) and without the source excerpt or the
 * `(line 1 column 14)` that newer V8 versions append, so the message reads the same on every Node version.
 */
function jsonReason(err: Error): string {
  const position = /at position (\d+)/.exec(err.message);
  const reason = err.message
    .replace(/ \(line \d+ column \d+\)$/, '')
    .replace(/ in JSON at position \d+$/, '')
    .replace(/ after JSON at position \d+$/, ' after the object')
    .replace(/, ".*" is not valid JSON$/s, '');
  return position ? `${reason} (column ${Number(position[1]) + 1})` : reason;
}

export function parseJsonl(file: string, text: string): RawTable {
  const rows: Row[] = [];
  const columns = new Set<string>();
  const lines = text.replace(/^\uFEFF/, '').split('\n');
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      throw new DataError(file, i + 1, `bad JSON: ${jsonReason(err as Error)}`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw new DataError(file, i + 1, `expected a JSON object per line, found ${Array.isArray(value) ? 'an array' : JSON.stringify(value)}`);
    }
    for (const key of Object.keys(value)) columns.add(key);
    rows.push({ index: rows.length, line: i + 1, cells: value as Record<string, Cell> });
  });
  if (rows.length === 0) throw new DataError(file, undefined, 'no rows (expected one JSON object per line)');
  // Every key any row has, in order of first appearance: a row lacking one is reported when it is read.
  return { file, format: 'jsonl', columns: [...columns], rowsAreObjects: true, rows };
}
