import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hfHome, hubCacheDir } from './cache.js';

// The hub settings a user gives through the environment, read the way huggingface_hub (Python) reads
// them, so one set of variables serves both tools.

export const DEFAULT_ENDPOINT = 'https://huggingface.co';

export interface HubSettings {
  /** Base URL of the hub (HF_ENDPOINT), without a trailing slash. */
  endpoint: string;
  /** Access token: HF_TOKEN, else the token file `huggingface-cli login` writes. */
  token: string | undefined;
  /** HF_HUB_OFFLINE: only the cache, never the network. */
  offline: boolean;
  /** The hub cache root (HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub). */
  cacheDir: string;
}

/** huggingface_hub's reading of a boolean variable. */
function truthy(value: string | undefined): boolean {
  return ['1', 'on', 'yes', 'true'].includes((value ?? '').trim().toLowerCase());
}

function storedToken(env: NodeJS.ProcessEnv): string | undefined {
  const file = env['HF_TOKEN_PATH'] || join(hfHome(env), 'token');
  if (!existsSync(file)) return undefined;
  return readFileSync(file, 'utf8').trim() || undefined;
}

export function hubSettings(env: NodeJS.ProcessEnv = process.env): HubSettings {
  return {
    endpoint: (env['HF_ENDPOINT'] || DEFAULT_ENDPOINT).replace(/\/+$/, ''),
    token: env['HF_TOKEN'] || env['HUGGING_FACE_HUB_TOKEN'] || storedToken(env),
    offline: truthy(env['HF_HUB_OFFLINE']),
    cacheDir: hubCacheDir(env),
  };
}
