import type { MetricRecord, MetricsWriter } from '../train/types.js';
import { writeFileAtomic } from './atomic.js';

/**
 * metrics.jsonl: one JSON object per line. Lines are kept in memory and the whole file is rewritten
 * atomically at each flush (every epoch end), so the file on disk is always complete and parseable.
 */
export class JsonlFile implements MetricsWriter {
  private readonly lines: string[] = [];
  private dirty = false;

  constructor(readonly path: string) {}

  write(record: MetricRecord): void {
    this.lines.push(JSON.stringify(record));
    this.dirty = true;
  }

  async flush(): Promise<void> {
    if (!this.dirty) return;
    this.dirty = false;
    await writeFileAtomic(this.path, this.lines.map((line) => `${line}\n`).join(''));
  }
}
