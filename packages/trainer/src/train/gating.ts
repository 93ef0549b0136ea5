import type { GaSettings, StepReport } from '../engine/session.js';

export type GaBranch = StepReport['gaBranch'];

/**
 * The branch of gradient alignment a step should take, from what the engine reports of it (the engine
 * decides inside the step; the trainer checks it decided by the same rule):
 * - no GA settings: 'none';
 * - paper rule: always 'mixed', (1 - rho) a + rho g;
 * - gated rule (reference code): 'projection' (a alone) while the reference set still teaches something,
 *   i.e. nRef > minRefGradNorm and refLoss > minRefLoss; else 'mixed' when the schedule gives a rho (0 at
 *   GAEpoch: the projection itself); else (rho null) 'raw' (g kept).
 */
export function expectedGaBranch(ga: GaSettings | undefined, refLoss: number | null, nRef: number | null): GaBranch {
  if (!ga) return 'none';
  if (ga.rule === 'paper') return 'mixed';
  if (nRef !== null && refLoss !== null && nRef > ga.minRefGradNorm && refLoss > ga.minRefLoss) return 'projection';
  return ga.rho !== null ? 'mixed' : 'raw';
}
