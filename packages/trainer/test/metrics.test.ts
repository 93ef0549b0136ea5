import { describe, expect, it } from 'vitest';
import { accuracy, argmaxRows, asrRows, attackSuccessRate, confusion } from '../src/eval/index.js';

describe('metrics', () => {
  it('argmax of each row of logits', () => {
    expect([...argmaxRows(Float32Array.from([0.1, 0.9, 2, -1, 0.5, 0.5]), 2)]).toEqual([1, 0, 0]);
    expect([...argmaxRows(Float32Array.from([0, 1, 3, 5, 4, 1]), 3)]).toEqual([2, 0]);
    expect([...argmaxRows(Float32Array.from([1, 1]), 2)]).toEqual([0]); // ties go to the lower class
  });

  it('accuracy (CACC)', () => {
    expect(accuracy([1, 0, 1, 1], [1, 1, 1, 0])).toBe(0.5);
    expect(accuracy([], [])).toBeNaN();
    expect(() => accuracy([1], [1, 0])).toThrowError('accuracy: 1 predictions for 2 labels');
  });

  it('attack success rate: share classified as the target', () => {
    expect(attackSuccessRate([1, 1, 0, 1], 1)).toBe(0.75);
    expect(attackSuccessRate([2, 0, 2], 2)).toBeCloseTo(2 / 3, 15);
  });

  it('ASR rows: triggered rows whose true label is not the target', () => {
    const rows = [
      { text: 'a', label: 1, poisoned: true },
      { text: 'b', label: 1, poisoned: true, originalLabel: 1 },
      { text: 'c', label: 1, poisoned: false },
      { text: 'd', label: 1, poisoned: true, originalLabel: 0 },
    ];
    expect(asrRows(rows, 1).map((r) => r.text)).toEqual(['a', 'd']);
  });

  it('confusion matrix and per-class precision, recall, F1', () => {
    // true:      0 0 0 1 1 2
    // predicted: 0 1 0 1 1 1
    const c = confusion([0, 1, 0, 1, 1, 1], [0, 0, 0, 1, 1, 2], 3);
    expect(c.matrix).toEqual([
      [2, 1, 0],
      [0, 2, 0],
      [0, 1, 0],
    ]);
    expect(c.perClass[0]).toEqual({ label: 0, support: 3, precision: 1, recall: 2 / 3, f1: 0.8 });
    expect(c.perClass[1]).toMatchObject({ support: 2, precision: 0.5, recall: 1 });
    expect(c.perClass[1]!.f1).toBeCloseTo(2 / 3, 15);
    expect(c.perClass[2]).toMatchObject({ support: 1, recall: 0 });
    expect(c.perClass[2]!.precision).toBeNaN(); // never predicted
  });
});
