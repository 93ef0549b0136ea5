import { EventEmitter } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { configToYaml, loadConfigFile, type OpenSession } from '@musclelora/trainer';
import { main, EXIT } from '../src/program.js';
import { scriptedEngine, scriptedRows } from '../../trainer/test/fake-session.js';
import { modelDir, repoRoot, tempDir, writeDataset, writeFiles } from '../../trainer/test/helpers.js';

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function muscle(args: string[], extra: { openSession?: OpenSession; signals?: EventEmitter } = {}): Promise<Ran> {
  let stdout = '';
  let stderr = '';
  const code = await main(['node', 'muscle', ...args], {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    ...(extra.openSession && { openSession: extra.openSession }),
    signals: (extra.signals ?? new EventEmitter()) as never,
  });
  return { code, stdout, stderr };
}

const quickstart = join(repoRoot, 'examples', 'quickstart.yaml');

beforeAll(() => {
  process.env['HF_HUB_CACHE'] = tempDir();
});

/** A config over the scripted dataset (10 train rows in batches of 4: 3 steps an epoch). */
function scriptedConfig(extra = ''): string {
  const dataset = writeDataset({
    train: scriptedRows('mixed', 10),
    devClean: scriptedRows('mixed', 100),
    devPoison: scriptedRows('trig', 100),
    testClean: scriptedRows('mixed', 100),
    testPoison: scriptedRows('trig', 100),
  });
  const dir = writeFiles(tempDir(), {
    'run.yaml': `name: cli\nmodel: ${modelDir('bert')}\ndataset: ${dataset}\nattacks: [badnets]\nmethods: [vanilla, lora]\nepochs: 2\nbatchSize: 4\ndevice: cpu\n${extra}`,
  });
  return join(dir, 'run.yaml');
}

const script = { devAcc: [0.6, 0.9], devAsr: [0.5, 0.25], stepsPerEpoch: 3 };

describe('help', () => {
  it('muscle --help lists the commands', async () => {
    const { code, stdout } = await muscle(['--help']);
    expect(code).toBe(EXIT.ok);
    expect(stdout).toContain('Usage: muscle [options] [command]');
    expect(stdout).toContain('run [options] <config.yaml>');
  });

  it('muscle run --help explains every option and every config key', async () => {
    const { code, stdout } = await muscle(['run', '--help']);
    expect(code).toBe(EXIT.ok);
    for (const option of ['--print-config', '--out <dir>', '--device <device>', '--precision <precision>', '--seed <n>', '-h, --help']) expect(stdout).toContain(option);
    expect(stdout).toContain('(default: "runs")');
    // commander wraps option descriptions at the terminal width: compare with the wrapping undone
    const flat = stdout.replace(/\s+/g, ' ');
    expect(flat).toContain("--device <device> where the engine runs, overriding the config's device: cpu, cuda, cuda:N (GPU N, from 0), auto");
    expect(flat).toContain('(choices: "auto", "f32", "bf16")');
    expect(stdout).toMatch(/ga\.maxRawGradRatio\s+gated rule: rho = maxRawGradRatio/);
    expect(stdout).toContain('Exit codes: 0 done, 1 failed, 2 bad config, data or arguments, 130 stopped by Ctrl-C.');
  });

  it('--version', async () => {
    expect(await muscle(['--version'])).toEqual({ code: EXIT.ok, stdout: '0.1.0\n', stderr: '' });
  });
});

describe('--print-config', () => {
  it('prints the resolved config with the command-line overrides, and trains nothing', async () => {
    const { code, stdout, stderr } = await muscle(['run', quickstart, '--print-config', '--seed', '7', '--device', 'cpu', '--precision', 'f32']);
    expect(code).toBe(EXIT.ok);
    expect(stderr).toBe('');
    expect(stdout).toBe(configToYaml(loadConfigFile(quickstart, { seed: 7, device: 'cpu', precision: 'f32' })));
    expect(stdout).toContain('seed: 7\n');
    expect(stdout).toContain('precision: f32\n');
  });
});

describe('bad input: one line, exit code 2, no stack trace', () => {
  it('a bad config', async () => {
    const file = join(writeFiles(tempDir(), { 'bad.yaml': 'name: x\nmodel: bert-base-uncased\ndataset: d\nattacks: [badnets]\nepochs: 0\n' }), 'bad.yaml');
    expect(await muscle(['run', file])).toEqual({ code: EXIT.usage, stdout: '', stderr: `muscle: ${file}: epochs: got 0, expected an integer >= 1\n` });
  });

  it('a missing config file', async () => {
    expect(await muscle(['run', 'no-such.yaml'])).toEqual({ code: EXIT.usage, stdout: '', stderr: 'muscle: no-such.yaml: cannot read the config file (ENOENT)\n' });
  });

  it('a bad --device or --seed, an unknown option, a missing argument', async () => {
    const device = await muscle(['run', quickstart, '--device', 'gpu']);
    expect(device.code).toBe(EXIT.usage);
    expect(device.stderr).toContain("error: option '--device <device>' argument 'gpu' is invalid. expected one of cpu, cuda, cuda:N (GPU N, from 0), auto");
    const gpu = await muscle(['run', quickstart, '--print-config', '--device', 'cuda:1']);
    expect(gpu.code).toBe(EXIT.ok);
    expect(gpu.stdout).toContain('device: cuda:1\n');
    const precision = await muscle(['run', quickstart, '--precision', 'fp16']);
    expect(precision.code).toBe(EXIT.usage);
    expect(precision.stderr).toContain("error: option '--precision <precision>' argument 'fp16' is invalid. Allowed choices are auto, f32, bf16.");
    const seed = await muscle(['run', quickstart, '--seed', '-1']);
    expect(seed.code).toBe(EXIT.usage);
    expect((await muscle(['run', quickstart, '--seed', '1.5'])).stderr).toContain("argument '1.5' is invalid. expected an integer in [0, 4294967295]");
    expect((await muscle(['run', quickstart, '--epochs', '3'])).code).toBe(EXIT.usage);
    expect((await muscle(['run'])).stderr).toContain("error: missing required argument 'config.yaml'");
  });

  it('a missing data file', async () => {
    const config = scriptedConfig('poisonRate: 0.2\n');
    const { code, stderr } = await muscle(['run', config, '--out', tempDir()], { openSession: scriptedEngine(script) });
    expect(code).toBe(EXIT.usage);
    expect(stderr).toMatch(/^muscle: \S+\/badnets\/train-poison-0\.2\.csv: missing \(dataset layout: .*\)\n$/);
  });
});

describe('muscle run', () => {
  it('trains, writes the run directory and prints the table', async () => {
    const out = tempDir();
    const { code, stdout, stderr } = await muscle(['run', scriptedConfig(), '--out', out], { openSession: scriptedEngine({ ...script, device: 'cpu (2 threads)' }) });
    expect(code).toBe(EXIT.ok);
    const dir = join(out, 'cli');
    for (const file of ['config.resolved.yaml', 'metrics.jsonl', 'results.json', 'results.md']) expect(existsSync(join(dir, file))).toBe(true);
    expect(stdout).toBe(`${readFileSync(join(dir, 'results.md'), 'utf8')}\nResults in ${dir}/\n`);
    expect(stdout).toContain('| vanilla | defender | cpu (2 threads) | 90.00 | 25.00 |');
    // Not a terminal: plain progress lines. The scripted splits repeat texts, which the duplicate check reports.
    expect(stderr.split('\n')).toEqual([
      expect.stringMatching(/^warning: \S+ \(badnets\): 10 of 100 dev rows and 10 of 100 test rows repeat a training text; 100 of 100 test rows repeat a dev text \(same text after lower-casing and collapsing spaces\); they inflate clean accuracy$/),
      'badnets/vanilla on cpu (2 threads): 2 epochs of 3 steps, 10 trainable parameters',
      'badnets/vanilla epoch 1/2: dev acc 60.00%, dev ASR 50.00% (best so far)',
      'badnets/vanilla epoch 2/2: dev acc 90.00%, dev ASR 25.00% (best so far)',
      expect.stringMatching(/^badnets\/vanilla: CACC 90\.00%, ASR 25\.00% \(epoch 2, defender selection, \d+ s\)$/),
      'badnets/lora on cpu (2 threads): 2 epochs of 3 steps, 10 trainable parameters',
      'badnets/lora epoch 1/2: dev acc 60.00%, dev ASR 50.00% (best so far)',
      'badnets/lora epoch 2/2: dev acc 90.00%, dev ASR 25.00% (best so far)',
      expect.stringMatching(/^badnets\/lora: CACC 90\.00%, ASR 25\.00% \(epoch 2, defender selection, \d+ s\)$/),
      '',
    ]);
  });

  it('Ctrl-C stops after the current step and says where the partial results are', async () => {
    const out = tempDir();
    const signals = new EventEmitter();
    const engine = scriptedEngine(script);
    const interrupting: OpenSession = async (opts) => {
      const session = await engine(opts);
      const trainStep = session.trainStep.bind(session);
      let steps = 0;
      session.trainStep = async (...args) => {
        if (opts.train.mode === 'peft' && ++steps === 2) signals.emit('SIGINT');
        return trainStep(...args);
      };
      return session;
    };
    const { code, stderr } = await muscle(['run', scriptedConfig(), '--out', out], { openSession: interrupting, signals });
    expect(code).toBe(EXIT.interrupted);
    const dir = join(out, 'cli');
    expect(stderr).toContain('\nStopping after the current step (Ctrl-C again to quit at once)...\n');
    expect(stderr).toContain('badnets/lora: stopped after 2 steps\n');
    expect(stderr.endsWith(`Stopped. Partial results in ${join(dir, 'results.md')} (and results.json, metrics.jsonl)\n`)).toBe(true);
    expect(readFileSync(join(dir, 'results.md'), 'utf8')).toContain('| lora | defender | – | _stopped_ | _stopped_ |');
    expect(signals.listenerCount('SIGINT')).toBe(0);
  });

  it.skipIf(existsSync(join(repoRoot, 'packages', 'core-native', 'index.js')))('without the native build: a one-line error saying to run pnpm build', async () => {
    const { code, stdout, stderr } = await muscle(['run', scriptedConfig(), '--out', tempDir()]);
    expect(code).toBe(EXIT.failure);
    expect(stdout).toBe('');
    expect(stderr).toBe('muscle: the native engine @musclelora/core-native cannot be loaded (it is not built); run `pnpm build` (needs a Rust toolchain)\n');
  });
});
