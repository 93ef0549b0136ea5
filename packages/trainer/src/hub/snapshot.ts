import { datasetInfo, listFiles, modelInfo } from '@huggingface/hub';
import { join } from 'node:path';
import { blobPath, cachedSnapshotDir, linkIntoSnapshot, repoCacheDir, repoLabel, sizeOf, snapshotDir, writeRef, type RepoRef, type RepoType } from './cache.js';
import { downloadBlob } from './blob.js';
import { HubError } from './errors.js';
import type { HubProgressEvent } from './events.js';
import { etagOf, missingFromSnapshot, missingShards, selectFiles, type RepoFile } from './files.js';
import { apiFetch, DEFAULT_RETRY, type RetryPolicy, type Target } from './request.js';
import { hubSettings, type HubSettings } from './settings.js';

export interface SnapshotDownloadOptions {
  /** `org/name` (or a legacy id without org, such as `bert-base-uncased`). */
  repo: string;
  repoType?: RepoType;
  /** Branch, tag or commit; `main` by default. */
  revision?: string;
  /** fnmatch globs (as huggingface_hub's allow_patterns); without them a model gets what the engine loads, a dataset its data files. */
  include?: string[];
  /** HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE are read from here (process.env by default). */
  env?: NodeJS.ProcessEnv;
  onProgress?: (event: HubProgressEvent) => void;
  /** Aborting stops between chunks; a partial file stays as .incomplete and resumes next time. */
  signal?: AbortSignal;
  /** Tries per request and the first backoff (tests shorten it). */
  retry?: Partial<RetryPolicy>;
}

// huggingface_hub's rule: word characters, '-' and '.', an optional namespace, no '--' or '..'.
const REPO_ID = /^(?:[\w.-]+\/)?[\w.-]{1,96}$/;

function checkInputs(repo: RepoRef, revision: string): void {
  if (!REPO_ID.test(repo.id) || repo.id.includes('--') || repo.id.includes('..') || /^[.-]|[.-]$/.test(repo.id.split('/').pop()!)) {
    throw new HubError('invalid', `${JSON.stringify(repo.id)} is not a hub repo id (expected org/name or name: letters, digits, '-', '_', '.')`);
  }
  if (revision === '' || revision.split('/').some((part) => part === '' || part === '.' || part === '..')) {
    throw new HubError('invalid', `${JSON.stringify(revision)} is not a revision of ${repoLabel(repo)} (a branch, tag or commit hash)`);
  }
}

/** A path from the hub's tree, before it is joined onto the cache: it must stay inside the snapshot. */
function checkRepoPath(repo: RepoRef, path: string): void {
  if (path.startsWith('/') || path.includes('\\') || path.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new HubError('unusable', `${repoLabel(repo)} lists a file path ${JSON.stringify(path)} that would leave the cache; refusing it`);
  }
}

/** The cached snapshot, when it holds what was asked; else an error naming the repo and the missing file. */
function fromCache(repo: RepoRef, revision: string, include: string[] | undefined, repoDir: string, settings: HubSettings): string {
  const dir = cachedSnapshotDir(repoDir, revision);
  const missing = dir ? missingFromSnapshot(repo, revision, dir, include) : undefined;
  if (dir && !missing) return dir;
  const what = dir ? `${missing} of ${repoLabel(repo)} (revision ${revision}) is not in the hub cache ${dir}` : `${repoLabel(repo)} (revision ${revision}) is not in the hub cache ${settings.cacheDir}`;
  return failOffline(what);
}

function failOffline(what: string): never {
  throw new HubError('offline', `${what}, and HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE to fetch it, or fetch it on a machine with hub access (muscle download) and copy the cache`);
}

async function resolveCommit(repo: RepoRef, revision: string, common: Parameters<typeof modelInfo>[0]): Promise<string> {
  const params = { ...common, name: repo.id, revision, additionalFields: ['sha' as const] };
  const info = repo.type === 'dataset' ? await datasetInfo(params) : await modelInfo(params);
  if (typeof info.sha !== 'string' || !/^[0-9a-f]{40}$/.test(info.sha)) {
    throw new HubError('http', `the hub at ${common.hubUrl} gave no commit for ${repoLabel(repo)} (revision ${revision})`);
  }
  return info.sha;
}

async function listRepoFiles(repo: RepoRef, commit: string, common: Parameters<typeof modelInfo>[0]): Promise<RepoFile[]> {
  const files: RepoFile[] = [];
  for await (const entry of listFiles({ ...common, repo: { type: repo.type, name: repo.id }, recursive: true, revision: commit })) {
    if (entry.type !== 'file') continue;
    if (typeof entry.oid !== 'string') throw new HubError('http', `the hub's tree of ${repoLabel(repo)} gives no oid for ${entry.path}`);
    files.push({ path: entry.path, size: entry.size, oid: entry.oid, ...(entry.lfs && { lfs: { oid: entry.lfs.oid, size: entry.lfs.size } }) });
  }
  return files;
}

/** The URL that serves a file's bytes at a commit (the hub redirects LFS files to its CDN). */
function resolveUrl(endpoint: string, repo: RepoRef, commit: string, path: string): string {
  const prefix = repo.type === 'dataset' ? 'datasets/' : '';
  return `${endpoint}/${prefix}${repo.id}/resolve/${commit}/${path.split('/').map(encodeURIComponent).join('/')}`;
}

/**
 * Downloads a hub repo's files into the standard Hugging Face cache and returns the snapshot directory
 * (`.../snapshots/<commit>`). Files already there (same etag) are not fetched again; broken downloads
 * resume; every file is checked against the size and hash the hub lists before it appears under its name.
 * With HF_HUB_OFFLINE=1 only the cache is read; when the hub cannot be reached, a cached snapshot of the
 * revision that holds what was asked is used instead.
 */
export async function snapshotDownload(options: SnapshotDownloadOptions): Promise<string> {
  const repo: RepoRef = { id: options.repo, type: options.repoType ?? 'model' };
  const revision = options.revision ?? 'main';
  checkInputs(repo, revision);
  const settings = hubSettings(options.env ?? process.env);
  const repoDir = repoCacheDir(settings.cacheDir, repo);
  const emit = options.onProgress ?? (() => undefined);
  const signal = options.signal;

  if (settings.offline) {
    const dir = fromCache(repo, revision, options.include, repoDir, settings);
    emit({ type: 'cacheOnly', repo: repo.id, reason: 'offline', dir });
    emit({ type: 'done', repo: repo.id, dir });
    return dir;
  }
  if (settings.token && !settings.token.startsWith('hf_')) {
    throw new HubError('invalid', 'HF_TOKEN does not hold a Hugging Face access token (they start with hf_); see https://huggingface.co/settings/tokens');
  }

  const policy: RetryPolicy = { ...DEFAULT_RETRY, ...options.retry };
  const target: Target = { repo, revision, endpoint: settings.endpoint, tokenSet: settings.token !== undefined };
  const onRetry = (path: string | undefined) => (reason: string, attempt: number) => emit({ type: 'retry', path, attempt, reason });
  const common = {
    name: repo.id,
    hubUrl: settings.endpoint,
    fetch: apiFetch(target, policy, signal, onRetry(undefined)),
    ...(settings.token && { accessToken: settings.token }),
  };

  let commit: string;
  let files: RepoFile[];
  try {
    commit = await resolveCommit(repo, revision, common);
    files = await listRepoFiles(repo, commit, common);
  } catch (err) {
    // As huggingface_hub: no network, but the revision is cached whole, so work from the cache.
    if (err instanceof HubError && err.code === 'network') {
      const dir = cachedSnapshotDir(repoDir, revision);
      if (dir && !missingFromSnapshot(repo, revision, dir, options.include)) {
        emit({ type: 'cacheOnly', repo: repo.id, reason: 'unreachable', dir });
        emit({ type: 'done', repo: repo.id, dir });
        return dir;
      }
    }
    throw err;
  }

  const chosen = selectFiles(repo, revision, files, options.include);
  for (const file of chosen) checkRepoPath(repo, file.path);
  const sizeOfContent = (f: RepoFile) => f.lfs?.size ?? f.size;
  const cached = new Set<string>();
  for (const file of chosen) if ((await sizeOf(blobPath(repoDir, etagOf(file)))) === sizeOfContent(file)) cached.add(file.path);
  const bytes = chosen.filter((f) => !cached.has(f.path)).reduce((sum, f) => sum + sizeOfContent(f), 0);
  emit({ type: 'plan', repo: repo.id, repoType: repo.type, revision, commit, files: chosen.length, cachedFiles: cached.size, bytes });

  await writeRef(repoDir, revision, commit);
  const headers: Record<string, string> = settings.token ? { Authorization: `Bearer ${settings.token}` } : {};
  for (const file of chosen) {
    const etag = etagOf(file);
    const size = sizeOfContent(file);
    if (!cached.has(file.path)) {
      await downloadBlob({
        url: resolveUrl(settings.endpoint, repo, commit, file.path),
        headers,
        blob: blobPath(repoDir, etag),
        size,
        hash: file.lfs ? { algorithm: 'sha256', hex: file.lfs.oid } : { algorithm: 'git-sha1', hex: file.oid },
        target: { ...target, revision: commit, path: file.path },
        policy,
        ...(signal && { signal }),
        onStart: (from) => emit({ type: 'file', path: file.path, size, from }),
        onBytes: (received) => emit({ type: 'bytes', path: file.path, received, size }),
        onRetry: onRetry(file.path),
      });
      emit({ type: 'fileDone', path: file.path, size });
    }
    await linkIntoSnapshot(repoDir, commit, file.path, etag);
  }

  const dir = snapshotDir(repoDir, commit);
  const index = chosen.find((f) => f.path === 'model.safetensors.index.json');
  if (repo.type === 'model' && index && !options.include?.length) {
    const missing = missingShards(join(dir, index.path), new Set(chosen.map((f) => f.path)));
    if (missing.length > 0) throw new HubError('unusable', `${repoLabel(repo)} (revision ${revision}): model.safetensors.index.json names ${missing.join(', ')}, which the repo does not hold`);
  }
  emit({ type: 'done', repo: repo.id, dir });
  return dir;
}
