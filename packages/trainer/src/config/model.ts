import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { cachedHubSnapshot, hubCacheDir } from '../hub/cache.js';
import type { Family } from './schema.js';

// Where a model's files are, and which architecture family it is. A model is either a local directory or
// a Hugging Face hub id; hub ids are looked up in the standard hub cache (HF_HUB_CACHE, HF_HOME), which
// `ensureModelDir` (src/hub) fills when a run needs a model that is not there yet.

// The hub cache's paths live with the hub client; re-exported here, where the config layer has always offered them.
export { cachedHubSnapshot, hubCacheDir };

/** True when the string is written as a path rather than a hub id (hub ids never start with . / ~). */
export function looksLikePath(model: string): boolean {
  return isAbsolute(model) || /^(\.{1,2}[\\/]|~[\\/]|\.{1,2}$)/.test(model);
}

function expandHome(p: string): string {
  return p.startsWith('~/') || p.startsWith('~\\') ? join(homedir(), p.slice(2)) : p;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The path a model string names when read as a local path, relative to `baseDir`. */
export function modelPath(model: string, baseDir: string): string {
  return resolve(baseDir, expandHome(model));
}

/** The existing local directory a model string names, if any. */
export function localModelDir(model: string, baseDir: string): string | undefined {
  const dir = modelPath(model, baseDir);
  return isDir(dir) ? dir : undefined;
}

/** Where the model's files are on this machine: the local directory, or the cached hub snapshot. */
export function modelFilesDir(model: string, baseDir: string): string | undefined {
  return localModelDir(model, baseDir) ?? cachedHubSnapshot(model);
}

const MODEL_TYPES: Record<string, Family> = { bert: 'bert', roberta: 'roberta', llama: 'llama', gpt2: 'gpt2' };

export type FamilyDetection = { family: Family } | { error: string };

/**
 * The family from config.json's `model_type` where the files are here, else from the model's name (the
 * paper's models all carry it: bert-base-uncased, roberta-large, Llama-2-7b, gpt2-xl).
 */
export function detectFamily(model: string, filesDir: string | undefined): FamilyDetection {
  const configPath = filesDir && join(filesDir, 'config.json');
  if (configPath && existsSync(configPath)) {
    let modelType: unknown;
    try {
      modelType = (JSON.parse(readFileSync(configPath, 'utf8')) as { model_type?: unknown }).model_type;
    } catch (err) {
      return { error: `cannot read ${configPath}: ${(err as Error).message}` };
    }
    const family = typeof modelType === 'string' ? MODEL_TYPES[modelType] : undefined;
    if (family) return { family };
    return { error: `model_type ${JSON.stringify(modelType)} in ${configPath} is not supported; set family: ${Object.keys(MODEL_TYPES).join(' | ')}` };
  }
  const name = model.toLowerCase();
  for (const family of ['roberta', 'llama', 'gpt2', 'bert'] as const) if (name.includes(family)) return { family };
  const families = Object.keys(MODEL_TYPES).join(' | ');
  // A hub id not downloaded yet: its config.json would tell, once `muscle download` has fetched it.
  if (!looksLikePath(model) && filesDir === undefined) return { error: `cannot tell the family of ${JSON.stringify(model)} (not in the hub cache yet, no family in its name); set family: ${families}, or run muscle download ${model} first` };
  return { error: `cannot tell the family of ${JSON.stringify(model)} (no config.json here, no family in its name); set family: ${families}` };
}

/** The model's files are not on this machine. */
export class ModelNotFoundError extends Error {
  override readonly name = 'ModelNotFoundError';
}

/** The directory the engine loads the model from; fails with a one-line message when it is not here. */
export function requireModelDir(model: string): string {
  const dir = modelFilesDir(model, process.cwd());
  if (dir) return dir;
  if (looksLikePath(model)) throw new ModelNotFoundError(`model directory ${model} does not exist`);
  throw new ModelNotFoundError(`model ${JSON.stringify(model)} is neither a local directory nor in the hub cache (${hubCacheDir()}); download it there or give a local path`);
}
