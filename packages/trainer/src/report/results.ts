import { join } from 'node:path';
import type { Attack, Method } from '../config/schema.js';
import type { MethodResult, RunResults } from '../train/types.js';
import { writeFileAtomic } from './atomic.js';

// results.json (everything, for tools) and results.md (the paper's table: methods by attacks, CACC / ASR).

const SELECTION_NOTE = {
  defender: 'best clean dev accuracy',
  attacker: 'best mean of clean dev accuracy and poisoned dev ASR',
} as const;

/** A share as a percentage with two decimals (`unit` appended), or a dash for a missing or undefined value. */
export function formatPercent(value: number | null, unit = ''): string {
  return value === null || Number.isNaN(value) ? '–' : `${(100 * value).toFixed(2)}${unit}`;
}

function unique<T>(items: readonly T[]): T[] {
  return [...new Set(items)];
}

/** The Markdown table: one row per method, CACC and ASR columns per attack. */
export function resultsMarkdown(run: RunResults): string {
  const attacks: Attack[] = unique(run.results.map((r) => r.attack));
  const methods: Method[] = unique(run.results.map((r) => r.method));
  const cell = new Map(run.results.map((r) => [`${r.attack}/${r.method}`, r]));
  const lines = [
    `# Results: ${run.name}`,
    '',
    `Model \`${run.model}\` (${run.family}), poison rate ${run.poisonRate}, target label ${run.targetLabel}.${run.aborted ? ' **The run was stopped early; the table is partial.**' : ''}`,
    '',
    `| Method | Selection | Device | ${attacks.map((a) => `${a} CACC | ${a} ASR`).join(' | ')} |`,
    `| --- | --- | --- | ${attacks.map(() => '---: | ---:').join(' | ')} |`,
  ];
  for (const method of methods) {
    const rows = attacks.map((a) => cell.get(`${a}/${method}`));
    const select = unique(rows.flatMap((r) => (r ? [r.select] : []))).join(', ');
    // where the engine ran this method (one value unless its attacks ran on different devices); a dash when it did not say
    const device = unique(rows.flatMap((r) => (r?.device ? [r.device.replaceAll('|', '\\|')] : []))).join(', ') || '–';
    const cells = rows.map((r: MethodResult | undefined) => {
      if (!r) return '– | –';
      if (r.status === 'aborted') return '_stopped_ | _stopped_';
      return `${formatPercent(r.cacc)} | ${formatPercent(r.asr)}`;
    });
    lines.push(`| ${method} | ${select} | ${device} | ${cells.join(' | ')} |`);
  }
  const selections = unique(run.results.map((r) => r.select));
  lines.push(
    '',
    `CACC: accuracy (%) on the clean test split. ASR: share (%) of the poisoned test rows whose true label is not ${run.targetLabel} that are classified as ${run.targetLabel}. ` +
      `Each row reports the epoch selected by its rule: ${selections.map((s) => `${s} = ${SELECTION_NOTE[s]}`).join('; ')}.`,
    '',
  );
  return lines.join('\n');
}

export function resultsJson(run: RunResults): string {
  // NaN (a metric of an empty set) becomes null, as JSON has no NaN.
  return `${JSON.stringify(run, null, 2)}\n`;
}

/** Writes results.json and results.md into `dir`, each atomically. */
export async function writeResults(dir: string, run: RunResults): Promise<void> {
  await writeFileAtomic(join(dir, 'results.json'), resultsJson(run));
  await writeFileAtomic(join(dir, 'results.md'), resultsMarkdown(run));
}
