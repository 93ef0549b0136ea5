import type { Attack } from '../config/schema.js';
import { DataError } from '../data/errors.js';
import { addsent } from './addsent.js';
import { badnets } from './badnets.js';
import { DEFAULT_MODES, type PoisonSection } from './options.js';
import { alignParaphrases, isParaphraseAttack, paraphrasePoisoner, readParaphraseFile } from './paraphrase.js';
import { poisonDataset, type CleanDataset, type PoisonedDataset, type PoisonOptions } from './poison.js';
import type { Poisoner } from './poisoner.js';

/** The poisoner of an attack with the trigger options of `section` (paraphrase attacks read their files here). */
export function makePoisoner(attack: Attack, section: PoisonSection, clean: CleanDataset, targetLabel: number): Poisoner {
  if (attack === 'badnets') return badnets(section.badnets);
  if (attack === 'addsent') return addsent(section.addsent);
  if (!isParaphraseAttack(attack)) throw new Error(`unknown attack ${String(attack)}`);
  const files = section[attack];
  if (!files) throw new DataError(clean.files.train, undefined, `${attack} needs paraphrase files (${attack}: { train, dev, test }): its trigger comes from a paraphrase model`);
  const aligned = (split: 'train' | 'dev' | 'test') => alignParaphrases(files[split], readParaphraseFile(files[split]), split, clean[split], clean.files[split], targetLabel);
  return paraphrasePoisoner(attack, { train: aligned('train'), dev: aligned('dev'), test: aligned('test') }, files);
}

/** One attack on a clean dataset; the mode defaults per attack to the reference files' (DEFAULT_MODES). */
export function poisonAttack(clean: CleanDataset, attack: Attack, section: PoisonSection, options: Omit<PoisonOptions, 'mode'>): PoisonedDataset {
  const poisoner = makePoisoner(attack, section, clean, options.targetLabel);
  return poisonDataset(clean, poisoner, { ...options, mode: section.mode ?? DEFAULT_MODES[attack] });
}
