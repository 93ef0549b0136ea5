import { resolve } from 'node:path';
import type { Command } from 'commander';
import { describePoisonConfigKeys, loadPoisonConfig, makePoisonedDatasets, snapshotDownload, type MadeDatasets } from '@musclelora/trainer';
import { DownloadProgress } from '../download-progress.js';
import { keyLines } from '../help.js';
import { withCtrlC } from '../interrupt.js';
import { EXIT, type CliEnv } from '../program.js';

// `muscle poison <config.yaml>`: a clean dataset in (any form of muscle run's dataset: a layout directory's
// clean/, a registry dataset, the user's own files), the standard OpenBackdoor layout out, so that muscle run
// and other tools read it like the pre-poisoned sets.

interface PoisonOptions {
  force?: boolean;
  out?: string;
}

function keysHelp(): string {
  return [
    '',
    'Config keys (YAML; dataset, out and attacks are required):',
    ...keyLines(describePoisonConfigKeys()),
    '',
    'dataset takes the forms of muscle run\'s (dataset.* keys as there):',
    '  dataset: ../data/sst-2                          clean/{train,dev,test}.tsv of the OpenBackdoor layout',
    '  dataset: { name: agnews }                       a dataset of the paper from the hub cache (HF_HOME, HF_HUB_CACHE),',
    '                                                  downloaded on first use unless HF_HUB_OFFLINE=1',
    '  dataset: { path: data/news, format: csv, header: false, textColumn: [1, 2], labelColumn: 0, labelMap: { 1: 0, 2: 1, 3: 2, 4: 3 } }',
    '                                                  your own CSV, TSV, JSONL or Parquet files, labels mapped to class indices',
    '',
    'Writes <out>/clean/{train,dev,test}.tsv (the clean splits as read: labels mapped, dev drawn from train where',
    'none ships) and, per attack, <out>/<attack>/{train-poison-<rate>.csv, train-poison-all.csv, dev-clean.csv,',
    'dev-poison.csv, test-clean.csv, test-poison.csv}. Hub download progress and data warnings go to stderr.',
    'Existing folders are left alone unless --force; each file is written to a temporary name, then renamed.',
    'Exit codes: 0 done, 1 failed, 2 bad config, data or arguments.',
  ].join('\n');
}

/** The summary: one row per attack, then where the clean splits went. */
export function poisonSummary(made: MadeDatasets): string {
  const lines = [
    '| attack | mode | train rows poisoned | dev-poison rows | test-poison rows | files written |',
    '| --- | --- | ---: | ---: | ---: | --- |',
    ...made.poisoned.map((p, i) => {
      const folder = made.written.attacks[i]!;
      return `| ${p.attack} | ${p.options.mode} | ${p.poisonedRows.length} of ${made.trainRows} | ${p.devPoison.length} | ${p.testPoison.length} | ${folder.files.length} in ${folder.dir}/ |`;
    }),
    '',
    made.written.clean.files.length > 0
      ? `Clean splits: ${made.written.clean.files.length} files in ${made.written.clean.dir}/`
      : `Clean splits: ${made.written.clean.dir}/ left as it is (the dataset's own, or already the same splits)`,
  ];
  return `${lines.join('\n')}\n`;
}

async function poisonCommand(configPath: string, opts: PoisonOptions, env: CliEnv): Promise<number> {
  // --out is a path on the command line, so it is relative to the working directory, not to the config file
  const config = loadPoisonConfig(configPath, opts.out ? { out: resolve(opts.out) } : undefined);
  const progress = new DownloadProgress(env.stderr);
  return withCtrlC(env, async (signal) => {
    try {
      const made = await makePoisonedDatasets(config, {
        force: opts.force ?? false,
        // a registry dataset the hub cache lacks is downloaded (not under HF_HUB_OFFLINE=1), progress on stderr
        download: (request) => snapshotDownload({ ...request, onProgress: (event) => progress.handle(event) }),
        signal,
      });
      progress.stop();
      for (const warning of made.warnings) env.stderr.write(`warning: ${warning}\n`);
      env.stdout.write(poisonSummary(made));
      return EXIT.ok;
    } catch (err) {
      progress.stop();
      if (!signal.aborted) throw err;
      env.stderr.write('Stopped before anything was written; what was downloaded stays in the cache and the next run resumes it\n');
      return EXIT.interrupted;
    }
  });
}

/** Adds `poison` to the program (as a subcommand it inherits the program's output and exit handling). */
export function addPoisonCommand(program: Command, env: CliEnv, setExit: (code: number) => void): void {
  program
    .command('poison')
    .description('poison a clean dataset (a clean/ directory, a dataset of the paper by name, or your own CSV/TSV/JSONL/Parquet files) with BadNets, AddSent, HiddenKiller or StyleBkd and write it in the OpenBackdoor layout')
    .argument('<config.yaml>', 'poison configuration (YAML); relative paths in it are relative to its directory')
    .option('--force', 'replace the files of existing <out>/<attack>/ and <out>/clean/ folders')
    .option('--out <dir>', "write to <dir> instead of the config's out")
    .addHelpText('after', keysHelp())
    .action(async (configPath: string, opts: PoisonOptions) => setExit(await poisonCommand(configPath, opts, env)));
}
