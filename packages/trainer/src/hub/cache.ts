import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';

// The standard Hugging Face cache, the layout huggingface_hub (Python) writes, so both tools share it:
//   <cache>/{models,datasets}--<org>--<name>/
//     blobs/<etag>                     file contents, named by the hub's etag (LFS sha256 or git blob sha1)
//     refs/<revision>                  the commit a branch or tag pointed to when last fetched
//     snapshots/<commit>/<path>        symlink to ../../blobs/<etag>

export type RepoType = 'model' | 'dataset';

export interface RepoRef {
  id: string;
  type: RepoType;
}

const COMMIT = /^[0-9a-f]{40}$/;

export function isCommitHash(revision: string): boolean {
  return COMMIT.test(revision);
}

/** HF_HOME, else ~/.cache/huggingface (XDG_CACHE_HOME moves ~/.cache, as in huggingface_hub). */
export function hfHome(env: NodeJS.ProcessEnv = process.env): string {
  return env['HF_HOME'] || join(env['XDG_CACHE_HOME'] || join(homedir(), '.cache'), 'huggingface');
}

/** The hub cache root: HF_HUB_CACHE, else $HF_HOME/hub. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env['HF_HUB_CACHE'] || join(hfHome(env), 'hub');
}

/** `model org/name` or `dataset org/name`, for messages. */
export function repoLabel(repo: RepoRef): string {
  return `${repo.type} ${repo.id}`;
}

/** The repo's folder in the cache: models--org--name. */
export function repoCacheDir(cacheDir: string, repo: RepoRef): string {
  return join(cacheDir, `${repo.type}s--${repo.id.split('/').join('--')}`);
}

export function blobPath(repoDir: string, etag: string): string {
  return join(repoDir, 'blobs', etag);
}

export function snapshotDir(repoDir: string, commit: string): string {
  return join(repoDir, 'snapshots', commit);
}

/** The commit a revision names in the cache: itself when it is a commit hash, else what refs/<revision> holds. */
export function cachedCommit(repoDir: string, revision: string): string | undefined {
  if (isCommitHash(revision)) return revision;
  const ref = join(repoDir, 'refs', revision);
  if (!existsSync(ref)) return undefined;
  return readFileSync(ref, 'utf8').trim() || undefined;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The snapshot directory of a cached revision, if its snapshot folder exists. */
export function cachedSnapshotDir(repoDir: string, revision: string): string | undefined {
  const commit = cachedCommit(repoDir, revision);
  const dir = commit && snapshotDir(repoDir, commit);
  return dir && isDir(dir) ? dir : undefined;
}

/**
 * The snapshot directory of a hub id in the hub cache: the revision's (`main` by default), or the only
 * snapshot when no ref names one (a cache filled by a download of a commit hash); undefined when not cached.
 */
export function cachedHubSnapshot(id: string, env: NodeJS.ProcessEnv = process.env, options: { type?: RepoType; revision?: string } = {}): string | undefined {
  const repoDir = repoCacheDir(hubCacheDir(env), { id, type: options.type ?? 'model' });
  const revision = options.revision ?? 'main';
  const dir = cachedSnapshotDir(repoDir, revision);
  if (dir || options.revision !== undefined || existsSync(join(repoDir, 'refs', revision))) return dir;
  const snapshots = isDir(join(repoDir, 'snapshots')) ? readdirSync(join(repoDir, 'snapshots')) : [];
  return snapshots.length === 1 ? join(repoDir, 'snapshots', snapshots[0]!) : undefined;
}

/** A name beside `path` for writing before the rename that makes a file appear whole. */
function tempBeside(path: string): string {
  return `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
}

/** Records that `revision` points at `commit` (refs/<revision>), written whole or not at all. */
export async function writeRef(repoDir: string, revision: string, commit: string): Promise<void> {
  if (isCommitHash(revision)) return; // a commit names itself; huggingface_hub writes no ref for it either
  const ref = join(repoDir, 'refs', revision);
  await mkdir(dirname(ref), { recursive: true });
  const temp = tempBeside(ref);
  try {
    await writeFile(temp, commit);
    await rename(temp, ref);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

/** Points snapshots/<commit>/<path> at blobs/<etag> with a relative symlink, replacing any old link atomically. */
export async function linkIntoSnapshot(repoDir: string, commit: string, path: string, etag: string): Promise<string> {
  const pointer = join(snapshotDir(repoDir, commit), path);
  await mkdir(dirname(pointer), { recursive: true });
  const target = relative(dirname(pointer), blobPath(repoDir, etag));
  const temp = tempBeside(pointer);
  try {
    await symlink(target, temp);
    await rename(temp, pointer);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  return pointer;
}

/** The size of a file, or undefined when it does not exist (links followed). */
export async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch {
    return undefined;
  }
}
