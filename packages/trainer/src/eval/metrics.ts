import type { Example } from '../data/table.js';

// CACC and ASR as the paper defines them, plus a per-class view of where the errors are.
// Empty sets give NaN (reported as null): a metric of nothing is undefined, not 0.

/** The predicted class of every row of a [rows * numLabels] logit matrix. */
export function argmaxRows(logits: Float32Array, numLabels: number): Int32Array {
  const rows = logits.length / numLabels;
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    let best = 0;
    for (let c = 1; c < numLabels; c++) if (logits[r * numLabels + c]! > logits[r * numLabels + best]!) best = c;
    out[r] = best;
  }
  return out;
}

/** Share of predictions equal to their labels (CACC on the clean test split). */
export function accuracy(predicted: ArrayLike<number>, labels: ArrayLike<number>): number {
  if (predicted.length !== labels.length) throw new Error(`accuracy: ${predicted.length} predictions for ${labels.length} labels`);
  let hits = 0;
  for (let i = 0; i < labels.length; i++) if (predicted[i] === labels[i]) hits++;
  return hits / labels.length;
}

/** Attack success rate: share of triggered inputs classified as the target label. */
export function attackSuccessRate(predicted: ArrayLike<number>, targetLabel: number): number {
  let hits = 0;
  for (let i = 0; i < predicted.length; i++) if (predicted[i] === targetLabel) hits++;
  return hits / predicted.length;
}

/**
 * The rows ASR is measured on: triggered rows whose true label is not the target (a target-class row
 * classified as the target is no success of the attack). The OpenBackdoor poison sets already hold only
 * such rows and do not record the original label; where a file does, it is used.
 */
export function asrRows(rows: readonly Example[], targetLabel: number): Example[] {
  return rows.filter((row) => row.poisoned && row.originalLabel !== targetLabel);
}

export interface ClassReport {
  label: number;
  support: number;
  precision: number;
  recall: number;
  f1: number;
}

export interface Confusion {
  /** matrix[true][predicted] = count */
  matrix: number[][];
  perClass: ClassReport[];
}

export function confusion(predicted: ArrayLike<number>, labels: ArrayLike<number>, numLabels: number): Confusion {
  const matrix = Array.from({ length: numLabels }, () => new Array<number>(numLabels).fill(0));
  for (let i = 0; i < labels.length; i++) matrix[labels[i]!]![predicted[i]!]!++;
  const perClass = matrix.map((row, c) => {
    const tp = row[c]!;
    const support = row.reduce((a, b) => a + b, 0);
    const predictedC = matrix.reduce((a, r) => a + r[c]!, 0);
    const precision = tp / predictedC;
    const recall = tp / support;
    return { label: c, support, precision, recall, f1: (2 * precision * recall) / (precision + recall) };
  });
  return { matrix, perClass };
}
