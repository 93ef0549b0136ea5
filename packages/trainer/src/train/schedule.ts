import type { RunConfig } from '../config/schema.js';
import type { GaSettings } from '../engine/session.js';

/** Linear decay from the peak to 0 over all steps, no warm-up (step counted from 0: the first step uses the peak). */
export function learningRate(step: number, totalSteps: number, peak: number): number {
  return peak * Math.max(0, (totalSteps - step) / totalSteps);
}

/**
 * The share rho of the raw gradient mixed into the aligned one, at an epoch counted from 0.
 * - gated (reference code): maxRawGradRatio * (epoch - gaEpoch) / (epochs - gaEpoch) from gaEpoch on
 *   (0 at gaEpoch itself: the mixing branch is then the pure projection); null before gaEpoch or when
 *   maxRawGradRatio is 0: a closed gate keeps the raw gradient;
 * - paper (Eq. 8): rising linearly from 0 at the first epoch to rhoMax at the last.
 */
export function rho(epoch: number, epochs: number, ga: RunConfig['ga']): number | null {
  if (ga.rule === 'paper') return epochs > 1 ? (ga.rhoMax * epoch) / (epochs - 1) : 0;
  if (ga.maxRawGradRatio <= 0 || epoch < ga.gaEpoch) return null;
  return (ga.maxRawGradRatio * (epoch - ga.gaEpoch)) / (epochs - ga.gaEpoch);
}

/** The GA settings the engine gets for every step of an epoch. */
export function gaSettings(epoch: number, epochs: number, ga: RunConfig['ga']): GaSettings {
  return { rule: ga.rule, rho: rho(epoch, epochs, ga), minRefLoss: ga.minRefLoss, minRefGradNorm: ga.minRefGradNorm };
}
