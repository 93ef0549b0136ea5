// Hugging Face hub downloads into the standard cache (shared with huggingface_hub in Python).
export { snapshotDownload, type SnapshotDownloadOptions } from './snapshot.js';
export { ensureModelDir, type EnsureModelOptions } from './model.js';
export { HubError, type HubErrorCode } from './errors.js';
export type { HubProgressEvent } from './events.js';
export { hubSettings, DEFAULT_ENDPOINT, type HubSettings } from './settings.js';
export { cachedHubSnapshot, hubCacheDir, hfHome, repoCacheDir, type RepoRef, type RepoType } from './cache.js';
export { globToRegExp, TOKENIZER_FILES } from './files.js';
export { DEFAULT_RETRY, type RetryPolicy } from './request.js';
