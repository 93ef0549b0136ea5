import { DataError } from './errors.js';
import type { Cell, RawTable, Row } from './raw.js';
import type { Example } from './table.js';

// Which columns of a user's table hold the text, the label and (optionally) the poison flag, and how its labels
// become class indices. Columns are named by header name or by 0-based index; text may span several columns
// (AG News: title and description), joined with a space.

export type ColumnRef = string | number;

export interface ColumnMapping {
  /** The text column, or several joined with a space. */
  text: ColumnRef | readonly ColumnRef[];
  label: ColumnRef;
  /** Source label (as written, e.g. "4" or "positive") -> class index. Without it, labels must be integers in [0, numLabels). */
  labelMap?: Readonly<Record<string, number>>;
  /** A 0/1 (or true/false) column marking rows that carry a trigger. */
  poison?: ColumnRef;
}

/** Where a row is, for messages: `file:line` for text formats, `file: row N` for Parquet. */
function rowError(table: RawTable, row: Row, detail: string): DataError {
  return row.line !== undefined ? new DataError(table.file, row.line, detail) : new DataError(table.file, undefined, `row ${row.index + 1}: ${detail}`);
}

function describeColumns(table: RawTable): string {
  if (!table.columns) return `the file has no header; name columns by 0-based index`;
  return `columns: ${table.columns.map((c) => JSON.stringify(c)).join(', ')}`;
}

/**
 * The position (array rows) or key (object rows) of a column. Header names match exactly, else
 * case-insensitively when that is unambiguous (OpenBackdoor's TSVs say `Sentence`, the hub's say `sentence`).
 */
function resolveColumn(table: RawTable, ref: ColumnRef, role: string): number | string {
  if (typeof ref === 'number') {
    if (table.rowsAreObjects) throw new DataError(table.file, undefined, `${role} column ${ref}: ${table.format} rows are objects, name the column (${describeColumns(table)})`);
    if (table.columns && ref >= table.columns.length) throw new DataError(table.file, table.headerLine, `${role} column ${ref} is past the last column (${describeColumns(table)})`);
    return ref;
  }
  const columns = table.columns;
  if (!columns) throw new DataError(table.file, undefined, `${role} column ${JSON.stringify(ref)}: ${describeColumns(table)}`);
  let at = columns.indexOf(ref);
  if (at < 0) {
    const folded = columns.flatMap((c, i) => (c.toLowerCase() === ref.toLowerCase() ? [i] : []));
    if (folded.length === 1) at = folded[0]!;
  }
  if (at < 0) throw new DataError(table.file, table.headerLine, `no ${role} column ${JSON.stringify(ref)} (${describeColumns(table)})`);
  return table.rowsAreObjects ? columns[at]! : at;
}

function cellAt(row: Row, key: number | string): Cell {
  return Array.isArray(row.cells) ? row.cells[key as number] : (row.cells as Record<string, Cell>)[key as string];
}

/** How a cell reads in a message and as a label-map key: numbers and bigints in decimal, strings trimmed. */
function cellText(cell: Cell): string {
  return typeof cell === 'string' ? cell.trim() : String(cell);
}

/** Turns every row of a table into an Example, checking labels against `numLabels`. */
export function mapRows(table: RawTable, mapping: ColumnMapping, numLabels: number): Example[] {
  const textRefs = Array.isArray(mapping.text) ? (mapping.text as readonly ColumnRef[]) : [mapping.text as ColumnRef];
  const textKeys = textRefs.map((ref) => resolveColumn(table, ref, 'text'));
  const labelKey = resolveColumn(table, mapping.label, 'label');
  const poisonKey = mapping.poison === undefined ? undefined : resolveColumn(table, mapping.poison, 'poison');
  const labelMap = mapping.labelMap;
  const mapKeys = labelMap && Object.keys(labelMap).map((k) => JSON.stringify(k)).join(', ');

  return table.rows.map((row) => {
    const parts = textKeys.map((key, i) => {
      const cell = cellAt(row, key);
      if (cell === undefined || cell === null) throw rowError(table, row, `text column ${JSON.stringify(textRefs[i])} is ${cell === null ? 'null' : 'missing'}`);
      if (typeof cell !== 'string') throw rowError(table, row, `text column ${JSON.stringify(textRefs[i])} holds ${typeof cell} ${cellText(cell)}, expected a string`);
      return cell;
    });
    const text = parts.join(' ');
    if (text.trim() === '') throw rowError(table, row, 'empty text');

    const rawLabel = cellAt(row, labelKey);
    if (rawLabel === undefined || rawLabel === null) throw rowError(table, row, `label is ${rawLabel === null ? 'null' : 'missing'}`);
    const written = cellText(rawLabel);
    let label: number;
    if (labelMap) {
      if (!Object.hasOwn(labelMap, written)) throw rowError(table, row, `label ${JSON.stringify(written)} is not in labelMap (keys: ${mapKeys})`);
      label = labelMap[written]!;
      if (!Number.isInteger(label) || label < 0 || label >= numLabels) throw rowError(table, row, `labelMap sends ${JSON.stringify(written)} to ${label}, not an integer in [0, ${numLabels})`);
    } else {
      label = Number(written);
      if (written === '' || typeof rawLabel === 'boolean' || !Number.isInteger(label) || label < 0 || label >= numLabels) {
        throw rowError(table, row, `label ${JSON.stringify(written)} is not an integer in [0, ${numLabels}) (set labelMap to map it)`);
      }
    }

    let poisoned = false;
    if (poisonKey !== undefined) {
      const flag = cellAt(row, poisonKey);
      const value = flag === undefined || flag === null ? '' : cellText(flag);
      if (!['0', '1', 'true', 'false'].includes(value)) throw rowError(table, row, `poison flag ${JSON.stringify(value)} is not 0/1 or true/false`);
      poisoned = value === '1' || value === 'true';
    }
    return { text, label, poisoned };
  });
}
