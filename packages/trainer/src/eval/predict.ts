import { chunks, encodedLength, makeBatch } from '../data/batch.js';
import { range } from '../data/random.js';
import type { EncodedTexts, Session } from '../engine/session.js';
import { argmaxRows } from './metrics.js';

/** Thrown between evaluation batches once the run is asked to stop. */
export class Aborted extends Error {
  override readonly name = 'Aborted';
}

/**
 * The predicted class of every encoded text. Texts go in batches of similar length (sorted), so dynamic
 * padding wastes little; the predictions come back in the original order.
 */
export async function predictLabels(session: Session, encoded: EncodedTexts, batchSize: number, signal?: AbortSignal): Promise<Int32Array> {
  const count = encoded.offsets.length - 1;
  const byLength = range(count).sort((a, b) => encodedLength(encoded, a) - encodedLength(encoded, b));
  const out = new Int32Array(count);
  for (const rows of chunks(byLength, batchSize)) {
    if (signal?.aborted) throw new Aborted('evaluation stopped');
    const predicted = argmaxRows(await session.predict(makeBatch(encoded, rows, session.padId)), session.numLabels);
    rows.forEach((row, i) => (out[row] = predicted[i]!));
  }
  return out;
}
