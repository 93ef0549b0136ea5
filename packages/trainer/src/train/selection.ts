import type { RunConfig } from '../config/schema.js';

/**
 * The score the kept checkpoint maximises. A defender sees only clean dev data, so it selects by clean dev
 * accuracy. The reference code's undefended runs select as an attacker would, by the mean of clean dev
 * accuracy and poisoned dev ASR; `select: attacker` reproduces the paper's Vanilla row that way.
 */
export function selectionScore(select: RunConfig['select'], devAcc: number, devAsr: number): number {
  return select === 'defender' ? devAcc : (devAcc + devAsr) / 2;
}
