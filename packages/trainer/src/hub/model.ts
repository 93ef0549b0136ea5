import { localModelDir, looksLikePath, ModelNotFoundError } from '../config/model.js';
import { cachedHubSnapshot, hubCacheDir } from './cache.js';
import type { HubProgressEvent } from './events.js';
import { missingFromSnapshot } from './files.js';
import { hubSettings } from './settings.js';
import { snapshotDownload } from './snapshot.js';

export interface EnsureModelOptions {
  env?: NodeJS.ProcessEnv;
  onProgress?: (event: HubProgressEvent) => void;
  signal?: AbortSignal;
}

/**
 * The directory the engine loads a run's model from: the local folder, the cached hub snapshot when it
 * holds what the engine needs (no network then, so cached runs start at once and work offline), else the
 * snapshot downloaded now.
 */
export async function ensureModelDir(model: string, options: EnsureModelOptions = {}): Promise<string> {
  const env = options.env ?? process.env;
  const local = localModelDir(model, process.cwd());
  if (local) return local;
  if (looksLikePath(model)) throw new ModelNotFoundError(`model directory ${model} does not exist`);
  const cached = cachedHubSnapshot(model, env);
  if (cached && !missingFromSnapshot({ id: model, type: 'model' }, 'main', cached, undefined)) return cached;
  if (hubSettings(env).offline) {
    throw new ModelNotFoundError(`model ${JSON.stringify(model)} is neither a local directory nor complete in the hub cache (${hubCacheDir(env)}), and HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE or give a local path`);
  }
  return snapshotDownload({ repo: model, env, ...(options.onProgress && { onProgress: options.onProgress }), ...(options.signal && { signal: options.signal }) });
}
