import type { RepoType } from './cache.js';

/** What a hub download reports while it runs (the CLI draws it on stderr). */
export type HubProgressEvent =
  /** The revision is resolved and the files chosen; `bytes` is what is left to download. */
  | { type: 'plan'; repo: string; repoType: RepoType; revision: string; commit: string; files: number; cachedFiles: number; bytes: number }
  /** A file's download starts (or resumes: `from` > 0). */
  | { type: 'file'; path: string; size: number; from: number }
  | { type: 'bytes'; path: string; received: number; size: number }
  /** The file is verified and in the cache. */
  | { type: 'fileDone'; path: string; size: number }
  /** A dropped connection or a transient status; the request is tried again. `attempt`: the tries failed so far. */
  | { type: 'retry'; path: string | undefined; attempt: number; reason: string }
  /** Served from the cache without the hub: HF_HUB_OFFLINE=1, or the hub unreachable with the revision cached. */
  | { type: 'cacheOnly'; repo: string; reason: 'offline' | 'unreachable'; dir: string }
  | { type: 'done'; repo: string; dir: string };
