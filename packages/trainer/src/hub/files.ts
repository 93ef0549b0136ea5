import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoLabel, type RepoRef } from './cache.js';
import { HubError } from './errors.js';

// Which of a repo's files to fetch. A model: what the engine loads (config, tokenizer, safetensors
// weights); a dataset: its data files. Include globs, when given, choose instead.

/** A file as the hub's tree lists it. */
export interface RepoFile {
  path: string;
  size: number;
  /** The git blob sha1 (of the LFS pointer, for LFS files). */
  oid: string;
  /** LFS files: the sha256 and size of the real content. */
  lfs?: { oid: string; size: number };
}

/** The name the cache gives a file's blob: the LFS sha256, else the git blob sha1 (as huggingface_hub's etag). */
export function etagOf(file: RepoFile): string {
  return file.lfs?.oid ?? file.oid;
}

export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'vocab.txt', 'merges.txt', 'vocab.json', 'special_tokens_map.json'];
const CONFIG = 'config.json';
const SINGLE = 'model.safetensors';
const INDEX = 'model.safetensors.index.json';
const SHARD = /^model-\d+-of-\d+\.safetensors$/;
/** The pickle checkpoints the engine refuses (it never unpickles: that can run arbitrary code). */
const PICKLE = /^(pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json|model\.bin|model\.pt)$/;
const DATA_FILE = /\.(parquet|csv|tsv|jsonl)$/i;

/**
 * A glob as huggingface_hub's allow_patterns reads it (fnmatch): `*` matches any run of characters, `/`
 * included, `?` one character, `[abc]`/`[!abc]` a set; a pattern ending in `/` means everything under it.
 */
export function globToRegExp(glob: string): RegExp {
  const pattern = glob.endsWith('/') ? `${glob}*` : glob;
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) re += '\\[';
      else {
        const body = pattern.slice(i + 1, end);
        re += body.startsWith('!') ? `[^${body.slice(1).replace(/\\/g, '\\\\')}]` : `[${body.replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\\]]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's');
}

function matchesAny(path: string, globs: RegExp[]): boolean {
  return globs.some((g) => g.test(path));
}

function pickleRefusal(repo: RepoRef, revision: string, pickle: string): HubError {
  return new HubError(
    'unusable',
    `${repoLabel(repo)} (revision ${revision}) has only PyTorch pickle weights (${pickle}), which the engine refuses (unpickling can run arbitrary code): convert them once with python -c "import torch; from huggingface_hub import hf_hub_download; from safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in torch.load(hf_hub_download('${repo.id}', '${pickle}'), map_location='cpu').items()}, 'model.safetensors')" and put model.safetensors with the repo's config.json and tokenizer.json in a folder to give as model:`,
  );
}

/** The files of a model repo the engine needs; fails when the repo has nothing it can load. */
export function modelFiles(repo: RepoRef, revision: string, files: RepoFile[]): RepoFile[] {
  const top = new Map(files.filter((f) => !f.path.includes('/')).map((f) => [f.path, f]));
  if (!top.has(CONFIG)) throw new HubError('unusable', `${repoLabel(repo)} (revision ${revision}) has no config.json: not a transformers model repo`);
  // The engine loads model.safetensors when present, else the index's shards; fetch the same choice.
  const weights = top.has(SINGLE) ? [SINGLE] : top.has(INDEX) ? [INDEX, ...[...top.keys()].filter((p) => SHARD.test(p))] : [];
  if (weights.length === 0) {
    const pickle = [...top.keys()].find((p) => PICKLE.test(p));
    if (pickle) throw pickleRefusal(repo, revision, pickle);
    throw new HubError('unusable', `${repoLabel(repo)} (revision ${revision}) has no ${SINGLE} or ${INDEX}: no weights the engine can load`);
  }
  return [CONFIG, ...TOKENIZER_FILES, ...weights].flatMap((p) => top.get(p) ?? []);
}

/** The data files of a dataset repo (Parquet, CSV, TSV, JSONL, at any depth). */
export function datasetFiles(repo: RepoRef, revision: string, files: RepoFile[]): RepoFile[] {
  const data = files.filter((f) => DATA_FILE.test(f.path));
  if (data.length === 0) throw new HubError('unusable', `${repoLabel(repo)} (revision ${revision}) has no Parquet, CSV, TSV or JSONL files`);
  return data;
}

/** What to fetch: the files matching the include globs, else the model's or the dataset's defaults. */
export function selectFiles(repo: RepoRef, revision: string, files: RepoFile[], include: string[] | undefined): RepoFile[] {
  if (include && include.length > 0) {
    const globs = include.map(globToRegExp);
    const chosen = files.filter((f) => matchesAny(f.path, globs));
    if (chosen.length === 0) throw new HubError('unusable', `no file of ${repoLabel(repo)} (revision ${revision}) matches the include globs ${include.join(', ')}`);
    return chosen;
  }
  return repo.type === 'model' ? modelFiles(repo, revision, files) : datasetFiles(repo, revision, files);
}

/** Shards an index names that are not among the files (checked after the index is fetched). */
export function missingShards(indexFile: string, have: Set<string>): string[] {
  const index = JSON.parse(readFileSync(indexFile, 'utf8')) as { weight_map?: Record<string, unknown> };
  const shards = new Set(Object.values(index.weight_map ?? {}).filter((v): v is string => typeof v === 'string'));
  return [...shards].filter((s) => !have.has(s));
}

/** Every file under a snapshot whose blob is there (links to missing blobs do not count). */
function snapshotFiles(dir: string): string[] {
  return (readdirSync(dir, { recursive: true }) as string[]).map((p) => p.split('\\').join('/')).filter((p) => existsSync(join(dir, p)) && !p.endsWith('.tmp'));
}

/**
 * What a cached snapshot lacks for the same selection `selectFiles` makes online (undefined: nothing), so
 * offline use and runs can trust a cached snapshot without asking the hub.
 */
export function missingFromSnapshot(repo: RepoRef, revision: string, dir: string, include: string[] | undefined): string | undefined {
  const have = new Set(snapshotFiles(dir));
  if (include && include.length > 0) {
    const globs = include.map(globToRegExp);
    return [...have].some((p) => matchesAny(p, globs)) ? undefined : `a file matching ${include.join(', ')}`;
  }
  if (repo.type === 'dataset') return [...have].some((p) => DATA_FILE.test(p)) ? undefined : 'a Parquet, CSV, TSV or JSONL file';
  // config and tokenizer.json are what the engine cannot start without, beside the weights.
  for (const needed of [CONFIG, 'tokenizer.json']) if (!have.has(needed)) return needed;
  if (have.has(SINGLE)) return undefined;
  if (have.has(INDEX)) {
    const missing = missingShards(join(dir, INDEX), have);
    return missing.length > 0 ? missing.join(', ') : undefined;
  }
  const pickle = [...have].find((p) => !p.includes('/') && PICKLE.test(p));
  if (pickle) throw pickleRefusal(repo, revision, pickle);
  return SINGLE;
}
