import { join } from 'node:path';
import { configToYaml } from '../config/resolve.js';
import type { RunConfig } from '../config/schema.js';
import { train, type TrainOptions } from '../train/loop.js';
import type { RunResults } from '../train/types.js';
import { writeFileAtomic } from './atomic.js';
import { JsonlFile } from './jsonl.js';
import { writeResults } from './results.js';

export const RUN_FILES = {
  config: 'config.resolved.yaml',
  metrics: 'metrics.jsonl',
  json: 'results.json',
  markdown: 'results.md',
} as const;

/**
 * Runs the experiment with its files in `dir`: the resolved config first (what ran is always on record),
 * metrics.jsonl flushed every epoch, results.json / results.md rewritten after every method, so a run that
 * stops or crashes leaves the results of what finished.
 */
export async function runInDirectory(config: RunConfig, dir: string, options: Omit<TrainOptions, 'metrics' | 'onResults'> = {}): Promise<RunResults> {
  await writeFileAtomic(join(dir, RUN_FILES.config), configToYaml(config));
  const metrics = new JsonlFile(join(dir, RUN_FILES.metrics));
  try {
    // Every method's end (the last one's included) rewrites the results: no final write needed.
    return await train(config, { ...options, metrics, onResults: (partial) => writeResults(dir, partial) });
  } finally {
    await metrics.flush();
  }
}
