import type { Batch, EncodedTexts } from '../engine/session.js';

/** Splits `items` into consecutive chunks of `size` (the last may be shorter). */
export function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Number of tokens of encoded text i. */
export function encodedLength(encoded: EncodedTexts, i: number): number {
  return encoded.offsets[i + 1]! - encoded.offsets[i]!;
}

/**
 * The batch of encoded texts `rows`, padded to its own longest row (dynamic padding: short batches cost
 * short sequences), with labels where given.
 */
export function makeBatch(encoded: EncodedTexts, rows: readonly number[], padId: number, labels?: ArrayLike<number>): Batch {
  const batch = rows.length;
  let seq = 1;
  for (const r of rows) seq = Math.max(seq, encodedLength(encoded, r));
  const ids = new Int32Array(batch * seq).fill(padId);
  const mask = new Int32Array(batch * seq);
  rows.forEach((r, b) => {
    const start = encoded.offsets[r]!;
    const len = encodedLength(encoded, r);
    ids.set(encoded.ids.subarray(start, start + len), b * seq);
    mask.fill(1, b * seq, b * seq + len);
  });
  if (!labels) return { ids, mask, batch, seq };
  return { ids, mask, labels: Int32Array.from(rows, (r) => labels[r]!), batch, seq };
}
