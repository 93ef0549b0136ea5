import type { Command } from 'commander';
import { HubError, snapshotDownload } from '@musclelora/trainer';
import { DownloadProgress } from '../download-progress.js';
import { withCtrlC } from '../interrupt.js';
import { EXIT, type CliEnv } from '../program.js';

// `muscle download <repo>`: a model or dataset repo into the Hugging Face cache; the snapshot directory on
// stdout (for scripts and configs), progress on stderr.

interface DownloadOptions {
  dataset?: boolean;
  revision: string;
  include?: string[];
}

const HELP = `
Without --include a model gets what the engine loads (config.json, tokenizer files, model.safetensors or
model.safetensors.index.json and its shards; a repo with only pytorch_model.bin is refused, with the command
that converts it) and a dataset its Parquet, CSV, TSV and JSONL files. Files already in the cache are not
fetched again; a broken download resumes where it stopped; every file is checked against the size and hash
the hub lists before it appears in the cache.

The cache is the one huggingface_hub (Python) uses, in the same layout, so either tool finds what the other
fetched: <cache>/{models,datasets}--<org>--<name>/{blobs,refs,snapshots/<commit>}.

Environment:
  HF_HOME         where Hugging Face files live (default ~/.cache/huggingface); the cache is $HF_HOME/hub
  HF_HUB_CACHE    the cache directory itself, instead of $HF_HOME/hub
  HF_ENDPOINT     the hub's address (default https://huggingface.co), e.g. a mirror
  HF_TOKEN        access token for private and gated repos (else the one \`huggingface-cli login\` stored)
  HF_HUB_OFFLINE  1: never use the network; print the cached snapshot, or fail naming what is not cached

Prints the snapshot directory on stdout. Exit codes: 0 done, 1 failed (network, access, not found,
integrity), 2 bad arguments, 130 stopped by Ctrl-C (a partial file resumes next time).

Examples:
  muscle download bert-base-uncased
  muscle download SetFit/sst2 --dataset --include "*.csv"
  HF_HUB_OFFLINE=1 muscle download FacebookAI/roberta-base`;

async function download(repo: string, opts: DownloadOptions, env: CliEnv): Promise<number> {
  const progress = new DownloadProgress(env.stderr);
  return withCtrlC(env, async (signal) => {
    try {
      const dir = await snapshotDownload({
        repo,
        repoType: opts.dataset ? 'dataset' : 'model',
        revision: opts.revision,
        ...(opts.include && { include: opts.include }),
        onProgress: (event) => progress.handle(event),
        signal,
      });
      progress.stop();
      env.stdout.write(`${dir}\n`);
      return EXIT.ok;
    } catch (err) {
      progress.stop();
      if (signal.aborted) {
        env.stderr.write('Stopped; what was downloaded stays in the cache and the next download resumes it\n');
        return EXIT.interrupted;
      }
      if (!(err instanceof HubError)) throw err;
      env.stderr.write(`muscle: ${err.message}\n`);
      return err.code === 'invalid' ? EXIT.usage : EXIT.failure;
    }
  });
}

export function addDownloadCommand(program: Command, env: CliEnv, setExit: (code: number) => void): void {
  program
    .command('download')
    .description('download a model or dataset repo from the Hugging Face hub into the standard cache and print its snapshot directory')
    .argument('<repo>', 'hub repo id, e.g. bert-base-uncased or FacebookAI/roberta-base')
    .option('--dataset', 'the repo is a dataset repo (default: a model repo)')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option('--include <glob...>', 'fetch only the files matching these globs (fnmatch: * also matches /; "dir/" is everything under dir)')
    .addHelpText('after', HELP)
    .action(async (repo: string, opts: DownloadOptions) => setExit(await download(repo, opts, env)));
}
