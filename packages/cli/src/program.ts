import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import {
  ConfigError,
  DataError,
  DEVICE_WORDS,
  isDevice,
  PRECISIONS,
  HubError,
  ModelNotFoundError,
  NativeEngineError,
  RUN_FILES,
  configToYaml,
  describeConfigKeys,
  loadConfigFile,
  resultsMarkdown,
  runInDirectory,
  type Device,
  type OpenSession,
} from '@musclelora/trainer';
import { addDownloadCommand } from './commands/download.js';
import { addPoisonCommand } from './commands/poison.js';
import { keyLines } from './help.js';
import { withCtrlC } from './interrupt.js';
import { ProgressReporter, type Output } from './progress.js';

/** What the CLI talks to; tests replace it. */
export interface CliEnv {
  stdout: Output;
  stderr: Output;
  /** The engine; the native one by default. */
  openSession?: OpenSession;
  /** Where SIGINT arrives (process by default). */
  signals?: Pick<NodeJS.Process, 'on' | 'off'>;
}

/** Exit codes: 0 success, 1 failure, 2 bad input (config, data, usage), 130 stopped by Ctrl-C. */
export const EXIT = { ok: 0, failure: 1, usage: 2, interrupted: 130 } as const;

const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

function parseSeed(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 0xffffffff) throw new InvalidArgumentError('expected an integer in [0, 4294967295]');
  return n;
}

function parseDevice(value: string): Device {
  if (!isDevice(value)) throw new InvalidArgumentError(`expected one of ${DEVICE_WORDS}`);
  return value;
}

function configKeysHelp(): string {
  return [
    '',
    'Config keys (YAML; only name, model, dataset and attacks are required, the rest defaults per model family):',
    ...keyLines(describeConfigKeys()),
    '',
    'Outputs in <out>/<name>/: config.resolved.yaml, metrics.jsonl, results.json, results.md.',
    'Ctrl-C stops after the current step and keeps the results so far; a second Ctrl-C quits at once.',
    'Exit codes: 0 done, 1 failed, 2 bad config, data or arguments, 130 stopped by Ctrl-C.',
    'Set MUSCLE_DEBUG=1 to see stack traces of unexpected errors.',
  ].join('\n');
}

interface RunOptions {
  printConfig?: boolean;
  out: string;
  device?: Device;
  precision?: (typeof PRECISIONS)[number];
  seed?: number;
}

async function runCommand(configPath: string, opts: RunOptions, env: CliEnv): Promise<number> {
  const overrides = {
    ...(opts.device && { device: opts.device }),
    ...(opts.precision && { precision: opts.precision }),
    ...(opts.seed !== undefined && { seed: opts.seed }),
  };
  const config = loadConfigFile(configPath, overrides);
  if (opts.printConfig) {
    env.stdout.write(configToYaml(config));
    return EXIT.ok;
  }

  const dir = join(opts.out, config.name);
  const progress = new ProgressReporter(env.stderr);
  const stopping = () => {
    progress.stop();
    env.stderr.write('\nStopping after the current step (Ctrl-C again to quit at once)...\n');
  };
  try {
    const run = await withCtrlC(env, (signal) => runInDirectory(config, dir, {
      ...(env.openSession && { openSession: env.openSession }),
      onProgress: (event) => progress.handle(event),
      signal,
    }), stopping);
    progress.stop();
    if (run.aborted) {
      env.stderr.write(run.results.length > 0 ? `Stopped. Partial results in ${join(dir, RUN_FILES.markdown)} (and ${RUN_FILES.json}, ${RUN_FILES.metrics})\n` : `Stopped before any method finished; the resolved config is in ${join(dir, RUN_FILES.config)}\n`);
      return EXIT.interrupted;
    }
    env.stdout.write(`${resultsMarkdown(run)}\nResults in ${dir}/\n`);
    return EXIT.ok;
  } finally {
    progress.stop();
  }
}

function buildProgram(env: CliEnv, setExit: (code: number) => void): Command {
  const program = new Command('muscle')
    .description('Train a clean text classifier from a possibly backdoor-poisoned dataset (MuScleLoRA, ACL 2024).')
    .version(VERSION, '-V, --version', 'print the version')
    .helpOption('-h, --help', 'explain the command and its options')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeOut: (s) => env.stdout.write(s), writeErr: (s) => env.stderr.write(s) });

  program
    .command('run')
    .description('train every method of the config on every attack, then report CACC and ASR')
    .argument('<config.yaml>', 'run configuration (YAML); relative paths in it are relative to its directory')
    .option('--print-config', 'print the fully resolved configuration (every default filled in) and exit')
    .option('--out <dir>', 'write results to <dir>/<name>/', 'runs')
    .option('--device <device>', `where the engine runs, overriding the config's device: ${DEVICE_WORDS} ('auto': GPU 0 when found)`, parseDevice)
    .addOption(new Option('--precision <precision>', "GPU precision, overriding the config's ('bf16': frozen weights and their GEMMs in bf16; 'f32': the CPU's numbers; 'auto': bf16 on a GPU)").choices(PRECISIONS))
    .option('--seed <n>', "seed of shuffling, reference draw and initialisation, overriding the config's seed", parseSeed)
    .addHelpText('after', configKeysHelp())
    .action(async (configPath: string, opts: RunOptions) => setExit(await runCommand(configPath, opts, env)));
  addPoisonCommand(program, env, setExit);
  addDownloadCommand(program, env, setExit);
  return program;
}

/** Runs the CLI on `argv` (as process.argv: node, script, args...) and returns the exit code. */
export async function main(argv: readonly string[], env: CliEnv = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  let code: number = EXIT.ok;
  const program = buildProgram(env, (c) => (code = c));
  try {
    await program.parseAsync([...argv], { from: 'node' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end through here too, successfully.
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (err instanceof ConfigError || err instanceof DataError || err instanceof ModelNotFoundError) {
      env.stderr.write(`muscle: ${err.message}\n`);
      return EXIT.usage;
    }
    const message = err instanceof Error ? err.message : String(err);
    env.stderr.write(`muscle: ${err instanceof NativeEngineError || err instanceof HubError ? message : `error: ${message}`}\n`);
    if (process.env['MUSCLE_DEBUG'] && err instanceof Error && err.stack) env.stderr.write(`${err.stack}\n`);
    return EXIT.failure;
  }
}
