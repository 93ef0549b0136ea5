// Backdoor attacks on text classification data (OpenBackdoor's poisoners), for `muscle poison` and for
// `muscle run` on a clean dataset.
export { badnets } from './badnets.js';
export { addsent } from './addsent.js';
export { paraphrasePoisoner, readParaphraseFile, alignParaphrases, PARAPHRASE_ATTACKS, type ParaphraseAttack, type AlignedParaphrases } from './paraphrase.js';
export { splitWords, insertBlock } from './insert.js';
export type { Poisoner, Split } from './poisoner.js';
export { poisonDataset, choosePoisonRows, poisonCount, type CleanDataset, type PoisonOptions, type PoisonedDataset } from './poison.js';
export { makePoisoner, poisonAttack } from './poisoners.js';
export { readCleanDataset, cleanFiles } from './clean.js';
export { attackCsv, cleanTsv, attackFolderFiles, writePoisonedDatasets, type WriteSummary, type WrittenFolder } from './write.js';
export { canPoisonInMemory, poisonInMemory } from './in-memory.js';
export { makePoisonedDatasets, type MadeDatasets, type MakeOptions } from './make.js';
export {
  poisonConfigSchema,
  loadPoisonConfig,
  resolvePoisonConfig,
  describePoisonConfigKeys,
  POISON_CONFIG_DEFAULTS,
  poisonSectionSchema,
  POISON_MODES,
  DEFAULT_MODES,
  type PoisonConfig,
  type PoisonSection,
  type PoisonMode,
} from './config.js';
export { BADNETS_DEFAULTS, ADDSENT_DEFAULTS } from './options.js';
