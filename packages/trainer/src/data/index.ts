export { DataError } from './errors.js';
export { parseTable, readTable, CLEAN_TSV, ATTACK_CSV, type Example, type TableFormat } from './table.js';
export { attackFiles, checkDataset, loadAttackData, readSplit, poisonedTrainFile, type AttackData, type AttackFiles, type DataOptions } from './layout.js';
export { splitReference } from './reference.js';
export { mulberry32, rngFor, shuffled, range, type Rng } from './random.js';
export { chunks, makeBatch, encodedLength } from './batch.js';
